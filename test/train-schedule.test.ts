import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { lrAt, warmupIters } from '../src/train/schedule.js';

const GOLDEN = path.resolve(import.meta.dirname, '../../shared/golden/public');

interface GoldenSchedule {
  base_lr: number;
  total_iters: number;
  warmup_ratio: number;
  start_factor: number;
  eta_min: number;
  warmup_iters: number;
  lr: number[];
}

describe('lr schedule', () => {
  const golden = JSON.parse(readFileSync(path.join(GOLDEN, 'schedule.json'), 'utf8')) as { schedules: GoldenSchedule[] };

  it('matches every golden schedule at every iteration', () => {
    expect(golden.schedules.length).toBeGreaterThan(0);
    for (const s of golden.schedules) {
      const cfg = {
        baseLr: s.base_lr,
        totalIters: s.total_iters,
        warmupRatio: s.warmup_ratio,
        startFactor: s.start_factor,
        etaMin: s.eta_min,
      };
      expect(warmupIters(cfg)).toBe(s.warmup_iters);
      s.lr.forEach((want, i) => {
        const got = lrAt(i, cfg);
        expect(Math.abs(got - want)).toBeLessThanOrEqual(1e-12 + 1e-9 * Math.abs(want));
      });
    }
  });

  it('handles runs too short for a warm-up', () => {
    const cfg = { baseLr: 1, totalIters: 10, warmupRatio: 0.03, startFactor: 1e-5, etaMin: 0 };
    expect(warmupIters(cfg)).toBe(0);
    expect(lrAt(0, cfg)).toBe(1);
    expect(lrAt(5, cfg)).toBeCloseTo(0.5, 12);
  });
});
