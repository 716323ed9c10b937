import { resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { runGolden } from '../src/golden/run.js';
import { RUNNERS } from '../src/golden/pieces/index.js';
import { ConvGateFusion, type ConvGateFusionConfig, type FusionVariant } from '../src/model/fusion.js';
import { Rng } from '../src/util/rng.js';

const GOLDEN = resolve(import.meta.dirname, '../../shared/golden/public');
const shapes = (m: ConvGateFusion) => [...m.namedWeights()].map(([n, v]) => [n, v.shape]);

function build(variant: FusionVariant, zeroInit = true, D = 8, C = 12, seed = 3): ConvGateFusion {
  return new ConvGateFusion({ lowDim: D, highDim: C, variant, zeroInit }, { rng: new Rng(seed) });
}

function inputs(B: number, S: number, D: number, C: number, seed = 7): { low: tf.Tensor3D; high: tf.Tensor4D } {
  return {
    low: tf.randomNormal([B, S * S, D], 0, 1, 'float32', seed) as tf.Tensor3D,
    high: tf.randomNormal([B, S, S, C], 0, 1, 'float32', seed + 1) as tf.Tensor4D,
  };
}

describe('ConvGateFusion', () => {
  it('matches the golden forward, intermediates and gradients of all four variants', async () => {
    const names = ['fuse_v0', 'fuse_v1', 'fuse_v2', 'fuse_v3'];
    const report = await runGolden(GOLDEN, RUNNERS, names);
    for (const n of names) {
      const p = report.pieces[n]!;
      expect(p.reason ?? '', n).toBe('');
      expect(p.ok, n).toBe(true);
    }
    const v0 = report.pieces.fuse_v0!.checks.map((c) => c.name);
    expect(v0).toEqual(expect.arrayContaining(['intermediate.gate_tanh', 'grad.fuse_module.fast_conv.weight', 'grad_input.high']));
  });

  it('has the checkpoint names and shapes, and outDim, per variant', () => {
    const v0 = build(0);
    expect(shapes(v0)).toEqual([
      ['slow_conv.weight', [12, 12, 1, 1]],
      ['slow_conv.bias', [12]],
      ['slow_proj.weight', [8, 12, 1, 1]],
      ['slow_proj.bias', [8]],
      ['fast_conv.weight', [8, 1, 7, 7]],
      ['fast_conv.bias', [8]],
      ['fast_proj.weight', [8, 8, 1, 1]],
      ['fast_proj.bias', [8]],
      ['gate.0.weight', [4, 16]],
      ['gate.0.bias', [4]],
      ['gate.2.weight', [1, 4]],
      ['gate.2.bias', [1]],
    ]);
    const v2 = build(2);
    const v3 = build(3);
    expect(shapes(v2).map(([n]) => n)).not.toContain('gate.0.weight');
    expect(shapes(v2)).toHaveLength(8);
    expect(shapes(v3)).toEqual([]);
    expect([v0.outDim, build(1).outDim, v2.outDim, v3.outDim]).toEqual([8, 16, 16, 20]);
    tf.tidy(() => {
      const { low, high } = inputs(2, 3, 8, 12);
      for (const v of [0, 1, 2, 3] as FusionVariant[]) {
        const m = build(v, false);
        expect(m.apply(low, high).shape).toEqual([2, 9, m.outDim]);
        m.dispose();
      }
    });
    for (const m of [v0, v2, v3]) m.dispose();
  });

  it('getConfig() rebuilds the same weight names and shapes', () => {
    for (const v of [0, 1, 2, 3] as FusionVariant[]) {
      const a = build(v, false);
      const cfg: ConvGateFusionConfig = a.getConfig();
      const b = new ConvGateFusion(cfg, { rng: new Rng(0), skipInit: true });
      expect(shapes(b)).toEqual(shapes(a));
      expect(b.outDim).toBe(a.outDim);
      a.dispose();
      b.dispose();
    }
  });

  it('follows the official init: xavier convs, zero biases, zero projections with zeroInit', () => {
    const m = build(0, true, 16, 24);
    const w = m.weightMap();
    const absMax = (n: string) => tf.tidy(() => w.get(n)!.abs().max().dataSync()[0]!);
    for (const n of ['slow_conv.bias', 'slow_proj.bias', 'fast_conv.bias', 'fast_proj.bias', 'slow_proj.weight', 'fast_proj.weight']) {
      expect(absMax(n), n).toBe(0);
    }
    // xavier bounds: sqrt(6 / (fan_in + fan_out))
    expect(absMax('slow_conv.weight')).toBeLessThanOrEqual(Math.sqrt(6 / 48));
    expect(absMax('slow_conv.weight')).toBeGreaterThan(0.5 * Math.sqrt(6 / 48));
    expect(absMax('fast_conv.weight')).toBeLessThanOrEqual(Math.sqrt(6 / (49 + 16 * 49)));
    // gate: torch default U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    expect(absMax('gate.0.weight')).toBeLessThanOrEqual(1 / Math.sqrt(32));
    expect(absMax('gate.0.bias')).toBeGreaterThan(0);
    m.dispose();
  });

  it('is the identity at zero init, and only slow_proj/fast_proj get gradient in the first backward', () => {
    const m = build(0, true);
    const { low, high } = inputs(2, 4, 8, 12);
    const lw = tf.randomNormal([2, 16, 8], 0, 1, 'float32', 11);
    const out = m.apply(low, high);
    expect(tf.tidy(() => tf.sub(out, low).abs().max().dataSync()[0])).toBe(0);
    const vars = m.weightMap();
    const { value, grads } = tf.variableGrads(() => tf.sum(tf.mul(m.apply(low, high), lw)) as tf.Scalar, [...vars.values()]);
    for (const [name, v] of vars) {
      const g = tf.tidy(() => grads[v.name]!.abs().max().dataSync()[0]!);
      if (name.startsWith('slow_proj.') || name.startsWith('fast_proj.')) expect(g, name).toBeGreaterThan(0);
      else expect(g, name).toBe(0);
    }
    tf.dispose([value, out, low, high, lw, ...Object.values(grads)]);
    m.dispose();
  });

  it('does not leak tensors in forward + backward', () => {
    for (const v of [0, 1, 2, 3] as FusionVariant[]) {
      const m = build(v, false);
      const { low, high } = inputs(2, 4, 8, 12);
      const before = tf.memory().numTensors;
      tf.tidy(() => {
        const f = (lo: tf.Tensor, hi: tf.Tensor) => tf.sum(tf.square(m.apply(lo as tf.Tensor3D, hi as tf.Tensor4D))) as tf.Scalar;
        const [gl, gh] = tf.grads(f)([low, high]);
        expect(gl!.shape).toEqual(low.shape);
        expect(gh!.shape).toEqual(high.shape);
        if (v !== 3) tf.variableGrads(() => f(low, high));
        const r = m.forward(low, high);
        expect(r.hi === null).toBe(v === 3);
        expect(r.gateTanh === null).toBe(v >= 2);
      });
      expect(tf.memory().numTensors).toBe(before);
      tf.dispose([low, high]);
      m.dispose();
    }
  });

  it('rejects mismatched inputs with clear errors', () => {
    const m = build(0);
    tf.tidy(() => {
      const low = tf.zeros([2, 16, 8]) as tf.Tensor3D;
      expect(() => m.apply(low, tf.zeros([2, 3, 5, 12]) as tf.Tensor4D)).toThrow(/15 positions but there are 16 tokens/);
      expect(() => m.apply(low, tf.zeros([2, 4, 4, 13]) as tf.Tensor4D)).toThrow(/NHWC map \[B,H,W,12\]/);
      expect(() => m.apply(low, tf.zeros([1, 4, 4, 12]) as tf.Tensor4D)).toThrow(/batch/);
      expect(() => m.apply(tf.zeros([2, 12, 8]) as tf.Tensor3D, tf.zeros([2, 3, 4, 12]) as tf.Tensor4D)).toThrow(/square grid/);
    });
    expect(() => new ConvGateFusion({ lowDim: 7, highDim: 4, variant: 0, zeroInit: true }, { rng: new Rng(0) })).toThrow(/odd/);
    expect(() => new ConvGateFusion({ lowDim: 8, highDim: 4, variant: 5 as FusionVariant, zeroInit: true }, { rng: new Rng(0) })).toThrow(/variant/);
    m.dispose();
  });
});
