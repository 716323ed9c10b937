/**
 * Conv2D gradients on wasm as XNNPACK matmuls around im2col / col2im on the heap.
 *
 * With P = batch*outH*outW output pixels and Kc = kh*kw*inC:
 * - Conv2DBackpropFilter (absent from stock wasm): dW[Kc,outC] = colᵀ·dy, col[P,Kc] = im2col(x).
 *   A 1x1 stride-1 unpadded conv needs no im2col (col is x itself).
 * - Conv2DBackpropInput (stock: a scalar C++ loop, ~4 GFLOP/s): dcol[P,Kc] = dy·Wᵀ, dx = col2im(dcol)
 *   (a scatter-add with the SIMD `add` loop; a plain copy when windows do not overlap, as in
 *   4x4/s4 and 2x2/s2 convs).
 * The im2col buffer is built (and dx accumulated) a batch chunk at a time so that it stays under
 * a budget (128 MiB). NCHW inputs are transposed to NHWC and back.
 */
import * as tf from '@tensorflow/tfjs';
import type { Conv2DBackpropFilterAttrs, Conv2DBackpropInputAttrs, KernelFunc, TensorInfo } from '@tensorflow/tfjs';
import { alias, offsetOf, withScratch, type Scratch } from './heap.js';
import { matMul2D } from './matmul.js';
import { simdLoops } from './simd.js';
import { transposeOn } from './stock.js';

type ConvInfo = tf.backend_util.Conv2DInfo;

/** Largest im2col / col2im buffer built at once (whole images; at least one). */
let colBudgetBytes = 128 * 1024 * 1024;

/** Change the im2col budget (tests use a tiny one to exercise chunking); returns the previous one. */
export function setIm2colBudget(bytes: number): number {
  const prev = colBudgetBytes;
  colBudgetBytes = bytes;
  return prev;
}

function convInfoNHWC(
  inShape: number[], filterShape: number[], attrs: { strides: [number, number] | number; pad: unknown; dimRoundingMode?: 'floor' | 'round' | 'ceil' },
): ConvInfo {
  return tf.backend_util.computeConv2DInfo(
    inShape as [number, number, number, number],
    filterShape as [number, number, number, number],
    attrs.strides,
    1,
    attrs.pad as 'same',
    attrs.dimRoundingMode,
    false,
    'channelsLast',
  );
}

/** True when x itself is the im2col matrix (1x1 kernel, stride 1, no padding). */
const isPointwise = (c: ConvInfo) =>
  c.filterHeight === 1 && c.filterWidth === 1 && c.strideHeight === 1 && c.strideWidth === 1 &&
  c.padInfo.top === 0 && c.padInfo.left === 0 && c.outHeight === c.inHeight && c.outWidth === c.inWidth;

/** Images per im2col chunk. */
function chunkImages(c: ConvInfo): number {
  const perImage = c.outHeight * c.outWidth * c.filterHeight * c.filterWidth * c.inChannels * 4;
  return Math.max(1, Math.min(c.batchSize, Math.floor(colBudgetBytes / Math.max(1, perImage))));
}

