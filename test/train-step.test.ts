import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { collate, type Batch, type Sample } from '../src/data/collate.js';
import { MGLLaVA, type MGLLaVAConfig } from '../src/model/mgllava.js';
import { AdamW, clipByGlobalNorm } from '../src/train/adamw.js';
import { applyGradients } from '../src/train/grad-step.js';
import { accumulateGradients, supervisedTokens, trainStep } from '../src/train/step.js';
import { Rng } from '../src/util/rng.js';

const IMG = -200;
const IGN = -100;

const CONFIG: MGLLaVAConfig = {
  vision: { imageSize: 28, patchSize: 7, hiddenSize: 16, intermediateSize: 32, numLayers: 2, numHeads: 2, layerNormEps: 1e-5, numChannels: 3, selectLayer: -2, dropCls: true },
  visionAux: { dims: [4, 8, 8, 8], depths: [1, 1, 1, 1], layerNormEps: 1e-6, imageSize: 128, inChannels: 3 },
  fusion: { variant: 0, zeroInit: false }, // non-zero fusion: every trainable weight gets a non-trivial gradient
  objects: { outputSize: 7, samplingRatio: -1, projectorDepth: 2, multiLevelDim: null },
  projectorDepth: 2,
  llm: { vocabSize: 30, hiddenSize: 16, intermediateSize: 24, numLayers: 1, numHeads: 2, numKvHeads: 1, headDim: 8, rmsNormEps: 1e-6, ropeTheta: 10000, tieWordEmbeddings: false, attentionBias: false, initializerRange: 0.02, weightFormat: 'llama' },
};

/** Four samples of different lengths (so micro-batches pad differently) and box counts. */
function samples(): Sample[] {
  const rng = new Rng(11);
  const rand = (n: number) => Float32Array.from({ length: n }, () => rng.normal());
  return [6, 9, 4, 7].map((answer, i) => {
    const prompt = [1, 3 + i, IMG, 5, 6];
    const ans = Array.from({ length: answer }, (_, k) => 7 + ((k * 3 + i) % 20));
    const boxes = Float32Array.from(Array.from({ length: i + 1 }, (_, k) => [4 * k, 2 * k, 40 + 10 * k + i, 60 + 5 * k]).flat());
    return {
      index: i,
      id: `rec-${i}`,
      inputIds: Int32Array.from([...prompt, ...ans]),
      labels: Int32Array.from([...prompt.map(() => IGN), ...ans]),
      hasImage: true,
      aux: rand(128 * 128 * 3),
      lowres: rand(28 * 28 * 3),
      boxes,
      boxLabels: Array.from({ length: i + 1 }, () => 'x'),
    };
  });
}

function split(all: Sample[], micro: number): Batch[] {
  const out: Batch[] = [];
  for (let i = 0; i < all.length; i += micro) out.push(collate(all.slice(i, i + micro), { padId: 0, auxSize: 128, lowresSize: 28 }));
  return out;
}

function maxRelErr(a: tf.Tensor, b: tf.Tensor): number {
  return tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]! / Math.max(tf.max(tf.abs(a)).dataSync()[0]!, 1e-30));
}

