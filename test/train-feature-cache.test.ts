import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { collate, type Batch, type Sample } from '../src/data/collate.js';
import { textOnlyBoxes } from '../src/data/boxes.js';
import { loadConfig } from '../src/config/load.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { disposeFrozen, type FrozenFeatures } from '../src/model/mgllava.js';
import { buildTrainData, type TrainData } from '../src/train/build-data.js';
import { encodeBatchPerImage, FeatureCache, featureFingerprint } from '../src/train/feature-cache.js';
import { buildModel } from '../src/model/factory.js';
import { train, type TrainOptions } from '../src/train/trainer.js';
import type { MGLLaVA } from '../src/model/mgllava.js';
import { collector, makeTinyTrainSetup, type TinyTrainSetup } from './train-fixture.js';

let setup: TinyTrainSetup;
let model: MGLLaVA;
let data: TrainData;
let samples: Sample[];

beforeAll(async () => {
  setup = await makeTinyTrainSetup();
  const { config } = loadConfig(setup.pretrainYaml);
  model = await buildModel(config);
  data = await buildTrainData(config, model.config, { imageWorkers: 0 });
  samples = await Promise.all([0, 1, 2, 3, 4, 5].map((i) => data.dataset.get(i)));
});
afterAll(async () => {
  model?.dispose();
  await data?.close();
  await setup?.cleanup();
});

const batchOf = (ss: Sample[]): Batch => collate(ss, { padId: 0, auxSize: data.sizes.aux, lowresSize: data.sizes.lowres });
const imageOf = (i: number) => data.dataset.items[i]?.imagePath ?? null;
const textOnly = (index: number): Sample => {
  const t = textOnlyBoxes();
  return { ...samples[0]!, index, id: `text-${index}`, hasImage: false, aux: null, lowres: null, boxes: Float32Array.from(t.boxes.flat()), boxLabels: t.labels };
};

/** The host values of frozen features, per part (disposes them). */
function host(f: FrozenFeatures): { vit: number[]; last: number[]; roi: number[]; counts: number[] } {
  const out = { vit: Array.from(f.vit.dataSync()), last: Array.from(f.lastMap!.dataSync()), roi: Array.from(f.roiMeans!.dataSync()), counts: f.boxCounts };
  disposeFrozen(f);
  return out;
}

/** Rows `rows` of a batch's features (ViT, last map and RoI rows by box counts). */
function rowsOf(h: ReturnType<typeof host>, rows: number[]): ReturnType<typeof host> {
  const B = h.counts.length;
  const vitPer = h.vit.length / B;
  const lastPer = h.last.length / B;
  const C = h.roi.length / h.counts.reduce((a, b) => a + b, 0);
  const start = h.counts.map((_, i) => h.counts.slice(0, i).reduce((a, b) => a + b, 0));
  return {
    vit: rows.flatMap((r) => h.vit.slice(r * vitPer, (r + 1) * vitPer)),
    last: rows.flatMap((r) => h.last.slice(r * lastPer, (r + 1) * lastPer)),
    roi: rows.flatMap((r) => h.roi.slice(start[r]! * C, (start[r]! + h.counts[r]!) * C)),
    counts: rows.map((r) => h.counts[r]!),
  };
}