/** col[(b-b0)*OH*OW + oh*OW + ow, (kh*KW + kw)*C + c] = x[b, oh*sh-top+kh*dh, ow*sw-left+kw*dw, c] (0 outside). */
function im2col(s: Scratch, x: TensorInfo, c: ConvInfo, b0: number, nb: number): TensorInfo {
  const { inHeight: H, inWidth: W, inChannels: C, outHeight: OH, outWidth: OW, filterHeight: KH, filterWidth: KW } = c;
  const { strideHeight: sh, strideWidth: sw, dilationHeight: dh, dilationWidth: dw } = c;
  const { top, left } = c.padInfo;
  const Kc = KH * KW * C;
  const col = s.alloc([nb * OH * OW, Kc]);
  const heap = s.be.wasm.HEAPF32;
  const xo = offsetOf(s.be, x) >>> 2;
  let dst = offsetOf(s.be, col) >>> 2;
  for (let b = b0; b < b0 + nb; b++) {
    for (let oh = 0; oh < OH; oh++) {
      for (let ow = 0; ow < OW; ow++, dst += Kc) {
        const iw0 = ow * sw - left;
        const rowInside = dw === 1 && iw0 >= 0 && iw0 + KW <= W;
        for (let kh = 0; kh < KH; kh++) {
          const ih = oh * sh - top + kh * dh;
          const d = dst + kh * KW * C;
          if (ih < 0 || ih >= H) {
            heap.fill(0, d, d + KW * C);
            continue;
          }
          const rowStart = xo + (b * H + ih) * W * C;
          if (rowInside) {
            // The kw window is one contiguous run of x's row.
            heap.copyWithin(d, rowStart + iw0 * C, rowStart + (iw0 + KW) * C);
            continue;
          }
          for (let kw = 0; kw < KW; kw++) {
            const iw = iw0 + kw * dw;
            const dk = d + kw * C;
            if (iw < 0 || iw >= W) heap.fill(0, dk, dk + C);
            else heap.copyWithin(dk, rowStart + iw * C, rowStart + (iw + 1) * C);
          }
        }
      }
    }
  }
  return col;
}

/** dx[b, ih, iw, :] += dcol[p, (kh*KW+kw)*C : +C] over the chunk's pixels (dx zeroed beforehand). */
function col2im(s: Scratch, dcol: TensorInfo, dx: TensorInfo, c: ConvInfo, b0: number, nb: number): void {
  const { inHeight: H, inWidth: W, inChannels: C, outHeight: OH, outWidth: OW, filterHeight: KH, filterWidth: KW } = c;
  const { strideHeight: sh, strideWidth: sw, dilationHeight: dh, dilationWidth: dw } = c;
  const { top, left } = c.padInfo;
  const Kc = KH * KW * C;
  // Windows that do not overlap write each dx element at most once: copy instead of add.
  const disjoint = sh >= (KH - 1) * dh + 1 && sw >= (KW - 1) * dw + 1;
  const heap = s.be.wasm.HEAPF32;
  const { add } = simdLoops(s.be);
  const xo = offsetOf(s.be, dx) >>> 2;
  let src = offsetOf(s.be, dcol) >>> 2;
  for (let b = b0; b < b0 + nb; b++) {
    for (let oh = 0; oh < OH; oh++) {
      for (let ow = 0; ow < OW; ow++, src += Kc) {
        for (let kh = 0; kh < KH; kh++) {
          const ih = oh * sh - top + kh * dh;
          if (ih < 0 || ih >= H) continue;
          const rowStart = xo + (b * H + ih) * W * C;
          for (let kw = 0; kw < KW; kw++) {
            const iw = ow * sw - left + kw * dw;
            if (iw < 0 || iw >= W) continue;
            const d = rowStart + iw * C;
            const sp = src + (kh * KW + kw) * C;
            if (disjoint) heap.copyWithin(d, sp, sp + C);
            else add(d * 4, sp * 4, C);
          }
        }
      }
    }
  }
}

/** Rows [start, start+count) of a 2-D tensor: the tensor itself when that is all of it, else a copy. */
function rows(s: Scratch, t: TensorInfo, start: number, count: number): TensorInfo {
  const [n, cols] = t.shape as [number, number];
  if (start === 0 && count === n) return t;
  const out = s.alloc([count, cols]);
  const from = (offsetOf(s.be, t) >>> 2) + start * cols;
  s.be.wasm.HEAPF32.copyWithin(offsetOf(s.be, out) >>> 2, from, from + count * cols);
  return out;
}

const toNHWC = (s: Scratch, t: TensorInfo) => transposeOn(s, t, [0, 2, 3, 1]);

