import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { listCheckpoints, resolveCheckpoint, stepDirName } from '../src/run/layout.js';
import { lossCurveSvg, niceTicks } from '../src/train/loss-curve.js';
import { MetricsFile, MetricsWindow, readMetrics } from '../src/run/metrics.js';
import { formatDuration, plainLine } from '../src/train/progress.js';

const root = mkdtempSync(path.join(tmpdir(), 'mgllava-rundir-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

function fakeRun(name: string, steps: number[], incomplete: string[] = []): string {
  const run = path.join(root, name);
  mkdirSync(run, { recursive: true });
  writeFileSync(path.join(run, 'config.yaml'), 'name: x\n');
  for (const s of steps) {
    mkdirSync(path.join(run, stepDirName(s)));
    writeFileSync(path.join(run, stepDirName(s), 'state.json'), '{}');
  }
  for (const n of incomplete) mkdirSync(path.join(run, n));
  return run;
}

describe('run directory', () => {
  it('lists complete checkpoints only, ascending', async () => {
    const run = fakeRun('a', [12, 3, 100], ['step-00000200', '.tmp-step-00000300-123', 'step-12']);
    expect((await listCheckpoints(run)).map((c) => c.step)).toEqual([3, 12, 100]);
    expect(await listCheckpoints(path.join(root, 'missing'))).toEqual([]);
  });

  it('resolves a run dir (newest or a given step) and a step dir, with clear errors', async () => {
    const run = fakeRun('b', [5, 10], ['step-00000020']);
    expect(await resolveCheckpoint(run)).toEqual({ runDir: run, stepDir: path.join(run, 'step-00000010'), step: 10 });
    expect((await resolveCheckpoint(run, 5)).stepDir).toBe(path.join(run, 'step-00000005'));
    expect(await resolveCheckpoint(path.join(run, 'step-00000005'))).toEqual({ runDir: run, stepDir: path.join(run, 'step-00000005'), step: 5 });
    await expect(resolveCheckpoint(run, 7)).rejects.toThrow(/no complete checkpoint for step 7 \(has: 5, 10\)/);
    await expect(resolveCheckpoint(path.join(run, 'step-00000020'))).rejects.toThrow(/incomplete/);
    await expect(resolveCheckpoint(path.join(run, 'step-00000005'), 6)).rejects.toThrow(/is step 5, not step 6/);
    await expect(resolveCheckpoint(path.join(root, 'nope'))).rejects.toThrow(/no such file or directory/);
    await expect(resolveCheckpoint(fakeRun('empty', []))).rejects.toThrow(/no complete checkpoint yet/);
    mkdirSync(path.join(root, 'plain'));
    await expect(resolveCheckpoint(path.join(root, 'plain'))).rejects.toThrow(/neither a run directory/);
    expect(() => stepDirName(-1)).toThrow(RangeError);
    expect(stepDirName(42)).toBe('step-00000042');
  });
});

describe('metrics, progress and the loss curve', () => {
  it('a window averages finite steps and reports skipped ones', () => {
    const w = new MetricsWindow();
    const base = { lr: 1e-3, positions: 100, computeMs: 50, waitMs: 4 };
    w.add({ step: 1, loss: 2, gradNorm: 1, applied: true, ...base });
    w.add({ step: 2, loss: NaN, gradNorm: NaN, applied: false, ...base });
    w.add({ step: 3, loss: 4, gradNorm: 3, applied: true, ...base });
    const line = w.flush(10, 1.5);
    expect(line).toEqual({ step: 3, loss: 3, lr: 1e-3, grad_norm: 2, tokens_per_s: 2000, data_wait_ms: 4, num_tensors: 10, elapsed_s: 1.5, steps: 3, skipped: 1 });
    expect(w.size).toBe(0);
  });

  it('the metrics file is cut back to the checkpoint line count on resume', () => {
    const file = path.join(root, 'metrics.jsonl');
    const m = new MetricsFile(file, 0);
    const w = new MetricsWindow();
    for (let s = 1; s <= 4; s++) {
      w.add({ step: s, loss: s, gradNorm: 1, lr: 1, applied: true, positions: 1, computeMs: 1, waitMs: 0 });
      m.append(w.flush(1, s));
    }
    writeFileSync(file, readFileSync(file, 'utf8') + '{"step": 5, "lo'); // a line torn by a kill
    const again = new MetricsFile(file, 2);
    expect(again.lines).toBe(2);
    expect(readMetrics(file).map((l) => l.step)).toEqual([1, 2]);
    expect(() => new MetricsFile(file, 3)).toThrow(/has 2 lines, the checkpoint expects at least 3/);
  });

  it('plain progress lines and durations', () => {
    const line = plainLine({ step: 3, total: 10, loss: 1.23456, lr: 2e-4, gradNorm: 0.5, tokensPerS: 1234.4, dataWaitMs: 3.2, numTensors: 188, etaS: 75 });
    expect(line).toBe('step 3/10  loss 1.2346 last  lr 2.00e-4  gnorm 0.500  tok/s 1234  data-wait 3 ms  tensors 188  eta 1m15s');
    // A logged line over a window of steps also shows the window mean that metrics.jsonl stores.
    expect(plainLine({ step: 30, total: 100, loss: 1.2, window: { loss: 1.30004, steps: 10 }, lr: 2e-4, gradNorm: 0.5, tokensPerS: 1, dataWaitMs: 0, numTensors: 1, etaS: 1 })).toMatch(
      /^step 30\/100 {2}loss 1\.2000 last \/ 1\.3000 mean of 10 {2}lr /,
    );
    expect(plainLine({ step: 1, total: 2, loss: null, lr: 1, gradNorm: null, tokensPerS: 0, dataWaitMs: 0, numTensors: 0, etaS: 3700 })).toMatch(/loss skipped .* eta 1h01m/);
    expect(formatDuration(NaN)).toBe('?');
  });

  it('loss curve: an SVG with ticks, gaps for skipped windows, and a message when empty', () => {
    expect(niceTicks(0, 1)).toEqual([0, 0.2, 0.4, 0.6, 0.8, 1]);
    expect(niceTicks(3.7, 4.2)).toEqual([3.7, 3.8, 3.9, 4, 4.1, 4.2]);
    const svg = lossCurveSvg(
      [
        { step: 1, loss: 4 },
        { step: 2, loss: 3.5 },
        { step: 3, loss: null },
        { step: 4, loss: 3 },
        { step: 5, loss: 2.5 },
      ],
      'run <a> & b',
    );
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    expect(svg.match(/<polyline/g)?.length).toBe(2);
    expect(svg).toContain('run &lt;a&gt; &amp; b');
    expect(lossCurveSvg([], 't')).toContain('no finite loss logged');
    expect(lossCurveSvg([{ step: 7, loss: 1 }], 't')).toContain('<circle');
    // Held-out losses: a second series (dots) and a legend naming both.
    const both = lossCurveSvg([{ step: 1, loss: 4 }, { step: 2, loss: 3 }], 't', [{ step: 2, loss: 3.5 }]);
    expect(both.match(/<polyline/g)?.length).toBe(1);
    expect(both).toMatch(/<circle [^>]*fill="#ff7f0e"/);
    expect(both).toContain('training (window mean)');
    expect(both).toContain('held-out');
    expect(svg).not.toContain('held-out');
  });
});
