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

  it('cast to the same dtype shares the data; real casts convert like cpu', async () => {
    // (not float32 -> bool: the stock wasm Cast keeps the value's low byte, 2.5 -> 2, -1.7 -> 255)
    await expectSameOnCpu((x) => [tf.cast(x!, 'float32'), tf.cast(x!, 'int32'), tf.cast(tf.cast(x!, 'int32'), 'int32')], [rand([3, 5], 9)]);
    const x = tf.tensor1d([1.5, 2, 3]);
    const y = tf.cast(x, 'float32');
    x.dispose();
    expect(Array.from(y.dataSync())).toEqual([1.5, 2, 3]);
    y.dispose();
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

describe.runIf(onWasm)('wasm kernel pack: Concat', () => {
  it('is the registered wasm kernel', () => {
    expect(tf.getKernel(tf.Concat, 'wasm')?.kernelFunc).toBe(PACK_KERNELS[tf.Concat]);
  });

  it('joins along every axis (short and long runs, empty parts, float32, int32, bool) like cpu, with its gradient', async () => {
    await expectSameOnCpu(
      (a, b, c) => [
        tf.concat([a!, b!, c!], 0),
        tf.concat([tf.reshape(a!, [4, 3, 2]), tf.reshape(b!, [4, 3, 2])], 1),
        tf.concat([a!, tf.slice(b!, [0, 0], [2, 6]), c!], 0),
        tf.concat([a!, b!], -1),
        tf.concat([tf.zeros([2, 0]), tf.slice(a!, [0, 0], [2, 3])], 1),
        tf.concat([tf.cast(tf.mul(a!, 10), 'int32'), tf.cast(tf.mul(b!, 10), 'int32')], 1),
        tf.cast(tf.concat([tf.greater(a!, 0), tf.greater(b!, 0)], 1), 'float32'),
        tf.concat([tf.tile(a!, [1, 5]), tf.tile(b!, [1, 5])], 1), // runs of 30
      ],
      [rand([4, 6], 1), rand([4, 6], 2), rand([1, 6], 3)],
    );
    await expectSameOnCpu(
      (a, b, r) => tf.grads((x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.mul(tf.concat([x, y], 1), r!)))([a!, b!]),
      [rand([3, 4], 4), rand([3, 2], 5), rand([3, 6], 6)],
    );
  });
});

describe.runIf(onWasm)('wasm kernel pack: GatherV2', () => {
  it('is the registered wasm kernel', () => {
    expect(tf.getKernel(tf.GatherV2, 'wasm')?.kernelFunc).toBe(PACK_KERNELS[tf.GatherV2]);
  });

  it('gathers along every axis, with repeated indices and index tensors of rank 0-2, float32 and int32', async () => {
    const cases: [number, number[], number[]][] = [
      [0, [4], [4, 0, 4, 2]],
      [0, [3, 2], [2, 2, 0, 1, 1, 0]],
      [1, [2, 3], [0, 2, 1, 0, 2, 1]],
      [0, [], [3]],
    ];
    for (const [axis, idxShape, idx] of cases) {
      await expectSameOnCpu(
        (x, i) => [tf.gather(x!, i!, axis), tf.gather(tf.cast(tf.mul(x!, 100), 'int32'), i!, axis)],
        [rand([5, 3, 20], 1), ints(idxShape, idx)],
      );
    }
    await expectSameOnCpu((x, i) => tf.gather(x!, i!, 2), [rand([2, 3, 4, 5], 2), ints([3], [3, 0, 3])]); // short runs
    await expectSameOnCpu((x, i) => tf.gather(x!, i!, 3), [rand([2, 3, 4, 5], 3), ints([2], [4, 1])]); // runs of 1
  });

  it('its gradient (UnsortedSegmentSum) agrees with cpu', async () => {
    await expectSameOnCpu(
      (x, i, r) => tf.grad((t: tf.Tensor) => tf.sum(tf.mul(tf.gather(t, i!), r!)))(x!),
      [rand([6, 16], 4), ints([5], [1, 5, 1, 0, 3]), rand([5, 16], 5)],
    );
  });

  it('rejects an index out of range', () => {
    const x = tf.zeros([3, 2]);
    const i = tf.tensor1d([0, 3], 'int32');
    expect(() => tf.gather(x, i)).toThrow(/index 3 at position 1 is not in \[0, 2\]/);
    tf.dispose([x, i]);
  });

  it('gathers bool tensors', async () => {
    await expectSameOnCpu((x, i) => tf.cast(tf.gather(tf.greater(x!, 0), i!, 1), 'float32'), [rand([3, 4], 6), ints([2], [3, 1])]);
  });
});