describe('feature cache', () => {
  it('hits and misses in any mix give exactly the per-image encoder bits, leak-free; text-only rows share one entry', async () => {
    const before = tf.memory().numTensors;
    const cache = new FeatureCache({ fingerprint: 'test', budgetBytes: 1 << 30 });
    const reference = host(encodeBatchPerImage(model, batchOf([...samples, textOnly(100)]))); // rows 0-5 images, 6 text-only
    // First batch: all misses.
    expect(host(await cache.frozenFor(model, batchOf([samples[0]!, samples[1]!, samples[2]!]), imageOf))).toEqual(rowsOf(reference, [0, 1, 2]));
    // Mixed: hits (2, 0) and misses (4, 3) in another order and batch size, plus two text-only records.
    const mixed = batchOf([samples[4]!, samples[2]!, textOnly(100), samples[0]!, textOnly(101), samples[3]!]);
    expect(host(await cache.frozenFor(model, mixed, imageOf))).toEqual(rowsOf(reference, [4, 2, 6, 0, 6, 3]));
    expect(cache.stats()).toMatchObject({ entries: 6, hits: 3, misses: 6, overBudget: 0 }); // second text-only row hits the first
    // Without the cache: the same rows, whatever the batch composition.
    expect(host(encodeBatchPerImage(model, mixed))).toEqual(rowsOf(reference, [4, 2, 6, 0, 6, 3]));
    expect(tf.memory().numTensors).toBe(before);
  });

  it('past the byte budget nothing more is stored; misses are recomputed, still exact', async () => {
    const probe = new FeatureCache({ fingerprint: 'probe', budgetBytes: 1 << 30 });
    disposeFrozen(await probe.frozenFor(model, batchOf([samples[0]!, samples[1]!]), imageOf));
    const twoEntries = probe.stats().bytes; // entries differ in size (K boxes each): room for exactly the first two
    const cache = new FeatureCache({ fingerprint: 'small', budgetBytes: twoEntries });
    const b = batchOf([samples[0]!, samples[1]!, samples[2]!, samples[3]!]);
    const reference = host(encodeBatchPerImage(model, b));
    expect(host(await cache.frozenFor(model, b, imageOf))).toEqual(reference);
    expect(host(await cache.frozenFor(model, b, imageOf))).toEqual(reference);
    expect(cache.stats()).toMatchObject({ entries: 2, bytes: twoEntries, hits: 2, misses: 6, overBudget: 4 });
    expect(cache.full).toBe(true);
  });

  it('the fingerprint follows the frozen weights and the sample options (all of them, in any key order)', async () => {
    const prep = data.sampleOptions; // the object the dataset was built with
    const a = await featureFingerprint(model, prep);
    expect(await featureFingerprint(model, prep)).toBe(a);
    expect(await featureFingerprint(model, Object.fromEntries(Object.entries(prep).reverse()) as typeof prep)).toBe(a);
    expect(await featureFingerprint(model, { ...prep, nmsThreshold: 0.5 })).not.toBe(a);
    expect(await featureFingerprint(model, { ...prep, lowresSize: prep.lowresSize + 14 })).not.toBe(a);
    // An option the fingerprint code has never heard of still counts: it is derived from the options, not a copy.
    expect(await featureFingerprint(model, { ...prep, someFutureOption: 1 } as typeof prep)).not.toBe(a);
    const w = [...model.vision.namedWeights()][0]![1];
    const saved = w.clone();
    w.assign(tf.add(saved, 1e-3));
    try {
      expect(await featureFingerprint(model, prep)).not.toBe(a);
    } finally {
      w.assign(saved);
      saved.dispose();
    }
    expect(await featureFingerprint(model, prep)).toBe(a);
  });

  it('training with the cache on and off gives bitwise identical losses and weights (pretrain and finetune)', async () => {
    const run = async (stage: 'pretrain' | 'finetune', mode: 'on' | 'off', extra: string[] = []) => {
      const out = collector();
      const o: TrainOptions = {
        configFile: stage === 'pretrain' ? setup.pretrainYaml : setup.finetuneYaml,
        stage,
        sets: [`output_dir=${path.join(setup.root, `fc-${mode}`)}`, `train.feature_cache=${mode}`, ...extra],
        progress: 'lines',
        out: out.stream,
        err: collector().stream,
      };
      const r = await train(o);
      const weights = await readSafetensors(path.join(r.runDir, `step-${String(r.step).padStart(8, '0')}`, 'model.safetensors'));
      return { losses: r.losses.map((l) => l.loss), weights: new Map([...weights].map(([k, v]) => [k, Array.from(v.data)])), log: out.text() };
    };
    // 8 steps of 4 over 24 records: the last two steps revisit images (hits).
    const on = await run('pretrain', 'on');
    const off = await run('pretrain', 'off');
    expect(on.log).toMatch(/feature cache on, budget 2048 MB/);
    expect(on.log).toMatch(/feature cache: 24 images \([\d.]+ MB\), 8 hits \/ 24 misses/);
    expect(off.log).not.toMatch(/feature cache/);
    expect(on.losses).toEqual(off.losses);
    expect(on.losses.every(Number.isFinite)).toBe(true);
    expect(on.weights).toEqual(off.weights);

    // Finetune (the LLM learns too) from each mode's own pretrain run.
    const initFrom = (mode: string) => [`init.from=${path.join(setup.root, `fc-${mode}`, 'tiny-pretrain')}`, 'train.max_steps=8'];
    const fOn = await run('finetune', 'on', initFrom('on'));
    const fOff = await run('finetune', 'off', initFrom('off'));
    expect(fOn.losses).toEqual(fOff.losses);
    expect(fOn.weights).toEqual(fOff.weights);
    expect([...fOn.weights.keys()].some((k) => k.startsWith('llm.'))).toBe(true);
  });

  it('a following run handed the cache of a run with the same encoders starts with it filled; another fingerprint gets a new one', async () => {
    const sets = (n: string) => [`output_dir=${path.join(setup.root, n)}`, 'train.max_steps=2'];
    const a = await train({ configFile: setup.pretrainYaml, stage: 'pretrain', sets: sets('reuse-a'), progress: 'off', out: collector().stream });
    expect(a.featureCache).toBeInstanceOf(FeatureCache);
    const out = collector();
    const b = await train({ configFile: setup.pretrainYaml, stage: 'pretrain', sets: sets('reuse-b'), progress: 'lines', out: out.stream, featureCache: a.featureCache });
    expect(out.text()).toMatch(/reusing 8 images .* cached by the previous run/);
    expect(out.text()).toMatch(/8 hits \/ 0 misses/);
    expect(b.featureCache).toBe(a.featureCache);
    // Not handed over: a fresh cache (nothing is kept between runs behind the caller's back).
    const c = await train({ configFile: setup.pretrainYaml, stage: 'pretrain', sets: sets('reuse-c'), progress: 'lines', out: collector().stream });
    expect(c.featureCache).not.toBe(a.featureCache);
    // Other preprocessing: another fingerprint, so the handed cache is not used.
    const d = await train({ configFile: setup.pretrainYaml, stage: 'pretrain', sets: [...sets('reuse-d'), 'data.nms_threshold=0.5'], progress: 'off', out: collector().stream, featureCache: a.featureCache });
    expect(d.featureCache).not.toBe(a.featureCache);
  });
});
