/**
 * Kill-and-resume: a run SIGKILLed in the middle of a checkpoint save and again between saves, then resumed
 * with --resume auto, ends with the same per-step losses and the same weights and optimizer state as a run
 * that was never interrupted. The interrupted run is the real CLI in child processes; the kill points are
 * deterministic (MGLLAVA_TEST_KILL_AT, src/train/checkpoint.ts).
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readSafetensors } from '../src/io/safetensors.js';
import { readMetrics } from '../src/run/metrics.js';
import { listCheckpoints } from '../src/run/layout.js';
import { train } from '../src/train/trainer.js';
import { collector, makeTinyTrainSetup, type TinyTrainSetup } from './train-fixture.js';

const REPO = path.resolve(import.meta.dirname, '..');
let setup: TinyTrainSetup;

beforeAll(async () => {
  setup = await makeTinyTrainSetup();
});
afterAll(async () => {
  await setup?.cleanup();
});

interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], killAt: string | null): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const env = { ...process.env, MGLLAVA_TEST_KILL_AT: killAt ?? '' };
    const p = spawn(process.execPath, [path.join(REPO, 'bin/mgllava.js'), ...args, '--backend', tf.getBackend(), '--progress', 'lines'], { cwd: REPO, env });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('error', reject);
    p.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

async function expectSameFile(a: string, b: string, what: string): Promise<void> {
  const [x, y] = await Promise.all([readSafetensors(a), readSafetensors(b)]);
  expect([...y.keys()]).toEqual([...x.keys()]);
  for (const [k, t] of x) {
    const u = y.get(k)!.data;
    let worst = 0;
    t.data.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - u[i]!) / Math.max(Math.abs(v), 1e-3))));
    expect(worst, `${what} ${k}`).toBeLessThanOrEqual(1e-6);
  }
}

describe('kill and resume', () => {
  it('SIGKILL during a save and between saves, then --resume auto: same losses and weights as an uninterrupted run', async () => {
    const dirA = path.join(setup.root, 'uninterrupted');
    const dirB = path.join(setup.root, 'killed');
    // grad_accum 2: 3 steps per epoch of 6 micro-batches, so the 8 steps cross epoch boundaries too.
    const sets = ['train.grad_accum=2'];
    const a = await train({ configFile: setup.pretrainYaml, stage: 'pretrain', sets: [...sets, `output_dir=${dirA}`], progress: 'off', out: collector().stream });
    expect(a.losses.length).toBe(8);
    const args = ['pretrain', '--config', setup.pretrainYaml, '--set', ...sets, `output_dir=${dirB}`];
    const runB = path.join(dirB, 'tiny-pretrain');

    // 1. Killed while writing the step-6 checkpoint (model.safetensors written, state.json not).
    const b1 = await cli(args, 'save:6');
    expect(b1.signal, b1.stderr).toBe('SIGKILL');
    expect((await listCheckpoints(runB)).map((c) => c.step)).toEqual([3]);
    const tmp = readdirSync(runB).filter((n) => n.startsWith('.tmp-step-00000006-'));
    expect(tmp.length).toBe(1);
    expect(existsSync(path.join(runB, tmp[0]!, 'model.safetensors'))).toBe(true);
    expect(existsSync(path.join(runB, tmp[0]!, 'state.json'))).toBe(false);

    // 2. Resumed from step 3, killed after step 7 (step 6 saved this time).
    const b2 = await cli([...args, '--resume', 'auto'], 'step:7');
    expect(b2.signal, b2.stderr).toBe('SIGKILL');
    expect(b2.stdout).toMatch(/resuming at step 3/);
    expect(b2.stdout).toMatch(/removed 1 incomplete save/);
    expect((await listCheckpoints(runB)).map((c) => c.step)).toEqual([3, 6]);

    // 3. Resumed from step 6 to the end.
    const b3 = await cli([...args, '--resume', 'auto'], null);
    expect(b3.code, b3.stderr).toBe(0);
    expect(b3.stdout).toMatch(/resuming at step 6/);
    expect((await listCheckpoints(runB)).map((c) => c.step)).toEqual([6, 8]);

    const metrics = readMetrics(path.join(runB, 'metrics.jsonl'));
    expect(metrics.map((m) => m.step)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    metrics.forEach((m, i) => expect(Math.abs(m.loss! - a.losses[i]!.loss) / a.losses[i]!.loss, `loss of step ${m.step}`).toBeLessThanOrEqual(1e-6));
    const runA = path.join(dirA, 'tiny-pretrain');
    for (const f of ['model.safetensors', 'optimizer.safetensors']) {
      await expectSameFile(path.join(runA, 'step-00000008', f), path.join(runB, 'step-00000008', f), f);
    }
  });

  it('--resume PATH continues from that step, replacing the newer checkpoints it passes', async () => {
    const dir = path.join(setup.root, 'uninterrupted');
    const run = path.join(dir, 'tiny-pretrain');
    const first = readMetrics(path.join(run, 'metrics.jsonl'));
    const err = collector();
    const r = await train({
      configFile: setup.pretrainYaml,
      stage: 'pretrain',
      sets: ['train.grad_accum=2', `output_dir=${dir}`],
      resume: path.join(run, 'step-00000006'),
      progress: 'off',
      out: collector().stream,
      err: err.stream,
    });
    expect(err.text()).toMatch(/resuming from step 6; the newer checkpoints \(steps 8\) will be replaced/);
    expect(r.losses.map((l) => l.loss)).toEqual(first.slice(6).map((m) => m.loss));
    expect(readMetrics(path.join(run, 'metrics.jsonl')).map((m) => m.loss)).toEqual(first.map((m) => m.loss));
    expect((await listCheckpoints(run)).map((c) => c.step)).toEqual([6, 8]);
  });
});
