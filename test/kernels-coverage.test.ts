// Gradients of ops a LLaMA-style decoder or a conv net needs, checked on wasm (with the pack)
// against cpu: the stock wasm kernels these rely on (gather, ResizeBilinearGrad, AvgPoolGrad, Prod,
// Cumsum, Erf, Tile, PadV2, StridedSlice, MaxPoolGrad) are correct.
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { expectSameOnCpu, ints, rand } from './kernels-compare.js';

const onWasm = process.env.MGLLAVA_BACKEND == null || process.env.MGLLAVA_BACKEND === 'wasm';
const g1 = (f: (x: tf.Tensor) => tf.Tensor) => (x?: tf.Tensor, r?: tf.Tensor) => tf.grad((t: tf.Tensor) => tf.sum(tf.mul(f(t), r!)))(x!);

describe.runIf(onWasm)('stock wasm gradients used in training', () => {
  const cases: [string, number[], number[], (x: tf.Tensor) => tf.Tensor][] = [
    // Square inputs: the cpu ResizeBilinearGrad returns [B, W, H, C] (see the non-square test below).
    ['resizeBilinear (up, align corners off)', [2, 5, 5, 3], [2, 10, 14, 3], (x) => tf.image.resizeBilinear(x as tf.Tensor4D, [10, 14])],
    ['resizeBilinear (down, align corners)', [1, 9, 9, 2], [1, 4, 3, 2], (x) => tf.image.resizeBilinear(x as tf.Tensor4D, [4, 3], true)],
    ['resizeBilinear (down, half pixel centers)', [1, 9, 9, 2], [1, 4, 3, 2], (x) => tf.image.resizeBilinear(x as tf.Tensor4D, [4, 3], false, true)],
    ['avgPool 2x2 s2', [2, 6, 6, 3], [2, 3, 3, 3], (x) => tf.avgPool(x as tf.Tensor4D, 2, 2, 'valid')],
    ['avgPool 3x3 s1 same', [1, 5, 4, 2], [1, 5, 4, 2], (x) => tf.avgPool(x as tf.Tensor4D, 3, 1, 'same')],
    ['maxPool 2x2 s2', [1, 6, 6, 2], [1, 3, 3, 2], (x) => tf.maxPool(x as tf.Tensor4D, 2, 2, 'valid')],
    ['prod over an axis', [3, 4], [3], (x) => tf.prod(tf.add(x, 2), 1)],
    ['cumsum (exclusive, reverse)', [3, 5], [3, 5], (x) => tf.cumsum(x, 1, true, true)],
    ['erf', [4, 5], [4, 5], (x) => tf.erf(x)],
    ['tile', [2, 3], [4, 9], (x) => tf.tile(x, [2, 3])],
    ['pad', [2, 3], [5, 4], (x) => tf.pad(x, [[1, 2], [0, 1]], 0)],
    ['slice', [4, 6], [2, 3], (x) => tf.slice(x, [1, 2], [2, 3])],
    ['gather forward + grad', [6, 4], [3, 4], (x) => tf.gather(x, tf.tensor1d([5, 0, 5], 'int32'))],
  ];
  for (const [name, inShape, outShape, f] of cases) {
    it(name, async () => {
      await expectSameOnCpu(g1(f), [rand(inShape, 1), rand(outShape, 2)]);
    });
  }

  it('resizeBilinear gradient of a non-square image is right on wasm (cpu mislabels its shape)', async () => {
    const images = rand([2, 5, 7, 3], 5);
    const dy = rand([2, 10, 14, 3], 6);
    const grad = (x?: tf.Tensor, g?: tf.Tensor) =>
      tf.engine().runKernel(tf.ResizeBilinearGrad, { images: x!, dy: g! }, { alignCorners: false, halfPixelCenters: false }) as tf.Tensor;
    // cpu computes the right values in [B,H,W,C] order but labels them [B,W,H,C].
    await expectSameOnCpu(grad, [images, dy], 1e-5, (x, g) => tf.reshape(grad(x, g), x!.shape));
    const shape = tf.tidy(() => grad(tf.tensor(images.data, images.shape), tf.tensor(dy.data, dy.shape)).shape);
    expect(shape).toEqual([2, 5, 7, 3]);
  });

  it('stridedSlice forward agrees (tfjs has no stridedSlice gradient on any backend)', async () => {
    await expectSameOnCpu((x) => tf.stridedSlice(x!, [0, 1], [5, 6], [2, 2]), [rand([5, 6], 3)]);
    expect(() => tf.tidy(() => tf.grad((t: tf.Tensor) => tf.sum(tf.stridedSlice(t, [0], [2], [1])))(tf.ones([3])))).toThrow(
      /gradient/i,
    );
  });

  it('a gather index input is not differentiated', async () => {
    await expectSameOnCpu((x, i) => tf.gather(x!, i!), [rand([4, 2], 4), ints([2], [3, 1])]);
  });
});
