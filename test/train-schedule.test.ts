import { describe, expect, it } from 'vitest';
import { lrAt, warmupIters } from '../src/train/schedule.js';

// The golden schedule.json cases run through the golden harness (test/golden.test.ts, `mgllava golden`).
describe('lr schedule', () => {
  it('handles runs too short for a warm-up', () => {
    const cfg = { baseLr: 1, totalIters: 10, warmupRatio: 0.03, startFactor: 1e-5, etaMin: 0 };
    expect(warmupIters(cfg)).toBe(0);
    expect(lrAt(0, cfg)).toBe(1);
    expect(lrAt(5, cfg)).toBeCloseTo(0.5, 12);
  });
});
