import { resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { runGolden } from '../src/golden/run.js';
import { RUNNERS } from '../src/golden/pieces/index.js';
import { ConvNext, concatStages, convNextConfigFrom, type ConvNextConfig } from '../src/model/vision/convnext.js';
import { resizeBilinearHalfPixel } from '../src/nn/resize.js';
import { Rng } from '../src/util/rng.js';

const GOLDEN = resolve(import.meta.dirname, '../../shared/golden/public');
const shapes = (m: ConvNext) => [...m.namedWeights()].map(([n, v]) => [n, v.shape]);

/** 32 px -> stage maps 8x8, 4x4, 2x2; a stage with no blocks (downsample only). */
const SMALL: ConvNextConfig = { dims: [4, 8, 12], depths: [1, 2, 0], layerNormEps: 1e-6, imageSize: 32, inChannels: 3 };

// The backward pass of the 7x7 depthwise conv needs these kernels (the wasm kernel pack adds them).
const BACKWARD_KERNELS = ['DepthwiseConv2dNativeBackpropInput', 'DepthwiseConv2dNativeBackpropFilter'];
const missingKernels = BACKWARD_KERNELS.filter((k) => !tf.getKernel(k, tf.getBackend()));
const backwardTitle = missingKernels.length ? ` [SKIPPED on ${tf.getBackend()}: no ${missingKernels.join(', ')}]` : '';

describe('ConvNext', () => {
  it('matches the golden stage maps and concat map', async () => {
    const report = await runGolden(GOLDEN, RUNNERS, ['convnext']);
    const p = report.pieces.convnext!;
    expect(p.reason ?? '').toBe('');
    expect(p.ok).toBe(true);
    expect(p.checks.map((c) => c.name)).toContain('output.concat');
  });

  it('maps open_clip / timm configs', () => {
    const openClip = { embed_dim: 768, vision_cfg: { timm_model_name: 'convnext_large', timm_pool: '', image_size: 320 } };
    expect(convNextConfigFrom(openClip, { imageSize: 768 })).toEqual({
      dims: [192, 384, 768, 1536],
      depths: [3, 3, 27, 3],
      layerNormEps: 1e-6,
      imageSize: 768,
      inChannels: 3,
    });
    expect(convNextConfigFrom({ timm_model_name: 'convnext_xxlarge.clip_laion2b', image_size: 256 }).layerNormEps).toBe(1e-5);
    expect(convNextConfigFrom({ dims: [8, 16], depths: [1, 1], image: 64, layer_norm_eps: 1e-6 })).toEqual({
      dims: [8, 16],
      depths: [1, 1],
      layerNormEps: 1e-6,
      imageSize: 64,
      inChannels: 3,
    });
    expect(() => convNextConfigFrom({ timm_model_name: 'convnext_atto', image_size: 224 })).toThrow(/unknown timm_model_name/);
    expect(() => convNextConfigFrom({ dims: [8, 16], depths: [1], image: 64 })).toThrow(/one entry per stage/);
    expect(() => convNextConfigFrom({ dims: [8, 16], depths: [1, 1] })).toThrow(/image_size/);
  });

  it('has timm names and returns every stage, the last map and the optional concat (NHWC)', () => {
    const m = new ConvNext(SMALL, { rng: new Rng(1) });
    const names = shapes(m).map(([n]) => n as string);
    expect(names.filter((n) => n.startsWith('stages.0.downsample'))).toEqual([]);
    expect(names).toContain('stages.1.downsample.1.weight');
    expect(names).toContain('stages.2.downsample.0.bias');
    expect(names).toContain('stages.1.blocks.1.mlp.fc2.bias');
    expect(m.weightMap().get('stages.0.blocks.0.conv_dw.weight')!.shape).toEqual([4, 1, 7, 7]);
    tf.tidy(() => {
      const px = tf.randomNormal([2, 32, 32, 3]) as tf.Tensor4D;
      const out = m.apply(px);
      expect(out.stages.map((s) => s.shape)).toEqual([
        [2, 8, 8, 4],
        [2, 4, 4, 8],
        [2, 2, 2, 12],
      ]);
      expect(out.last).toBe(out.stages[2]);
      expect(out.concat!.shape).toEqual([2, 8, 8, 24]);
      expect(m.apply(px, { concat: false }).concat).toBeUndefined();
    });
    m.dispose();
  });

  it('resizes like torch bilinear align_corners=False (half-pixel centres, edges clamped)', () => {
    tf.tidy(() => {
      const s0 = tf.zeros([1, 4, 4, 1]) as tf.Tensor4D;
      const s1 = tf.tensor4d([1, 3, 5, 7], [1, 2, 2, 1]); // rows [1,3], [5,7]
      const up = concatStages([s0, s1]).slice([0, 0, 0, 1], [1, 4, 4, 1]).reshape([4, 4]);
      // torch: source coordinate (dst + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped into [0, 1]
      const w = [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]];
      const src = [[1, 3], [5, 7]];
      const expected = w.map(([ra, rb]) => w.map(([ca, cb]) => ra! * (ca! * src[0]![0]! + cb! * src[0]![1]!) + rb! * (ca! * src[1]![0]! + cb! * src[1]![1]!)));
      const got = up.arraySync() as number[][];
      got.forEach((row, i) => row.forEach((v, j) => expect(v).toBeCloseTo(expected[i]![j]!, 6)));
    });
  });

  it('back-propagates through the half-pixel resize exactly (tfjs ResizeBilinearGrad ignores halfPixelCenters)', () => {
    for (const [ih, iw, oh, ow] of [
      [3, 3, 7, 5],
      [6, 5, 3, 2],
    ] as const) {
      tf.tidy(() => {
        const x = tf.randomNormal([2, ih, iw, 3], 0, 1, 'float32', 1) as tf.Tensor4D;
        const w = tf.randomNormal([2, oh, ow, 3], 0, 1, 'float32', 2);
        // The op is linear, so d sum(resize(x) * w) / dx[i] = sum(resize(e_i) * w) exactly.
        const f = (t: tf.Tensor) => tf.sum(tf.mul(resizeBilinearHalfPixel(t as tf.Tensor4D, [oh, ow]), w));
        const g = tf.grad(f)(x).dataSync();
        for (const i of [0, 7, x.size - 1]) {
          const e = new Float32Array(x.size);
          e[i] = 1;
          expect(g[i]).toBeCloseTo(f(tf.tensor4d(e, x.shape)).dataSync()[0]!, 5);
        }
        // forward = tfjs' half-pixel kernel
        expect(tf.max(tf.abs(tf.sub(resizeBilinearHalfPixel(x, [oh, ow]), tf.image.resizeBilinear(x, [oh, ow], false, true)))).dataSync()[0]).toBe(0);
      });
    }
  });

  it('round-trips its config', () => {
    const m = new ConvNext(SMALL, { rng: new Rng(2) });
    expect(m.getConfig()).toEqual(SMALL);
    const again = new ConvNext(m.getConfig(), { rng: new Rng(3), skipInit: true });
    expect(shapes(again)).toEqual(shapes(m));
    m.dispose();
    again.dispose();
  });

  it('does not leak tensors in forward', () => {
    const m = new ConvNext(SMALL, { rng: new Rng(4) });
    const before = tf.memory().numTensors;
    tf.tidy(() => {
      m.apply(tf.randomNormal([1, 32, 32, 3]) as tf.Tensor4D);
    });
    expect(tf.memory().numTensors).toBe(before);
    m.dispose();
  });

  it.skipIf(missingKernels.length > 0)(`has gradients w.r.t. input and weights, matching finite differences, leak-free${backwardTitle}`, () => {
    const m = new ConvNext({ dims: [4, 8], depths: [1, 1], layerNormEps: 1e-6, imageSize: 16, inChannels: 3 }, { rng: new Rng(5) });
    // Non-tiny layer scale so the blocks matter to the gradient.
    for (const [n, v] of m.namedWeights()) if (n.endsWith('gamma')) v.assign(tf.fill(v.shape, 0.5));
    const before = tf.memory().numTensors;
    tf.tidy(() => {
      const px = tf.randomNormal([1, 16, 16, 3], 0, 1, 'float32', 7) as tf.Tensor4D;
      const wConcat = tf.randomNormal([1, 4, 4, 12], 0, 1, 'float32', 8);
      const wLast = tf.randomNormal([1, 2, 2, 8], 0, 1, 'float32', 9);
      const loss = (x: tf.Tensor) =>
        tf.tidy(() => {
          const out = m.apply(x as tf.Tensor4D);
          return tf.add(tf.sum(tf.mul(out.concat!, wConcat)), tf.sum(tf.mul(out.last, wLast))) as tf.Scalar;
        });
      const vars = [...m.weightMap().values()];
      const g = tf.grads(loss)([px, ...vars]);
      expect(g.every((t) => Number.isFinite(tf.sum(tf.abs(t)).dataSync()[0]) && tf.sum(tf.abs(t)).dataSync()[0]! > 0)).toBe(true);
      // central differences at a few pixels (float32: loose tolerance)
      const gx = g[0]!.dataSync();
      const base = px.dataSync();
      const eps = 1e-2;
      for (const i of [0, 100, 400, 767]) {
        const plus = Float32Array.from(base);
        const minus = Float32Array.from(base);
        plus[i]! += eps;
        minus[i]! -= eps;
        const fd = (loss(tf.tensor4d(plus, px.shape)).dataSync()[0]! - loss(tf.tensor4d(minus, px.shape)).dataSync()[0]!) / (2 * eps);
        expect(Math.abs(fd - gx[i]!)).toBeLessThan(2e-2 * Math.max(1, Math.abs(gx[i]!)));
      }
      // and at a few weights, including the depthwise 7x7 and the patch convs
      const names = [...m.weightMap().keys()];
      for (const [name, i] of [['stem.0.weight', 5], ['stages.0.blocks.0.conv_dw.weight', 24], ['stages.1.blocks.0.conv_dw.weight', 3], ['stages.1.downsample.1.weight', 2]] as const) {
        const v = m.weightMap().get(name)!;
        const analytic = g[1 + names.indexOf(name)]!.dataSync()[i]!;
        const orig = v.dataSync().slice();
        const at = (delta: number) => {
          const w = orig.slice();
          w[i]! += delta;
          v.assign(tf.tensor(w, v.shape));
          return loss(px).dataSync()[0]!;
        };
        const fd = (at(eps) - at(-eps)) / (2 * eps);
        v.assign(tf.tensor(orig, v.shape));
        expect(Math.abs(fd - analytic), name).toBeLessThan(2e-2 * Math.max(1, Math.abs(analytic)));
      }
    });
    expect(tf.memory().numTensors).toBe(before);
    m.dispose();
  });

  it('rejects wrong inputs and configs with clear errors', () => {
    const m = new ConvNext(SMALL, { rng: new Rng(6) });
    tf.tidy(() => {
      expect(() => m.apply(tf.zeros([1, 3, 32, 32]) as tf.Tensor4D)).toThrow(/expected pixels \[B,32,32,3\] \(NHWC\)/);
    });
    m.dispose();
    expect(() => new ConvNext({ ...SMALL, imageSize: 8 }, { rng: new Rng(0) })).toThrow(/total stride 16/);
  });
});
