/**
 * `LlamaForCausalLM.forward({ logitRows })` runs the last layer on the wanted rows only (keys and
 * values from every row): logits and gradients must equal those of the full forward at those rows.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { Rng } from '../src/util/rng.js';
import type { LlamaConfig } from '../src/model/llm/config.js';
import { LlamaForCausalLM } from '../src/model/llm/llama.js';

const tiny = (over: Partial<LlamaConfig> = {}): LlamaConfig => ({
  vocabSize: 23,
  hiddenSize: 32, // head size 8: RoPE through the kernel on wasm
  intermediateSize: 24,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 2,
  rmsNormEps: 1e-5,
  ropeTheta: 10000,
  tieWordEmbeddings: false,
  initializerRange: 0.3,
  ...over,
});

const B = 3;
const T = 7;

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i]! - b[i]!));
  return d;
}

/** Logits at `rows` and the gradients of sum(logits * r) w.r.t. the embeddings and every weight, both ways. */
function bothWays(model: LlamaForCausalLM, rows: number[], mask: number[][]) {
  const embeds = tf.tidy(() => tf.randomNormal([B, T, model.config.hiddenSize], 0, 1, 'float32', 3)) as tf.Tensor3D;
  const r = tf.tidy(() => tf.randomNormal([rows.length, model.config.vocabSize], 0, 1, 'float32', 4));
  const logitRows = Int32Array.from(rows);
  const weights = [...model.namedWeights()].filter(([n]) => !n.includes('embed_tokens')).map(([, v]) => v); // embeddings unused: inputsEmbeds
  const run = (pruned: boolean) => {
    const f = (e: tf.Tensor) =>
      tf.tidy(() => {
        const logits = pruned
          ? model.forward({ inputsEmbeds: e as tf.Tensor3D, attentionMask: mask, logitRows }).logits
          : tf.gather(model.forward({ inputsEmbeds: e as tf.Tensor3D, attentionMask: mask }).logits.reshape([B * T, -1]), logitRows);
        return { logits, loss: tf.sum(tf.mul(logits, r)) as tf.Scalar };
      });
    const logits = tf.tidy(() => f(embeds).logits);
    const { value, grads } = tf.variableGrads(() => f(embeds).loss, weights);
    value.dispose();
    const dEmbeds = tf.grad((e: tf.Tensor) => f(e).loss)(embeds);
    return { logits, dEmbeds, grads: weights.map((w) => grads[w.name]!) };
  };
  const full = run(false);
  const pruned = run(true);
  tf.dispose([embeds, r]);
  return { full, pruned };
}

describe('LlamaForCausalLM.forward with logitRows (last layer on those rows only)', () => {
  const cases: { name: string; rows: number[]; mask: number[][]; over?: Partial<LlamaConfig> }[] = [
    { name: 'the same rows in every batch element (no padding, identity order)', rows: [3, 4, 6, 10, 11, 13, 17, 18, 20], mask: [[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]] },
    { name: 'ragged rows, unsorted, left-padding mask', rows: [6, 2, 3, 12, 11, 20, 16], mask: [[1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]] },
    { name: 'one batch element without rows', rows: [15, 16, 20], mask: [[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]] },
    { name: 'one layer, MHA, a single row', rows: [9], mask: [[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]], over: { numLayers: 1, numKvHeads: 4, hiddenSize: 16 } }, // head size 4: the RoPE composite
  ];
  for (const c of cases) {
    it(`${c.name}: logits and gradients equal the full forward's`, () => {
      const model = new LlamaForCausalLM(tiny(c.over), { rng: new Rng(5) });
      const before = tf.memory().numTensors;
      const { full, pruned } = bothWays(model, c.rows, c.mask);
      expect(pruned.logits.shape).toEqual([c.rows.length, model.config.vocabSize]);
      expect(maxAbsDiff(pruned.logits.dataSync(), full.logits.dataSync())).toBeLessThan(1e-5);
      expect(maxAbsDiff(pruned.dEmbeds.dataSync(), full.dEmbeds.dataSync())).toBeLessThan(1e-5);
      full.grads.forEach((g, i) => expect(maxAbsDiff(pruned.grads[i]!.dataSync(), g.dataSync())).toBeLessThan(1e-5));
      tf.dispose([full.logits, full.dEmbeds, ...full.grads, pruned.logits, pruned.dEmbeds, ...pruned.grads]);
      expect(tf.memory().numTensors).toBe(before);
      model.dispose();
    });
  }
});
