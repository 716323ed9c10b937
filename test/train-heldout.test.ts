/**
 * What the stage runner adds around the steps (issue 17 items 3-4): held-out evaluation during training
 * (train.eval_records / eval_steps: loss and exact-match accuracy in metrics.jsonl, on the console and in
 * loss.svg, without changing a bit of the training), and divergence warnings (a loss spike or a gradient-norm
 * explosion warns once per episode naming step, records and lr; the end of the run repeats them).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readSafetensors } from '../src/io/safetensors.js';
import { readMetrics, readMetricsRecords, type MetricsHeldOutLine, type MetricsWarningLine } from '../src/run/metrics.js';
import { DivergenceMonitor, MIN_HISTORY } from '../src/train/divergence.js';
import { runStage, type StageSpec } from '../src/train/stage.js';
import { train } from '../src/train/trainer.js';
import { checkWarmupConfig } from '../src/train/warmup.js';
import { loadConfig } from '../src/config/load.js';
import { collector, makeTinyTrainSetup, type TinyTrainSetup } from './train-fixture.js';

let setup: TinyTrainSetup;
let evalRecords: string;

beforeAll(async () => {
  setup = await makeTinyTrainSetup();
  // Six finetune records as the held-out set (their images and boxes are the training set's files).
  evalRecords = path.join(setup.root, 'heldout.json');
  writeFileSync(evalRecords, JSON.stringify((JSON.parse(readFileSync(path.join(setup.data, 'finetune.json'), 'utf8')) as unknown[]).slice(0, 6)));
});
afterAll(async () => {
  await setup?.cleanup();
});

describe('divergence monitor', () => {
  const feed = (m: DivergenceMonitor, xs: [number, number][]) =>
    xs.flatMap(([loss, gradNorm], i) => m.observe({ step: i + 1, loss, gradNorm, applied: true, lr: 1e-3, records: () => [`r${i + 1}`] }));

  it('warns once per episode for a loss spike, and again in a new episode', () => {
    const m = new DivergenceMonitor();
    const calm = Array.from({ length: MIN_HISTORY }, (): [number, number] => [1, 1]);
    const ws = feed(m, [...calm, [5, 1], [6, 1], [1, 1], [4.5, 1]]);
    expect(ws.map((w) => [w.kind, w.step])).toEqual([
      ['loss_spike', MIN_HISTORY + 1],
      ['loss_spike', MIN_HISTORY + 4],
    ]);
    expect(ws[0]).toMatchObject({ value: 5, median: 1, ratio: 5, lr: 1e-3, records: [`r${MIN_HISTORY + 1}`] });
    expect(m.warnings).toEqual(ws);
  });

  it('a gradient-norm explosion is its own kind; nothing is judged before the history fills; skipped steps are not judged', () => {
    const m = new DivergenceMonitor();
    expect(feed(m, [[1, 1], [50, 500]])).toEqual([]); // too early to know what is normal
    const m2 = new DivergenceMonitor();
    const calm = Array.from({ length: MIN_HISTORY }, (): [number, number] => [1, 2]);
    expect(feed(m2, [...calm, [1.5, 25]]).map((w) => w.kind)).toEqual(['grad_norm']);
    expect(m2.observe({ step: 99, loss: NaN, gradNorm: NaN, applied: false, lr: 1, records: () => [] })).toEqual([]);
  });
});

describe('the stage runner around the steps', () => {
  /** A stage of one scalar weight whose step losses are scripted: runStage's own behaviour, nothing else. */
  function scripted(losses: number[]): StageSpec<{ w: tf.Variable; dispose(): void }, { batchesPerEpoch: number; loader(): never; close(): Promise<void> } & Record<string, unknown>, string> {
    let i = 0;
    return {
      stage: 'pretrain',
      checkConfig: () => undefined,
      buildData: async () => {
        let cursor = 0;
        return {
          batchesPerEpoch: losses.length,
          loader: () => ({ next: async () => ({ batch: `rec-${cursor++}` }), state: () => ({ epoch: 0, position: cursor }), close: async () => undefined }),
          close: async () => undefined,
        } as never;
      },
      buildModel: async () => {
        const w = tf.variable(tf.zeros([2]));
        return { w, dispose: () => w.dispose() };
      },
      trainable: (m) => new Map([['w', m.w]]),
      checkpointFiles: (m) => ({ model: new Map([['w', m.w]]) }),
      provenance: async () => ({ initFrom: null }),
      describe: () => 'scripted stage',
      stepper: async () => ({ run: async () => ({ loss: losses[i++]!, gradNorm: 1, applied: true, positions: 1 }) }),
      idsOf: (b) => [b],
    };
  }

  it('a loss spike warns with step, records and lr; metrics.jsonl keeps it; the end of the run repeats it', async () => {
    const losses = [2, 2, 2, 2, 2, 2, 9, 9.5, 2, 2];
    const out = collector();
    const err = collector();
    const r = await runStage(scripted(losses), {
      configFile: setup.pretrainYaml,
      sets: [`output_dir=${path.join(setup.root, 'spike')}`, 'train.max_steps=10', 'train.save_steps=100'],
      progress: 'lines',
      out: out.stream,
      err: err.stream,
    });
    expect(r.warnings.map((w) => w.step)).toEqual([7]);
    expect(err.text()).toMatch(/warning: step 7: loss spike: 9\.000 is 4\.5x the median of the recent steps \(2\.000\); lr [\d.e+-]+; records: rec-6/);
    expect(err.text()).toMatch(/warning: 1 divergence warning\(s\) in this run: step 7 \(loss 4\.5x, lr /);
    const warned = readMetricsRecords(path.join(r.runDir, 'metrics.jsonl')).filter((l): l is MetricsWarningLine => 'warning' in l);
    expect(warned).toEqual([{ step: 7, warning: expect.objectContaining({ kind: 'loss_spike', value: 9, median: 2, records: ['rec-6'] }) }]);
    expect(readMetrics(path.join(r.runDir, 'metrics.jsonl')).map((l) => l.step)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    // The run summary names where the products ran.
    expect(out.text()).toMatch(/10 steps in .* on wasm; matmul (native \w+ x\d+|xnnpack)/);
    const state = JSON.parse(readFileSync(path.join(r.runDir, 'step-00000010', 'state.json'), 'utf8')) as { runtime: { backend: string; matmul: string } };
    expect(state.runtime).toEqual(r.runtime);
  });
});

