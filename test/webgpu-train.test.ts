// A few steps of the tiny-shapes pretrain + finetune on webgpu and on wasm, through the CLI (`--backend`): the
// per-step losses (metrics.jsonl, log_steps 1) agree to 1e-4 relative. Exercises every read on the training path
// (loss, clip norm, feature cache, checkpoints) on a backend that cannot read synchronously.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTinyTrainSetup, type TinyTrainSetup } from './train-fixture.js';
import { useWebgpu } from './webgpu-helpers.js';

const gpu = await useWebgpu();
const CLI = path.join(import.meta.dirname, '..', 'bin', 'mgllava.js');
let setup: TinyTrainSetup;

beforeAll(async () => {
  if (gpu) setup = await makeTinyTrainSetup(12);
});
afterAll(async () => {
  await setup?.cleanup();
});

/** Run a stage through the CLI; returns the per-step losses from its metrics.jsonl. */
function stage(backend: string, which: 'pretrain' | 'finetune', steps: number): number[] {
  const out = path.join(setup.root, `runs-${backend}`);
  const config = which === 'pretrain' ? setup.pretrainYaml : setup.finetuneYaml;
  const sets = [`output_dir=${out}`, 'train.log_steps=1', 'train.save_steps=100', ...(which === 'finetune' ? [`init.from=${out}/tiny-pretrain`] : [])];
  const r = spawnSync(process.execPath, [CLI, which, '--config', config, '--backend', backend, '--max-steps', String(steps), ...sets.flatMap((s) => ['--set', s])], {
    encoding: 'utf8',
    timeout: 300_000,
    env: { ...process.env, MGLLAVA_NATIVE_THREADS: '1' },
  });
  expect(r.status, `${which} on ${backend}:\n${r.stdout}\n${r.stderr}`).toBe(0);
  const lines = readFileSync(path.join(out, `tiny-${which}`, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { step: number; loss?: number | null });
  const losses = lines.filter((l) => typeof l.loss === 'number').map((l) => l.loss as number);
  expect(losses.length).toBe(steps);
  return losses;
}

describe.runIf(gpu)('training on webgpu', () => {
  it('pretrain (3 steps) then finetune (2 steps): losses equal to wasm within 1e-4 relative', () => {
    const losses: Record<string, number[]> = {};
    for (const backend of ['wasm', 'webgpu']) losses[backend] = [...stage(backend, 'pretrain', 3), ...stage(backend, 'finetune', 2)];
    const [wasm, webgpu] = [losses.wasm!, losses.webgpu!];
    expect(wasm.every(Number.isFinite)).toBe(true);
    const rel = webgpu.map((l, i) => Math.abs(l - wasm[i]!) / Math.abs(wasm[i]!));
    console.log(`tiny-shapes losses, wasm vs webgpu:\n${wasm.map((l, i) => `  ${i < 3 ? 'pretrain' : 'finetune'} ${l.toFixed(6)}  ${webgpu[i]!.toFixed(6)}  rel ${rel[i]!.toExponential(1)}`).join('\n')}`);
    for (const [i, e] of rel.entries()) expect(e, `step ${i + 1}: wasm ${wasm[i]}, webgpu ${webgpu[i]}`).toBeLessThan(1e-4);
  }, 400_000); // four CLI runs: ~90 s on 2 busy cores
});