describe('train step', () => {
  it('N micro-batches equal one big batch (grads and updated weights, 1e-5 relative)', async () => {
    const all = samples();
    const model = new MGLLaVA(CONFIG, { rng: new Rng(3) });
    const trainable = model.trainableWeights('finetune');
    const start = new Map([...trainable].map(([n, v]) => [n, v.clone()]));
    const runs = [];
    for (const micro of [4, 2, 1]) {
      const batches = split(all, micro);
      const acc = await accumulateGradients({ model, trainable, batches });
      // Then one clipped AdamW step from the same start.
      const opt = new AdamW(trainable, { betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0.1 });
      const r = await trainStep({ model, trainable, optimizer: opt, batches, lr: 1e-3, maxNorm: 0.5 });
      const updated = new Map([...trainable].map(([n, v]) => [n, v.clone()]));
      for (const [n, v] of trainable) v.assign(start.get(n)!);
      opt.dispose();
      runs.push({ micro, acc, r, updated });
    }
    const [big, ...others] = runs;
    expect(big!.acc.supervisedTokens).toBe(all.reduce((s, x) => s + x.labels.filter((l) => l !== IGN).length, 0));
    for (const o of others) {
      expect(Math.abs(o.acc.loss - big!.acc.loss) / big!.acc.loss, `loss, micro ${o.micro}`).toBeLessThan(1e-5);
      expect(Math.abs(o.r.gradNorm - big!.r.gradNorm) / big!.r.gradNorm).toBeLessThan(1e-5);
      expect(o.r.applied).toBe(true);
      for (const [n, g] of big!.acc.grads) expect(maxRelErr(g, o.acc.grads.get(n)!), `grad ${n}, micro ${o.micro}`).toBeLessThan(1e-5);
      for (const [n, w] of big!.updated) expect(maxRelErr(w, o.updated.get(n)!), `updated ${n}, micro ${o.micro}`).toBeLessThan(1e-5);
    }
    expect(big!.r.gradNorm).toBeGreaterThan(0.5); // the clip was active
    for (const r of runs) tf.dispose([...r.acc.grads.values(), ...r.updated.values()]);
    tf.dispose([...start.values()]);
    model.dispose();
  });

  it('the clip folded into AdamW (applyGradients) equals clipping first: bit for bit, clipped or not', async () => {
    for (const maxNorm of [0.05, 100]) {
      const make = () => new Map([['a', tf.variable(tf.randomNormal([7, 5], 0, 1, 'float32', 3))], ['b', tf.variable(tf.randomNormal([9], 0, 1, 'float32', 4))]]);
      const grads = new Map([['a', tf.randomNormal([7, 5], 0, 2, 'float32', 5)], ['b', tf.randomNormal([9], 0, 2, 'float32', 6)]]);
      const [p1, p2] = [make(), make()];
      const [o1, o2] = [new AdamW(p1), new AdamW(p2)];
      const before = tf.memory().numTensors;
      for (let step = 0; step < 3; step++) {
        const clipped = await clipByGlobalNorm(grads, maxNorm);
        o1.apply(clipped.grads, 1e-2);
        tf.dispose([...clipped.grads.values()]);
        const r = await applyGradients(grads, 1, o2, 1e-2, maxNorm);
        expect(r.applied).toBe(true);
        expect(r.gradNorm).toBe(clipped.norm);
      }
      expect(tf.memory().numTensors).toBe(before);
      for (const n of ['a', 'b']) expect(Array.from(p2.get(n)!.dataSync())).toEqual(Array.from(p1.get(n)!.dataSync()));
      tf.dispose([...p1.values(), ...p2.values(), ...grads.values()]);
      o1.dispose();
      o2.dispose();
    }
  });

  it('counts supervised tokens as the loss does', () => {
    const b = split(samples(), 4)[0]!;
    expect(supervisedTokens(b)).toBe(6 + 9 + 4 + 7);
  });

  it('is leak-free across steps', async () => {
    const model = new MGLLaVA(CONFIG, { rng: new Rng(4) });
    const trainable = model.trainableWeights('pretrain');
    const opt = new AdamW(trainable);
    const batches = split(samples(), 2);
    await trainStep({ model, trainable, optimizer: opt, batches, lr: 1e-3, maxNorm: 1 });
    const before = tf.memory().numTensors;
    for (let i = 0; i < 3; i++) await trainStep({ model, trainable, optimizer: opt, batches, lr: 1e-3, maxNorm: 1 });
    expect(tf.memory().numTensors).toBe(before);
    opt.dispose();
    model.dispose();
  });

  it('skips a non-finite step without touching weights or optimizer', async () => {
    const model = new MGLLaVA(CONFIG, { rng: new Rng(5) });
    const trainable = model.trainableWeights('pretrain');
    const opt = new AdamW(trainable);
    const batches = split(samples(), 4);
    // Poison a frozen weight: the loss becomes NaN.
    const frozenW = model.llm.weightMap().get('model.norm.weight')!;
    const saved = frozenW.clone();
    frozenW.assign(tf.fill(frozenW.shape, NaN));
    const before = new Map([...trainable].map(([n, v]) => [n, v.clone()]));
    const r = await trainStep({ model, trainable, optimizer: opt, batches, lr: 1e-3, maxNorm: 1 });
    expect(r.applied).toBe(false);
    expect(Number.isFinite(r.loss)).toBe(false);
    expect(opt.step).toBe(0);
    for (const [n, v] of trainable) expect(maxRelErr(before.get(n)!, v), n).toBe(0);
    frozenW.assign(saved);
    expect((await trainStep({ model, trainable, optimizer: opt, batches, lr: 1e-3, maxNorm: 1 })).applied).toBe(true);
    tf.dispose([saved, ...before.values()]);
    opt.dispose();
    model.dispose();
  });
});
