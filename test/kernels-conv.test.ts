import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { setIm2colBudget } from '../src/backend/kernels/conv2d-backprop.js';
import { PACK_KERNELS } from '../src/backend/kernels/index.js';
import { expectSameOnCpu, rand } from './kernels-compare.js';

const onWasm = process.env.MGLLAVA_BACKEND == null || process.env.MGLLAVA_BACKEND === 'wasm';
type Pad = 'same' | 'valid' | [[number, number], [number, number], [number, number], [number, number]];

interface ConvCase {
  name: string;
  x: number[]; // NHWC
  filter: number[]; // [kh, kw, inC, outC] (depthwise: outC = multiplier)
  stride: number;
  pad: Pad;
}

const CONV_CASES: ConvCase[] = [
  { name: '1x1 s1 (fusion projections)', x: [2, 5, 5, 6], filter: [1, 1, 6, 4], stride: 1, pad: 'valid' },
  { name: '1x1 on a 1x1 map, batch 1', x: [1, 1, 1, 3], filter: [1, 1, 3, 2], stride: 1, pad: 'same' },
  { name: '1x1 s2', x: [1, 7, 6, 3], filter: [1, 1, 3, 5], stride: 2, pad: 'valid' },
  { name: '3x3 s1 same, odd sizes', x: [2, 7, 9, 3], filter: [3, 3, 3, 4], stride: 1, pad: 'same' },
  { name: '3x3 s2 same', x: [1, 7, 9, 2], filter: [3, 3, 2, 3], stride: 2, pad: 'same' },
  { name: '3x3 s2 valid', x: [2, 8, 8, 2], filter: [3, 3, 2, 3], stride: 2, pad: 'valid' },
  { name: '4x4 s4 (ConvNeXt stem)', x: [2, 8, 12, 3], filter: [4, 4, 3, 5], stride: 4, pad: 'valid' },
  { name: '2x2 s2 (ConvNeXt downsample)', x: [1, 6, 6, 4], filter: [2, 2, 4, 8], stride: 2, pad: 'valid' },
  { name: '14x14 s14 (CLIP patch embedding)', x: [1, 28, 28, 3], filter: [14, 14, 3, 6], stride: 14, pad: 'valid' },
  { name: 'explicit asymmetric padding', x: [1, 5, 6, 2], filter: [3, 2, 2, 3], stride: 1, pad: [[0, 0], [1, 2], [0, 1], [0, 0]] },
];

describe.runIf(onWasm)('wasm kernel pack: Conv2D gradients', () => {
  for (const c of CONV_CASES) {
    it(`${c.name}: d/dx and d/dW agree with cpu`, async () => {
      const outShape = tf.tidy(() => tf.conv2d(tf.zeros<tf.Rank>(c.x) as tf.Tensor4D, tf.zeros<tf.Rank>(c.filter) as tf.Tensor4D, c.stride, c.pad).shape);
      await expectSameOnCpu(
        (x, w, r) =>
          tf.grads((a: tf.Tensor, b: tf.Tensor) =>
            tf.sum(tf.mul(tf.conv2d(a as tf.Tensor4D, b as tf.Tensor4D, c.stride, c.pad), r!)),
          )([x!, w!]),
        [rand(c.x, 1), rand(c.filter, 2), rand(outShape, 3)],
      );
    });
  }

  it('direct kernel calls in NCHW agree with cpu', async () => {
    const x = rand([2, 3, 7, 6], 4); // NCHW
    const dy = rand([2, 4, 4, 3], 5); // conv 3x3 s2 same -> [2,4,4,3] in NCHW
    const filter = rand([3, 3, 3, 4], 6);
    const attrs = { strides: 2, pad: 'same', dataFormat: 'NCHW' };
    await expectSameOnCpu(
      (a, g) => tf.engine().runKernel(tf.Conv2DBackpropFilter, { x: a!, dy: g! }, { ...attrs, filterShape: [3, 3, 3, 4] }) as tf.Tensor,
      [x, dy],
    );
    await expectSameOnCpu(
      (g, w) => tf.engine().runKernel(tf.Conv2DBackpropInput, { dy: g!, filter: w! }, { ...attrs, inputShape: [2, 3, 7, 6] }) as tf.Tensor,
      [dy, filter],
    );
  });

  it('works a batch chunk at a time when im2col would be large', async () => {
    const prev = setIm2colBudget(4 * 1024); // one 4x4 image of 3x3x2 windows is 1152 B: 3 images per chunk
    try {
      const c: ConvCase = { name: 'chunked', x: [7, 4, 4, 2], filter: [3, 3, 2, 3], stride: 1, pad: 'same' };
      await expectSameOnCpu(
        (x, w, r) =>
          tf.grads((a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(tf.conv2d(a as tf.Tensor4D, b as tf.Tensor4D, 1, 'same'), r!)))([x!, w!]),
        [rand(c.x, 7), rand(c.filter, 8), rand([7, 4, 4, 3], 9)],
      );
    } finally {
      setIm2colBudget(prev);
    }
  });
});

interface DwCase {
  name: string;
  x: number[];
  filter: number[];
  stride: number;
  pad: 'same' | 'valid';
  dilation?: number;
}