export function packConv2DBackpropFilter(args: Parameters<KernelFunc>[0]): TensorInfo {
  const attrs = args.attrs as unknown as Conv2DBackpropFilterAttrs;
  return withScratch(args.backend, (s, be) => {
    const nchw = attrs.dataFormat === 'NCHW';
    const x = nchw ? toNHWC(s, args.inputs.x as TensorInfo) : (args.inputs.x as TensorInfo);
    const dy = nchw ? toNHWC(s, args.inputs.dy as TensorInfo) : (args.inputs.dy as TensorInfo);
    const c = convInfoNHWC(x.shape, attrs.filterShape, attrs);
    const Kc = c.filterHeight * c.filterWidth * c.inChannels;
    const CO = c.outChannels;
    const P1 = c.outHeight * c.outWidth;
    const dy2 = alias(dy, [c.batchSize * P1, CO]);
    let dW: TensorInfo;
    if (isPointwise(c)) {
      dW = matMul2D(s, alias(x, [c.batchSize * P1, Kc]), dy2, true, false); // [Kc, CO]
    } else {
      const step = chunkImages(c);
      dW = s.zeros([Kc, CO]);
      for (let b0 = 0; b0 < c.batchSize; b0 += step) {
        const nb = Math.min(step, c.batchSize - b0);
        const col = im2col(s, x, c, b0, nb);
        const dyPart = rows(s, dy2, b0 * P1, nb * P1);
        const part = matMul2D(s, col, dyPart, true, false);
        if (nb === c.batchSize) {
          s.free(dW);
          dW = part;
          break;
        }
        simdLoops(be).add(offsetOf(be, dW), offsetOf(be, part), Kc * CO);
        s.free(part);
        s.free(col);
        if (dyPart !== dy2) s.free(dyPart);
      }
    }
    s.keep(dW);
    return alias(dW, attrs.filterShape); // [kh, kw, inC, outC] in both data formats
  });
}

export function packConv2DBackpropInput(args: Parameters<KernelFunc>[0]): TensorInfo {
  const attrs = args.attrs as unknown as Conv2DBackpropInputAttrs;
  const filter = args.inputs.filter as TensorInfo;
  return withScratch(args.backend, (s) => {
    const nchw = attrs.dataFormat === 'NCHW';
    const dy = nchw ? toNHWC(s, args.inputs.dy as TensorInfo) : (args.inputs.dy as TensorInfo);
    const [B, d1, d2, d3] = attrs.inputShape;
    const inShape = nchw ? [B, d2, d3, d1] : [B, d1, d2, d3];
    const c = convInfoNHWC(inShape, filter.shape, attrs);
    const Kc = c.filterHeight * c.filterWidth * c.inChannels;
    const P1 = c.outHeight * c.outWidth;
    const w2 = alias(filter, [Kc, c.outChannels]);
    const dy2 = alias(dy, [c.batchSize * P1, c.outChannels]);
    let dx: TensorInfo;
    if (isPointwise(c)) {
      dx = alias(matMul2D(s, dy2, w2, false, true), inShape); // [P, inC] = dy·Wᵀ
    } else {
      dx = s.zeros(inShape);
      const step = chunkImages(c);
      for (let b0 = 0; b0 < c.batchSize; b0 += step) {
        const nb = Math.min(step, c.batchSize - b0);
        const dyPart = rows(s, dy2, b0 * P1, nb * P1);
        const dcol = matMul2D(s, dyPart, w2, false, true); // [nb*P1, Kc]
        col2im(s, dcol, dx, c, b0, nb);
        s.free(dcol);
        if (dyPart !== dy2) s.free(dyPart);
      }
    }
    if (nchw) dx = transposeOn(s, dx, [0, 3, 1, 2]);
    s.keep(dx);
    return { dataId: dx.dataId, shape: nchw ? [...attrs.inputShape] : inShape, dtype: 'float32' };
  });
}
