import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { MGLLaVA, disposeFrozen, type MGLLaVAConfig } from '../src/model/mgllava.js';
import { Rng } from '../src/util/rng.js';
import { namedGrads } from '../src/golden/pieces/variable-grads.js';

const IMG = -200;
const IGN = -100;

function tinyConfig(kind: 'full' | 'fusion' | 'lowres'): MGLLaVAConfig {
  return {
    vision: { imageSize: 28, patchSize: 7, hiddenSize: 16, intermediateSize: 32, numLayers: 2, numHeads: 2, layerNormEps: 1e-5, numChannels: 3, selectLayer: -2, dropCls: true },
    visionAux: kind === 'lowres' ? null : { dims: [4, 8, 8, 8], depths: [1, 1, 1, 1], layerNormEps: 1e-6, imageSize: 128, inChannels: 3 },
    fusion: kind === 'lowres' ? null : { variant: 0, zeroInit: true },
    objects: kind === 'full' ? { outputSize: 7, samplingRatio: -1, projectorDepth: 2, multiLevelDim: null } : null,
    projectorDepth: 2,
    llm: { vocabSize: 30, hiddenSize: 16, intermediateSize: 24, numLayers: 1, numHeads: 2, numKvHeads: 1, headDim: 8, rmsNormEps: 1e-6, ropeTheta: 10000, tieWordEmbeddings: false, attentionBias: false, initializerRange: 0.02, weightFormat: 'llama' },
  };
}

function batch() {
  const pixels = tf.randomNormal([2, 28, 28, 3], 0, 1, 'float32', 1) as tf.Tensor4D;
  const pixelsAux = tf.randomNormal([2, 128, 128, 3], 0, 1, 'float32', 2) as tf.Tensor4D;
  const boxes = [[[0, 0, 30, 30], [10, 12, 20, 40]], [[5, 5, 60, 60]]];
  const text = {
    inputIds: [[1, IMG, 5, 6, 7], [1, 8, IMG, 9, 0]],
    labels: [[IGN, IGN, IGN, 6, 7], [IGN, IGN, IGN, 9, IGN]],
    attentionMask: [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]],
  };
  return { pixels, pixelsAux, boxes, text };
}

describe('MGLLaVA composition', () => {
  it('draws no random init for parts a pretrained directory will overwrite', () => {
    const plain = new MGLLaVA(tinyConfig('full'), { rng: new Rng(3) });
    const pre = new MGLLaVA(tinyConfig('full'), { rng: new Rng(3), pretrained: { llm: true } });
    const a = plain.weightMap();
    for (const [name, v] of pre.weightMap()) {
      if (name.startsWith('llm.')) {
        expect(tf.max(tf.abs(v)).dataSync()[0], name).toBe(0);
      } else {
        // The LLM is built last: the other parts see the same random stream as without the flag.
        expect(Array.from(v.dataSync()), name).toEqual(Array.from(a.get(name)!.dataSync()));
      }
    }
    expect([...a.keys()].filter((n) => n.startsWith('llm.')).some((n) => tf.max(tf.abs(a.get(n)!)).dataSync()[0]! > 0)).toBe(true);
    plain.dispose();
    pre.dispose();
  });

  it('names weights as the reference checkpoint and picks the stage trainable sets', () => {
    const m = new MGLLaVA(tinyConfig('full'), { rng: new Rng(1) });
    const names = [...m.weightMap().keys()];
    for (const prefix of ['visual_encoder.vision_model.', 'visual_encoder_aux.stem.', 'fuse_module.', 'projector.model.', 'bbox_projector.model.', 'llm.model.', 'llm.lm_head.']) {
      expect(names.some((n) => n.startsWith(prefix)), prefix).toBe(true);
    }
    const pre = [...m.trainableWeights('pretrain').keys()];
    expect(pre.every((n) => /^(fuse_module|projector|bbox_projector)\./.test(n))).toBe(true);
    const sft = [...m.trainableWeights('finetune').keys()];
    expect(sft.filter((n) => n.startsWith('llm.')).length).toBe([...m.llm.namedWeights()].length);
    expect(sft.some((n) => n.startsWith('visual_encoder'))).toBe(false);
    for (const [n, v] of m.weightMap()) if (n.startsWith('visual_encoder')) expect(v.trainable, n).toBe(false);
    m.dispose();
  });

  it.each(['full', 'fusion', 'lowres'] as const)('%s: loss and gradients, no tensor leak, config round trip', (kind) => {
    const m = new MGLLaVA(tinyConfig(kind), { rng: new Rng(7) });
    const { pixels, pixelsAux, boxes, text } = batch();
    const run = () => {
      const f = m.encodeFrozen(pixels, kind === 'lowres' ? null : pixelsAux, kind === 'full' ? boxes : null);
      const grads = namedGrads(() => m.loss(f, text).loss, m.trainableWeights('finetune'));
      const l = m.loss(f, text);
      const value = l.loss.dataSync()[0]!;
      l.loss.dispose();
      for (const g of grads.values()) g.dispose();
      disposeFrozen(f);
      return { value, supervised: l.supervisedTokens };
    };
    const first = run();
    expect(Number.isFinite(first.value)).toBe(true);
    expect(first.supervised).toBe(3);
    const before = tf.memory().numTensors;
    run();
    run();
    expect(tf.memory().numTensors).toBe(before);
    const again = new MGLLaVA(m.getConfig(), { rng: new Rng(7) });
    expect([...again.weightMap()].map(([n, v]) => `${n}:${v.shape}`)).toEqual([...m.weightMap()].map(([n, v]) => `${n}:${v.shape}`));
    again.dispose();
    m.dispose();
    tf.dispose([pixels, pixelsAux]);
  });

  it('zero-init fusion leaves the ViT tokens unchanged at step 0', () => {
    const m = new MGLLaVA(tinyConfig('fusion'), { rng: new Rng(3) });
    const { pixels, pixelsAux } = batch();
    const f = m.encodeFrozen(pixels, pixelsAux, null);
    const fused = m.fusion!.apply(f.vit, f.lastMap!);
    expect(tf.max(tf.abs(tf.sub(fused, f.vit))).dataSync()[0]).toBe(0);
    tf.dispose([fused, pixels, pixelsAux]);
    disposeFrozen(f);
    m.dispose();
  });

  it('refuses fusion or objects without the high-resolution encoder, and missing inputs', () => {
    const bad = { ...tinyConfig('lowres'), fusion: { variant: 0 as const, zeroInit: true } };
    expect(() => new MGLLaVA(bad, { rng: new Rng(0) })).toThrow(/high-resolution encoder/);
    const mismatch = tinyConfig('fusion');
    mismatch.visionAux!.imageSize = 64;
    expect(() => new MGLLaVA(mismatch, { rng: new Rng(0) })).toThrow(/2x2 .* 4x4 ViT grid/);
    const m = new MGLLaVA(tinyConfig('full'), { rng: new Rng(0) });
    const { pixels, pixelsAux } = batch();
    expect(() => m.encodeFrozen(pixels, null, null)).toThrow(/pixelsAux is required/);
    expect(() => m.encodeFrozen(pixels, pixelsAux, null)).toThrow(/boxes are required/);
    tf.dispose([pixels, pixelsAux]);
    m.dispose();
  });
});
