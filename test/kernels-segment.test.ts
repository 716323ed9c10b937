import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { expectSameOnCpu, ints, rand } from './kernels-compare.js';

const onWasm = process.env.MGLLAVA_BACKEND == null || process.env.MGLLAVA_BACKEND === 'wasm';

describe.runIf(onWasm)('wasm kernel pack: UnsortedSegmentSum', () => {
  it('gives the gradient of an embedding lookup (gather on axis 0, repeated ids)', async () => {
    await expectSameOnCpu(
      (table, ids, r) => tf.grad((t: tf.Tensor) => tf.sum(tf.mul(tf.gather(t, ids!), r!)))(table!),
      [rand([50, 8], 1), ints([2, 7], [3, 3, 0, 49, 7, 3, 12, 0, 1, 1, 2, 3, 4, 49]), rand([2, 7, 8], 2)],
    );
  });

  it('gives the gradient of gather on an inner axis and of a 1-row table', async () => {
    await expectSameOnCpu(
      (x, ids, r) => tf.grad((t: tf.Tensor) => tf.sum(tf.mul(tf.gather(t, ids!, 1), r!)))(x!),
      [rand([3, 6, 4], 3), ints([5], [5, 0, 5, 2, 1]), rand([3, 5, 4], 4)],
    );
    await expectSameOnCpu(
      (x, ids, r) => tf.grad((t: tf.Tensor) => tf.sum(tf.mul(tf.gather(t, ids!), r!)))(x!),
      [rand([1, 3], 5), ints([4], [0, 0, 0, 0]), rand([4, 3], 6)],
    );
  });

  it('direct calls: float32 and int32, ids out of range dropped as on cpu', async () => {
    const ids = ints([6], [2, -1, 0, 2, 7, 1]);
    await expectSameOnCpu((x, s) => tf.unsortedSegmentSum(x!, s as tf.Tensor1D, 4), [rand([6, 3, 2], 7), ids]);
    const xi: typeof ids = { shape: [6], dtype: 'int32', data: Int32Array.from([1, 2, 3, 4, 5, 6]) };
    const out = tf.tidy(() => tf.unsortedSegmentSum(tf.tensor1d(xi.data, 'int32'), tf.tensor1d(ids.data, 'int32'), 3));
    expect(out.dtype).toBe('int32');
    expect(Array.from(out.dataSync())).toEqual([3, 6, 5]);
    out.dispose();
  });

  it('accepts segment ids of higher rank (a prefix of x shape)', () => {
    const out = tf.tidy(() =>
      tf.engine().runKernel(
        tf.UnsortedSegmentSum,
        { x: tf.tensor3d([[[1, 2], [3, 4]], [[5, 6], [7, 8]]]), segmentIds: tf.tensor2d([[1, 0], [1, 1]], undefined, 'int32') },
        { numSegments: 2 },
      ) as tf.Tensor,
    );
    expect(out.shape).toEqual([2, 2]);
    expect(Array.from(out.dataSync())).toEqual([3, 4, 13, 16]);
    out.dispose();
  });
});
