import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { PACK_KERNELS } from '../src/backend/kernels/index.js';
import { expectSameOnCpu, ints, rand } from './kernels-compare.js';

const onWasm = process.env.MGLLAVA_BACKEND == null || process.env.MGLLAVA_BACKEND === 'wasm';

describe.runIf(onWasm)('wasm kernel pack: Slice, SplitV, Unpack, Identity', () => {
  it('are the registered wasm kernels', () => {
    for (const k of [tf.Slice, tf.SplitV, tf.Unpack, tf.Identity]) expect(tf.getKernel(k, 'wasm')?.kernelFunc).toBe(PACK_KERNELS[k]);
  });

  const slices: [number[], number[], number[]][] = [
    [[7], [2], [4]],
    [[5, 6], [1, 2], [3, 3]], // short runs
    [[5, 40], [1, 3], [3, 30]], // long runs
    [[4, 5, 6], [0, 1, 0], [4, 3, 6]], // trailing dim whole: runs of 3*6
    [[2, 3, 4, 5], [1, 0, 1, 2], [1, 3, 2, 3]],
    [[2, 3, 4, 5], [0, 0, 0, 0], [2, 3, 4, 5]], // everything
    [[3, 4], [1, 0], [0, 4]], // empty
    [[2, 2, 2, 2, 2, 3], [1, 0, 1, 0, 1, 1], [1, 2, 1, 2, 1, 2]], // rank 6
  ];
  for (const [shape, begin, size] of slices) {
    it(`slice [${shape}] from [${begin}] size [${size}], float32 and int32`, async () => {
      await expectSameOnCpu((x) => [tf.slice(x!, begin, size), tf.slice(tf.cast(tf.mul(x!, 100), 'int32'), begin, size)], [rand(shape, 1)]);
    });
  }

  it('slices bool tensors', async () => {
    await expectSameOnCpu((x) => tf.cast(tf.slice(tf.greater(x!, 0), [1, 1], [2, 2]), 'float32'), [rand([3, 4], 2)]);
  });

  it('splits and unstacks along every axis, and their gradients agree', async () => {
    await expectSameOnCpu((x) => [...tf.split(x!, 2, -1), ...tf.split(x!, [1, 2], 1), ...tf.split(x!, 2, 0)], [rand([4, 3, 6], 4)]);
    await expectSameOnCpu((x) => [...tf.unstack(x!, 0), ...tf.unstack(x!, 2)], [rand([2, 3, 4], 5)]);
    await expectSameOnCpu(
      (x, r) =>
        tf.grad((t: tf.Tensor) => {
          const [a, b] = tf.split(t, 2, -1);
          return tf.sum(tf.mul(tf.concat([tf.neg(b!), a!], -1), r!));
        })(x!),
      [rand([2, 3, 8], 6), rand([2, 3, 8], 7)],
    );
  });

  it('identity shares the data and disposing either side keeps the other intact', async () => {
    await expectSameOnCpu((x, i) => [tf.clone(x!), tf.clone(i!)], [rand([3, 2], 8), ints([2], [4, 5])]);
    const x = tf.tensor1d([1, 2, 3]);
    const y = tf.clone(x);
    x.dispose();
    expect(Array.from(y.dataSync())).toEqual([1, 2, 3]);
    y.dispose();
  });
});
