import { resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { runGolden } from '../src/golden/run.js';
import { RUNNERS } from '../src/golden/pieces/index.js';
import { Projector, projectorConfigFrom } from '../src/model/projector.js';
import { Rng } from '../src/util/rng.js';

const GOLDEN = resolve(import.meta.dirname, '../../shared/golden/public');
const shapes = (m: Projector) => [...m.namedWeights()].map(([n, v]) => [n, v.shape]);

describe('Projector', () => {
  it('matches the golden forward and gradients', async () => {
    const report = await runGolden(GOLDEN, RUNNERS, ['projector']);
    const p = report.pieces.projector!;
    expect(p.reason ?? '').toBe('');
    expect(p.ok).toBe(true);
    expect(p.checks.map((c) => c.name)).toContain('grad_input.x');
  });

  it('names its Linears model.0, model.2, ... for any depth', () => {
    const one = new Projector({ inDim: 5, outDim: 7, depth: 1 }, { rng: new Rng(1) });
    expect(shapes(one)).toEqual([
      ['model.0.weight', [7, 5]],
      ['model.0.bias', [7]],
    ]);
    const three = new Projector({ inDim: 5, outDim: 7, depth: 3, bias: false }, { rng: new Rng(1) });
    expect(shapes(three)).toEqual([
      ['model.0.weight', [7, 5]],
      ['model.2.weight', [7, 7]],
      ['model.4.weight', [7, 7]],
    ]);
    tf.tidy(() => {
      expect(one.apply(tf.ones([2, 3, 5])).shape).toEqual([2, 3, 7]);
      expect(three.apply(tf.ones([4, 5])).shape).toEqual([4, 7]);
    });
    one.dispose();
    three.dispose();
  });

  it('depth 1 is a single Linear (no activation)', () => {
    const m = new Projector({ inDim: 3, outDim: 2, depth: 1 }, { rng: new Rng(2) });
    tf.tidy(() => {
      const x = tf.tensor2d([[-3, 0.5, 2]]);
      const expected = tf.add(tf.matMul(x, m.linears[0]!.weight, false, true), m.linears[0]!.bias!);
      expect(Array.from(m.apply(x).dataSync())).toEqual(Array.from(expected.dataSync()));
    });
    m.dispose();
  });

  it('round-trips its config', () => {
    const m = new Projector(projectorConfigFrom({ in_dim: 6, out_dim: 4, depth: 2 }), { rng: new Rng(3) });
    expect(m.getConfig()).toEqual({ inDim: 6, outDim: 4, depth: 2, bias: true });
    const again = new Projector(m.getConfig(), { rng: new Rng(4), skipInit: true });
    expect(shapes(again)).toEqual(shapes(m));
    m.dispose();
    again.dispose();
  });

  it('does not leak tensors in forward + backward', () => {
    const m = new Projector({ inDim: 6, outDim: 4, depth: 2 }, { rng: new Rng(5) });
    const before = tf.memory().numTensors;
    tf.tidy(() => {
      const x = tf.randomNormal([2, 3, 6]);
      const { value, grads } = tf.variableGrads(() => tf.sum(m.apply(x)) as tf.Scalar, [...m.weightMap().values()]);
      expect(value.dataSync()[0]).toBeTypeOf('number');
      expect(Object.keys(grads)).toHaveLength(4);
    });
    expect(tf.memory().numTensors).toBe(before);
    m.dispose();
  });

  it('rejects a wrong input width and bad configs', () => {
    const m = new Projector({ inDim: 6, outDim: 4, depth: 2 }, { rng: new Rng(6) });
    tf.tidy(() => {
      expect(() => m.apply(tf.ones([2, 5]))).toThrow(/expected last axis 6/);
    });
    m.dispose();
    expect(() => new Projector({ inDim: 6, outDim: 4, depth: 0 }, { rng: new Rng(0) })).toThrow(/depth/);
    expect(() => projectorConfigFrom({ in_dim: 6 })).toThrow(/out_dim/);
  });
});