describe('held-out evaluation during training', () => {
  it('logs held-out loss and accuracy every eval_steps and at the end, draws them in loss.svg, and changes no training bit', async () => {
    const sets = (dir: string) => [`output_dir=${path.join(setup.root, dir)}`];
    const withEval = [`train.eval_records=${evalRecords}`, 'train.eval_steps=3', 'train.eval_max_new_tokens=4'];
    const out = collector();
    const before = tf.memory().numTensors;
    const a = await train({ configFile: setup.pretrainYaml, stage: 'pretrain', sets: [...sets('eval-on'), ...withEval], progress: 'lines', out: out.stream, err: collector().stream });
    expect(tf.memory().numTensors).toBe(before);
    const b = await train({ configFile: setup.pretrainYaml, stage: 'pretrain', sets: sets('eval-off'), progress: 'off', out: collector().stream, err: collector().stream });
    // The same training, bit for bit.
    expect(a.losses).toEqual(b.losses);
    const weights = async (runDir: string) => [...(await readSafetensors(path.join(runDir, 'step-00000008', 'model.safetensors')))].map(([k, v]) => [k, Array.from(v.data)]);
    expect(await weights(a.runDir)).toEqual(await weights(b.runDir));

    // Steps 3, 6 and the last (8): metrics.jsonl, console, result.
    const held = readMetricsRecords(path.join(a.runDir, 'metrics.jsonl')).filter((l): l is MetricsHeldOutLine => 'heldout' in l);
    expect(held.map((h) => h.step)).toEqual([3, 6, 8]);
    for (const h of held) {
      expect(Number.isFinite(h.heldout.loss) && h.heldout.loss > 0).toBe(true);
      expect(h.heldout.questions).toBe(6);
      expect(h.heldout.accuracy).toBeGreaterThanOrEqual(0);
      expect(h.heldout.accuracy).toBeLessThanOrEqual(1);
      expect(h.heldout.tokens).toBeGreaterThan(0);
    }
    expect(held[0]!.heldout.loss).not.toBe(held[2]!.heldout.loss); // the model moved
    expect(a.heldOut).toMatchObject({ step: 8, loss: held[2]!.heldout.loss, questions: 6 });
    expect(out.text()).toMatch(/held-out: 6 records of .*heldout\.json, evaluated every 3 steps and after the last step/);
    expect(out.text()).toMatch(/held-out at step 3: loss \d+\.\d{4} \(\d+ tokens\), accuracy \d+\.\d % \(\d\/6\)/);
    expect(readMetrics(path.join(a.runDir, 'metrics.jsonl')).map((l) => l.step)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(readFileSync(path.join(a.runDir, 'loss.svg'), 'utf8')).toMatch(/held-out/);
    expect(readFileSync(path.join(a.runDir, 'heldout-predictions.jsonl'), 'utf8').trim().split('\n')).toHaveLength(6);
  });

  it('a bad held-out set stops the run before its first step; the warm-up refuses eval records', async () => {
    const bad = path.join(setup.root, 'bad-heldout.json');
    writeFileSync(bad, JSON.stringify([{ id: 'x', image: 'missing.png', conversations: [{ from: 'human', value: '<image>\nq' }, { from: 'gpt', value: 'a' }] }]));
    const steps: number[] = [];
    await expect(
      train({ configFile: setup.pretrainYaml, stage: 'pretrain', sets: [`output_dir=${path.join(setup.root, 'eval-bad')}`, `train.eval_records=${bad}`], progress: 'off', out: collector().stream, onStep: (s) => steps.push(s.step) }),
    ).rejects.toThrow(/missing\.png/);
    expect(steps).toEqual([]);
    const warm = loadConfig(path.resolve(import.meta.dirname, '../configs/tiny-shapes/warmup.yaml'), [`train.eval_records=${evalRecords}`]);
    expect(() => checkWarmupConfig(warm.config, warm.file)).toThrow(/train\.eval_records: the warm-up evaluates its heads on warmup\.eval_split/);
  });
});
