import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { PACK_KERNELS } from '../src/backend/kernels/index.js';
import { expectSameOnCpu, rand } from './kernels-compare.js';

const onWasm = process.env.MGLLAVA_BACKEND == null || process.env.MGLLAVA_BACKEND === 'wasm';

describe.runIf(onWasm)('wasm kernel pack: Sum over leading axes', () => {
  it('is the registered wasm kernel', () => {
    expect(tf.getKernel(tf.Sum, 'wasm')?.kernelFunc).toBe(PACK_KERNELS[tf.Sum]);
  });

  it('sums over leading axes (keepDims or not) like cpu, and hands other reductions to the stock kernel', async () => {
    await expectSameOnCpu(
      (x) => [
        tf.sum(x!, 0),
        tf.sum(x!, [0, 1]),
        tf.sum(x!, [1, 0], true),
        tf.sum(x!, -1),
        tf.sum(x!, 1),
        tf.sum(x!),
        tf.sum(tf.reshape(x!, [6, 20]), 0),
        tf.sum(tf.cast(tf.mul(x!, 10), 'int32'), 0),
      ],
      [rand([2, 3, 20], 1)],
    );
  });

  it('gives the gradient of a broadcast add (a bias) like cpu', async () => {
    await expectSameOnCpu((x, b) => tf.grad((t: tf.Tensor) => tf.sum(tf.square(tf.add(x!, t))))(b!), [rand([5, 7, 6], 2), rand([6], 3)]);
  });
});
