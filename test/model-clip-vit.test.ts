import { resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { runGolden } from '../src/golden/run.js';
import { RUNNERS } from '../src/golden/pieces/index.js';
import { ClipVit, clipVitConfigFromHf, type ClipVitConfig } from '../src/model/vision/clip-vit.js';
import { Rng } from '../src/util/rng.js';

const GOLDEN = resolve(import.meta.dirname, '../../shared/golden/public');
const shapes = (m: ClipVit) => [...m.namedWeights()].map(([n, v]) => [n, v.shape]);

/** 28 px / patch 7 -> 4x4 grid, 3 layers, last layer selected. */
const SMALL: ClipVitConfig = {
  imageSize: 28,
  patchSize: 7,
  hiddenSize: 12,
  intermediateSize: 24,
  numLayers: 3,
  numHeads: 3,
  layerNormEps: 1e-5,
  numChannels: 3,
  selectLayer: -1,
  dropCls: true,
};

describe('ClipVit', () => {
  it('matches the golden hidden states and features', async () => {
    const report = await runGolden(GOLDEN, RUNNERS, ['clip_vit']);
    const p = report.pieces.clip_vit!;
    expect(p.reason ?? '').toBe('');
    expect(p.ok).toBe(true);
    expect(p.checks.map((c) => c.name)).toContain('output.features (stop at selected layer)');
  });

  it('maps an HF config.json, filling HF defaults for omitted keys', () => {
    // The shape of openai/clip-vit-large-patch14-336's config.json: a CLIPConfig with vision_config.
    const hf = {
      architectures: ['CLIPModel'],
      text_config: { hidden_size: 768 },
      vision_config: { hidden_size: 1024, image_size: 336, intermediate_size: 4096, num_attention_heads: 16, num_hidden_layers: 24, patch_size: 14, projection_dim: 768 },
    };
    expect(clipVitConfigFromHf(hf)).toEqual({
      imageSize: 336,
      patchSize: 14,
      hiddenSize: 1024,
      intermediateSize: 4096,
      numLayers: 24,
      numHeads: 16,
      layerNormEps: 1e-5,
      numChannels: 3,
      selectLayer: -2,
      dropCls: true,
    });
    expect(clipVitConfigFromHf({ ...hf, mm_vision_select_layer: -1, mm_vision_select_feature: 'cls_patch' })).toMatchObject({ selectLayer: -1, dropCls: false });
    expect(() => clipVitConfigFromHf({ hidden_act: 'gelu' })).toThrow(/quick_gelu/);
    expect(() => clipVitConfigFromHf({ hidden_size: 10, num_attention_heads: 3 })).toThrow(/multiple of numHeads/);
  });

  it('runs another config (patch 7, 3 layers, select -1) with the right shapes', () => {
    const m = new ClipVit(SMALL, { rng: new Rng(1) });
    expect(m.selectedHiddenState).toBe(3);
    expect(m.weightMap().get('vision_model.embeddings.position_embedding.weight')!.shape).toEqual([17, 12]);
    tf.tidy(() => {
      const px = tf.randomNormal([2, 28, 28, 3]) as tf.Tensor4D;
      const out = m.apply(px, { outputHiddenStates: true });
      expect(out.features.shape).toEqual([2, 16, 12]);
      expect(out.hiddenStates!.map((h) => h.shape)).toEqual(Array(4).fill([2, 17, 12]));
      const lastNoCls = out.hiddenStates![3]!.slice([0, 1, 0], [-1, -1, -1]);
      expect(tf.max(tf.abs(tf.sub(lastNoCls, out.features))).dataSync()[0]).toBe(0);
      expect(m.apply(px).hiddenStates).toBeUndefined();
    });
    m.dispose();
  });

  it('never runs layers after the selected one (select -2: the last layer is dead weight)', () => {
    const m = new ClipVit({ ...SMALL, selectLayer: -2, dropCls: false }, { rng: new Rng(2) });
    tf.tidy(() => {
      const px = tf.randomNormal([1, 28, 28, 3]) as tf.Tensor4D;
      const before = m.apply(px).features;
      expect(before.shape).toEqual([1, 17, 12]); // CLS kept
      for (const [name, v] of m.namedWeights()) if (name.includes('layers.2.') || name.includes('post_layernorm')) v.assign(tf.fill(v.shape, NaN));
      const after = m.apply(px).features;
      expect(Array.from(after.dataSync())).toEqual(Array.from(before.dataSync()));
    });
    m.dispose();
  });

  it('accepts an image size that is not a multiple of the patch (torch conv floors)', () => {
    const m = new ClipVit({ ...SMALL, imageSize: 30 }, { rng: new Rng(3) });
    tf.tidy(() => {
      expect(m.apply(tf.zeros([1, 30, 30, 3]) as tf.Tensor4D).features.shape).toEqual([1, 16, 12]);
    });
    m.dispose();
  });

  it('round-trips its config', () => {
    const m = new ClipVit(SMALL, { rng: new Rng(4) });
    expect(m.getConfig()).toEqual(SMALL);
    const again = new ClipVit(m.getConfig(), { rng: new Rng(5), skipInit: true });
    expect(shapes(again)).toEqual(shapes(m));
    expect(shapes(m).map(([n]) => n)).toContain('vision_model.post_layernorm.weight');
    m.dispose();
    again.dispose();
  });

  it('does not leak tensors in forward + backward', () => {
    const m = new ClipVit(SMALL, { rng: new Rng(6) });
    const before = tf.memory().numTensors;
    tf.tidy(() => {
      const px = tf.randomNormal([2, 28, 28, 3]) as tf.Tensor4D;
      // post_layernorm is never used, so it has no gradient
      const vars = [...m.namedWeights()].filter(([n]) => !n.includes('post_layernorm')).map(([, v]) => v);
      const g = tf.grads(() => tf.sum(tf.square(m.apply(px).features)))([px, ...vars]);
      expect(g).toHaveLength(vars.length + 1);
      expect(g[0]!.shape).toEqual([2, 28, 28, 3]);
      expect(Number.isFinite(tf.sum(tf.abs(g[0]!)).dataSync()[0])).toBe(true);
    });
    expect(tf.memory().numTensors).toBe(before);
    m.dispose();
  });

  it('rejects wrong inputs and configs with clear errors', () => {
    const m = new ClipVit(SMALL, { rng: new Rng(7) });
    tf.tidy(() => {
      expect(() => m.apply(tf.zeros([1, 3, 28, 28]) as tf.Tensor4D)).toThrow(/expected pixels \[B,28,28,3\] \(NHWC\)/);
    });
    m.dispose();
    expect(() => new ClipVit({ ...SMALL, selectLayer: 4 }, { rng: new Rng(0) })).toThrow(/selectLayer 4 is out of range/);
    expect(() => new ClipVit({ ...SMALL, selectLayer: -5 }, { rng: new Rng(0) })).toThrow(/out of range/);
  });
});
