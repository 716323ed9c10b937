import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setMemoryCeiling } from '../src/backend/memory.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { readMetrics } from '../src/run/metrics.js';
import { listCheckpoints, readRunConfig } from '../src/run/layout.js';
import { loadRunModel } from '../src/model/factory.js';
import { train, type TrainOptions } from '../src/train/trainer.js';
import { loadConfig } from '../src/config/load.js';
import { capturedPretrain, makeTinyTrainSetup, type TinyTrainSetup } from './train-fixture.js';

let setup: TinyTrainSetup;

beforeAll(async () => {
  setup = await makeTinyTrainSetup();
});
afterAll(async () => {
  await setup?.cleanup();
});

const opts = (extra: Partial<TrainOptions> & { sets?: string[] }) => capturedPretrain(setup, extra);

describe('trainer', () => {
  it('same config + seed -> same losses; leak-free; run dir complete; loadRunModel restores the weights', async () => {
    const tensors: number[] = [];
    const before = tf.memory().numTensors;
    const a = await train(opts({ sets: ['output_dir=' + path.join(setup.root, 'det-a')], onStep: (s) => tensors.push(s.numTensors) }));
    expect(tf.memory().numTensors).toBe(before); // model, optimizer, everything freed
    expect(new Set(tensors.slice(1)).size).toBe(1); // flat across steps
    expect(tensors[0]).toBe(tensors[1]);
    const b = await train(opts({ sets: ['output_dir=' + path.join(setup.root, 'det-b')] }));
    expect(a.losses.length).toBe(8);
    expect(a.losses.every((l) => l.applied && Number.isFinite(l.loss))).toBe(true);
    expect(b.losses.map((l) => l.loss)).toEqual(a.losses.map((l) => l.loss));
    expect(a.stopped).toBe('end');

    // Run dir: config (same hash as the YAML + sets), base, rotated checkpoints, metrics, loss curve.
    const run = a.runDir;
    const { hash } = await readRunConfig(run);
    expect(hash).toBe(loadConfig(setup.pretrainYaml, ['output_dir=' + path.join(setup.root, 'det-a')]).hash);
    expect((await listCheckpoints(run)).map((c) => c.step)).toEqual([6, 8]); // save_steps 3, keep 2, + the end
    const metrics = readMetrics(path.join(run, 'metrics.jsonl'));
    expect(metrics.map((m) => m.step)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(metrics.map((m) => m.loss)).toEqual(a.losses.map((l) => l.loss));
    expect(metrics.every((m) => m.num_tensors > 0 && m.lr > 0 && m.tokens_per_s > 0)).toBe(true);
    expect(readFileSync(path.join(run, 'loss.svg'), 'utf8')).toMatch(/^<svg[\s\S]*<polyline[\s\S]*<\/svg>\n$/);
    const step = await readSafetensors(path.join(run, 'step-00000008', 'model.safetensors'));
    expect([...step.keys()].every((k) => /^(fuse_module|projector|bbox_projector)\./.test(k))).toBe(true);
    const opt = await readSafetensors(path.join(run, 'step-00000008', 'optimizer.safetensors'));
    expect(opt.size).toBe(2 * step.size);
    const base = await readSafetensors(path.join(run, 'base.safetensors'));
    expect([...base.keys()].some((k) => k.startsWith('llm.'))).toBe(true);
    expect([...base.keys()].some((k) => step.has(k))).toBe(false);

    const loaded = await loadRunModel(run);
    expect(loaded.step).toBe(8);
    for (const [n, v] of loaded.model.weightMap()) {
      const want = step.get(n) ?? base.get(n)!;
      expect(Array.from(v.dataSync()), n).toEqual(Array.from(want.data));
    }
    loaded.model.dispose();
  });

  it('refuses to overwrite a run, and to resume with another config (naming both hashes)', async () => {
    const dir = 'output_dir=' + path.join(setup.root, 'guard');
    await train(opts({ sets: [dir], maxSteps: 3 }));
    await expect(train(opts({ sets: [dir] }))).rejects.toThrow(/already holds checkpoints \(newest: step 3\).*--resume auto/);
    await expect(train(opts({ sets: [dir, 'train.lr=0.01'], resume: 'auto' }))).rejects.toThrow(/config hash [0-9a-f]{12} .*has hash [0-9a-f]{12}/);
    const cont = await train(opts({ sets: [dir], resume: 'auto' }));
    expect(cont.losses.map((l) => l.step)).toEqual([4, 5, 6, 7, 8]);
  });

  it('skips non-finite steps with a warning naming the records, and aborts after max_bad_steps', async () => {
    const o = opts({ sets: ['output_dir=' + path.join(setup.root, 'nan'), 'train.lr=1.0e+30', 'train.max_bad_steps=2'] });
    const before = tf.memory().numTensors;
    await expect(train(o)).rejects.toThrow(/2 consecutive non-finite steps \(train.max_bad_steps = 2\), last at step 3; records of that step: train-\d+/);
    expect(o.warnings()).toMatch(/step 2: non-finite .* step skipped; records: train-\d+, train-\d+, train-\d+, train-\d+/);
    expect(tf.memory().numTensors).toBe(before); // torn down after the abort
  });

  it('finetune starts from the pretrain run (init.from) and trains the LLM too', async () => {
    const pre = path.join(setup.runs, 'tiny-pretrain');
    if (!existsSync(pre)) await train(opts({}));
    const r = await train({ ...opts({ configFile: setup.finetuneYaml, stage: 'finetune' }) });
    expect(r.losses.length).toBe(4);
    const preStep = await readSafetensors(path.join(pre, 'step-00000008', 'model.safetensors'));
    const preBase = await readSafetensors(path.join(pre, 'base.safetensors'));
    const ftBase = await readSafetensors(path.join(r.runDir, 'base.safetensors'));
    // Frozen encoders carried over from the pretrain run; the LLM is trained now, so not in base.
    expect([...ftBase.keys()].every((k) => k.startsWith('visual_encoder'))).toBe(true);
    for (const [k, t] of ftBase) expect(Array.from(t.data), k).toEqual(Array.from(preBase.get(k)!.data));
    const ft = await readSafetensors(path.join(r.runDir, 'step-00000004', 'model.safetensors'));
    expect([...ft.keys()].some((k) => k.startsWith('llm.model.layers.0.'))).toBe(true);
    const state = JSON.parse(readFileSync(path.join(r.runDir, 'step-00000004', 'state.json'), 'utf8'));
    expect(state.initFrom).toEqual({ runDir: pre, step: 8 });
    // Trained further from the pretrain weights.
    const k = 'projector.model.0.weight';
    expect(Array.from(ft.get(k)!.data)).not.toEqual(Array.from(preStep.get(k)!.data));
    await expect(train(opts({ configFile: setup.finetuneYaml, stage: 'pretrain' }))).rejects.toThrow(/is a 'finetune' config; run it with 'mgllava finetune'/);
    // init.from may lack weights, but what it has must fit.
    const other = ['output_dir=' + path.join(setup.root, 'ft-mismatch'), 'model.llm.intermediate_size=32'];
    await expect(train(opts({ configFile: setup.finetuneYaml, stage: 'finetune', sets: other }))).rejects.toThrow(/shape mismatch: llm\.model\.layers\.0\.mlp\.down_proj\.weight: file has \[16,24\], model expects \[16,32\]/);
  });

  it('dry run: parameter table and memory estimate; says when it would not fit the wasm ceiling', async () => {
    const o = opts({ dryRun: true });
    const r = await train(o);
    expect(r.stopped).toBe('dry-run');
    expect(o.log()).toMatch(/visual_encoder\s+[\d.]+ K\s+frozen[\s\S]*fuse_module\s+[\d.]+ K\s+trainable[\s\S]*llm\s+[\d.]+ K\s+frozen/);
    expect(o.log()).toMatch(/weights[\s\S]*gradients[\s\S]*optimizer[\s\S]*activations[\s\S]*total/);
    expect(o.log()).toMatch(/dry run only: no weights read, nothing trained/);
    expect(existsSync(path.join(setup.runs, 'dry'))).toBe(false);
    if (tf.getBackend() === 'wasm') {
      setMemoryCeiling(256 * 1024);
      try {
        // The plan is printed either way (LoRA / checkpointing may be the way out); it says the run would not fit.
        const tight = opts({ dryRun: true });
        await train(tight);
        expect(tight.log()).toMatch(/this does not fit the wasm heap \(ceiling 256\.0 KiB\)/);
      } finally {
        setMemoryCeiling(null);
      }
    }
  });
});
