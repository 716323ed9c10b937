import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { causalLmLoss, causalLmLossOnRows, crossEntropySum, IGNORE_INDEX, shiftedTargets } from '../src/model/loss.js';
import { Rng } from '../src/util/rng.js';

const X = IGNORE_INDEX;

/** float64 reference: sum and count of -log softmax(logits[b,t])[labels[b,t+1]] over supervised targets. */
function reference(logits: number[][][], labels: number[][]): { sum: number; count: number; grad: number[][][] } {
  let sum = 0;
  let count = 0;
  const grad = logits.map((r) => r.map((v) => v.map(() => 0)));
  logits.forEach((row, b) =>
    row.forEach((v, t) => {
      const y = labels[b]![t + 1];
      if (y === undefined || y === X) return;
      const m = Math.max(...v);
      const z = v.reduce((a, x) => a + Math.exp(x - m), 0);
      sum += m + Math.log(z) - v[y]!;
      count++;
      v.forEach((x, j) => (grad[b]![t]![j] = Math.exp(x - m) / z - (j === y ? 1 : 0)));
    }),
  );
  return { sum, count, grad };
}

function randomLogits(rng: Rng, b: number, t: number, v: number, scale = 3): number[][][] {
  return Array.from({ length: b }, () => Array.from({ length: t }, () => Array.from({ length: v }, () => (rng.next() * 2 - 1) * scale)));
}

describe('causal LM loss', () => {
  const labels = [
    [X, X, 3, 1, 4],
    [X, 2, X, X, X],
    [X, X, X, 0, 5],
  ];

  it('shifts, ignores -100 and averages over all supervised tokens of the batch', () => {
    const logits = randomLogits(new Rng(1), 3, 5, 6);
    const ref = reference(logits, labels);
    expect(ref.count).toBe(6);
    const x = tf.tensor3d(logits);
    const mean = causalLmLoss(x, labels);
    const sum = causalLmLoss(x, labels, 'sum');
    expect(mean.count).toBe(6);
    expect(sum.count).toBe(6);
    expect(mean.loss.dataSync()[0]).toBeCloseTo(ref.sum / ref.count, 5);
    expect(sum.loss.dataSync()[0]).toBeCloseTo(ref.sum, 4);
    tf.dispose([x, mean.loss, sum.loss]);
  });

  it('has the gradient (softmax - onehot) / count on supervised rows and 0 elsewhere', () => {
    const logits = randomLogits(new Rng(2), 3, 5, 6);
    const ref = reference(logits, labels);
    const x = tf.tensor3d(logits);
    const g = tf.grad((l: tf.Tensor) => causalLmLoss(l, labels).loss)(x);
    const got = g.arraySync() as number[][][];
    got.forEach((row, b) => row.forEach((v, t) => v.forEach((gv, j) => expect(gv).toBeCloseTo(ref.grad[b]![t]![j]! / ref.count, 6))));
    tf.dispose([x, g]);
  });

  it('is stable for huge logits (no overflow, no log of an underflowed probability)', () => {
    const logits = [[[1e4, -1e4, 0], [0, 5e3, -5e3]]];
    const x = tf.tensor3d(logits);
    // target 2 at position 0: -log softmax = 1e4 - 0 = 1e4 exactly up to fp32
    const { loss } = causalLmLoss(x, [[X, 2]]);
    expect(loss.dataSync()[0]).toBeCloseTo(1e4, 0);
    const g = tf.grad((l: tf.Tensor) => causalLmLoss(l, [[X, 2]]).loss)(x);
    expect(g.dataSync().every(Number.isFinite)).toBe(true);
    tf.dispose([x, loss, g]);
  });

  it('gives 0 (not NaN) with zero gradients when no token is supervised', () => {
    const x = tf.tensor3d(randomLogits(new Rng(3), 2, 3, 4));
    const noLabels = [
      [X, X, X],
      [1, X, X], // a label at t = 0 is never a target (nothing predicts it)
    ];
    for (const reduction of ['mean', 'sum'] as const) {
      const { loss, count } = causalLmLoss(x, noLabels, reduction);
      expect(count).toBe(0);
      expect(loss.dataSync()[0]).toBe(0);
      loss.dispose();
    }
    const g = tf.grad((l: tf.Tensor) => causalLmLoss(l, noLabels).loss)(x);
    expect(Array.from(g.dataSync()).every((v) => v === 0)).toBe(true);
    const rows = causalLmLossOnRows(tf.zeros([0, 4]), shiftedTargets(noLabels));
    expect(rows.loss.dataSync()[0]).toBe(0);
    tf.dispose([x, g, rows.loss]);
  });

  it('on supervised rows only gives the same loss (the logitRows path)', () => {
    const logits = randomLogits(new Rng(4), 3, 5, 6);
    const plan = shiftedTargets(labels);
    expect(Array.from(plan.rows)).toEqual([1, 2, 3, 5, 12, 13]);
    expect(Array.from(plan.targets)).toEqual([3, 1, 4, 2, 0, 5]);
    const flat = logits.flat();
    const picked = tf.tensor2d(Array.from(plan.rows, (r) => flat[r]!));
    const x = tf.tensor3d(logits);
    const a = causalLmLoss(x, labels, 'sum');
    const b = causalLmLossOnRows(picked, plan, 'sum');
    expect(b.loss.dataSync()[0]).toBeCloseTo(a.loss.dataSync()[0]!, 5);
    expect(() => causalLmLossOnRows(x.reshape([15, 6]), plan)).toThrow(/one row per supervised token/);
    tf.dispose([x, picked, a.loss, b.loss]);
  });

  it('refuses labels that are neither -100 nor a token id', () => {
    const x = tf.zeros([1, 3, 4]);
    expect(() => causalLmLoss(x, [[X, 4, X]])).toThrow(/labels\[0,1\] = 4/);
    expect(() => causalLmLoss(x, [[X, -200, X]])).toThrow(/-200/);
    expect(() => causalLmLoss(x, [[X, 1]])).toThrow(/do not match/);
    expect(() => crossEntropySum(tf.zeros([2, 4]), Int32Array.from([0, 9]))).toThrow(/outside/);
    x.dispose();
  });

  it('does not leak tensors (forward + backward)', () => {
    const x = tf.variable(tf.randomNormal([2, 4, 5]));
    const run = () => {
      const { value, grads } = tf.variableGrads(() => causalLmLoss(x, [[X, 1, 2, X], [X, X, 3, 4]]).loss, [x]);
      tf.dispose([value, ...Object.values(grads)]);
    };
    run();
    const before = tf.memory().numTensors;
    run();
    expect(tf.memory().numTensors).toBe(before);
    x.dispose();
  });
});
