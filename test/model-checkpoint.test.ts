// Activation checkpointing of the encoders' blocks (when they train, e.g. the warm-up): the same gradients
// as without it, bit for bit, and no tensor left behind. The LLaMA decoder's is tested in model-lora.test.ts.
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { Rng } from '../src/util/rng.js';
import { ClipVit, type ClipVitConfig } from '../src/model/vision/clip-vit.js';
import { ConvNext, type ConvNextConfig } from '../src/model/vision/convnext.js';
import type { Module } from '../src/nn/module.js';

const VIT: ClipVitConfig = { imageSize: 28, patchSize: 7, hiddenSize: 16, intermediateSize: 32, numLayers: 3, numHeads: 2, layerNormEps: 1e-5, numChannels: 3, selectLayer: -1, dropCls: true };
const CONVNEXT: ConvNextConfig = { dims: [4, 8], depths: [2, 2], layerNormEps: 1e-6, imageSize: 32, inChannels: 3 };

/** Every weight's gradient of sum(f(pixels)^2), as host arrays in weight order. */
function grads(m: Module, f: () => tf.Tensor): Float32Array[] {
  const vars = [...m.namedWeights()].map(([, v]) => v);
  const { value, grads: g } = tf.variableGrads(() => tf.sum(tf.square(f())) as tf.Scalar, vars);
  const out = vars.map((v) => (g[v.name] ? (g[v.name]!.dataSync() as Float32Array).slice() : new Float32Array(0)));
  tf.dispose([value, ...Object.values(g)]);
  return out;
}

describe('activation checkpointing (encoder blocks)', () => {
  it.each([
    ['CLIP ViT layers', () => new ClipVit(VIT, { rng: new Rng(1) }), VIT.imageSize],
    ['ConvNeXt blocks', () => new ConvNext(CONVNEXT, { rng: new Rng(2) }), CONVNEXT.imageSize],
  ] as const)('%s: identical gradients, flat tensor count', (_, make, size) => {
    const m = make();
    const pixels = tf.tidy(() => tf.randomNormal([2, size, size, 3], 0, 1, 'float32', 3)) as tf.Tensor4D;
    const run = () => (m instanceof ClipVit ? m.apply(pixels).features : (m as ConvNext).apply(pixels, { concat: false }).last);
    const plain = grads(m, run);
    (m as ClipVit | ConvNext).activationCheckpointing = true;
    const before = tf.memory().numTensors;
    const ck = grads(m, run);
    grads(m, run);
    expect(tf.memory().numTensors).toBe(before);
    expect(ck.filter((g) => g.length > 0).length).toBeGreaterThan(5);
    ck.forEach((g, i) => expect(g).toEqual(plain[i]));
    pixels.dispose();
    m.dispose();
  });
});