const DW_CASES: DwCase[] = [
  { name: '7x7 s1 same (fusion / ConvNeXt)', x: [2, 9, 9, 5], filter: [7, 7, 5, 1], stride: 1, pad: 'same' },
  { name: '7x7 on a map smaller than the kernel', x: [1, 3, 2, 4], filter: [7, 7, 4, 1], stride: 1, pad: 'same' },
  { name: '3x3 s2 same, odd sizes', x: [1, 7, 5, 3], filter: [3, 3, 3, 1], stride: 2, pad: 'same' },
  { name: '3x3 s2 valid', x: [2, 8, 8, 2], filter: [3, 3, 2, 1], stride: 2, pad: 'valid' },
  { name: '1x1, batch 1', x: [1, 1, 1, 3], filter: [1, 1, 3, 1], stride: 1, pad: 'valid' },
  { name: 'channel multiplier 2', x: [2, 6, 5, 3], filter: [3, 3, 3, 2], stride: 1, pad: 'same' },
  { name: 'channel multiplier 3, stride 2', x: [1, 7, 7, 2], filter: [5, 5, 2, 3], stride: 2, pad: 'same' },
  // C a multiple of 4: the SIMD row-run loops
  { name: '7x7 s1 same, C = 8 (row runs)', x: [2, 9, 10, 8], filter: [7, 7, 8, 1], stride: 1, pad: 'same' },
  { name: '3x3 s2 same, C = 4, odd sizes (row runs)', x: [1, 7, 5, 4], filter: [3, 3, 4, 1], stride: 2, pad: 'same' },
  { name: '3x3 s2 valid, C = 12 (row runs)', x: [2, 8, 9, 12], filter: [3, 3, 12, 1], stride: 2, pad: 'valid' },
  { name: '7x7 on a 3x2 map, C = 4 (row runs)', x: [1, 3, 2, 4], filter: [7, 7, 4, 1], stride: 1, pad: 'same' },
];

describe.runIf(onWasm)('wasm kernel pack: depthwise conv gradients', () => {
  for (const c of DW_CASES) {
    it(`${c.name}: forward, d/dx and d/dW agree with cpu`, async () => {
      const conv = (a: tf.Tensor, b: tf.Tensor) => tf.depthwiseConv2d(a as tf.Tensor4D, b as tf.Tensor4D, c.stride, c.pad);
      const outShape = tf.tidy(() => conv(tf.zeros<tf.Rank>(c.x), tf.zeros<tf.Rank>(c.filter)).shape);
      await expectSameOnCpu(
        (x, w, r) => [conv(x!, w!), ...tf.grads((a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(conv(a, b), r!)))([x!, w!])],
        [rand(c.x, 1), rand(c.filter, 2), rand(outShape, 3)],
      );
    });
  }

  it('direct kernel calls with dilation 2 agree with cpu (reference: an explicitly dilated 5x5 filter)', async () => {
    // The cpu backprop kernels ignore dilations (tfjs only takes gradients at dilation 1), so the
    // reference differentiates an undilated conv with the filter's zeros written out.
    const attrs = { strides: 1, dilations: 2, pad: 'same' };
    await expectSameOnCpu(
      (x, dy, w) => [
        tf.engine().runKernel(tf.DepthwiseConv2dNativeBackpropInput, { dy: dy!, filter: w! }, { ...attrs, inputShape: [1, 7, 8, 3] }) as tf.Tensor,
        tf.engine().runKernel(tf.DepthwiseConv2dNativeBackpropFilter, { x: x!, dy: dy! }, { ...attrs, filterShape: [3, 3, 3, 1] }) as tf.Tensor,
      ],
      [rand([1, 7, 8, 3], 4), rand([1, 7, 8, 3], 5), rand([3, 3, 3, 1], 6)],
      1e-5,
      (x, dy, w) => {
        const every2nd = tf.tensor1d([0, 2, 4], 'int32');
        const dilate = (f: tf.Tensor) => {
          // [3,3,C,1] -> [5,5,C,1] with zeros between taps
          const rows = tf.stack([f, tf.zerosLike(f)], 1).reshape([6, 3, 3, 1]).slice(0, 5);
          return tf.stack([rows, tf.zerosLike(rows)], 2).reshape([5, 6, 3, 1]).slice([0, 0, 0, 0], [5, 5, 3, 1]);
        };
        const [dx, dWide] = tf.grads((a: tf.Tensor, b: tf.Tensor) =>
          tf.sum(tf.mul(tf.depthwiseConv2d(a as tf.Tensor4D, b as tf.Tensor4D, 1, 'same'), dy!)),
        )([x!, dilate(w!)]);
        return [dx!, tf.gather(tf.gather(dWide!, every2nd, 0), every2nd, 1)];
      },
    );
  });

  it('the conv kernels are the pack kernels', () => {
    const kernels = [
      tf.Conv2DBackpropFilter,
      tf.Conv2DBackpropInput,
      tf.DepthwiseConv2dNative,
      tf.DepthwiseConv2dNativeBackpropInput,
      tf.DepthwiseConv2dNativeBackpropFilter,
    ];
    for (const k of kernels) expect(tf.getKernel(k, 'wasm')?.kernelFunc).toBe(PACK_KERNELS[k]);
  });

  it('forward with dilation 2 agrees with cpu', async () => {
    await expectSameOnCpu(
      (x, w) => tf.depthwiseConv2d(x as tf.Tensor4D, w as tf.Tensor4D, 1, 'same', 'NHWC', 2),
      [rand([2, 9, 8, 3], 1), rand([3, 3, 3, 1], 2)],
    );
  });

  it('forward with dilation 2 and C = 8 (row runs) agrees with cpu', async () => {
    await expectSameOnCpu(
      (x, w) => tf.depthwiseConv2d(x as tf.Tensor4D, w as tf.Tensor4D, 1, 'same', 'NHWC', 2),
      [rand([2, 9, 8, 8], 1), rand([3, 3, 8, 1], 2)],
    );
  });
});
