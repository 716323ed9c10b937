/**
 * Depthwise conv gradients (absent from stock wasm), NHWC, any kernel size, stride, dilation,
 * padding and channel multiplier. Both are one pass over (pixel, tap) pairs whose inner loop is a
 * multiply-add over contiguous channels, in JavaScript on the heap.
 *
 * With M the channel multiplier, filter [kh, kw, C, M], dy [B, oh, ow, C*M]:
 *   dx[b, ih, iw, c]    = sum over taps, m of dy[b, oh, ow, c*M+m] * W[kh, kw, c, m]
 *   dW[kh, kw, c, m]    = sum over b, oh, ow of x[b, ih, iw, c] * dy[b, oh, ow, c*M+m]
 * where ih = oh*strideH - padTop + kh*dilationH (likewise iw). dW sums B*oh*ow terms per element,
 * so it accumulates in float64 before rounding once; dx gets at most kh*kw*M terms per element.
 */
import * as tf from '@tensorflow/tfjs';
import type {
  DepthwiseConv2dNativeBackpropFilterAttrs,
  DepthwiseConv2dNativeBackpropInputAttrs,
  KernelFunc,
  TensorInfo,
} from '@tensorflow/tfjs';
import { f32, withScratch } from './heap.js';

type ConvInfo = tf.backend_util.Conv2DInfo;

function depthwiseInfo(
  inShape: number[],
  filterShape: number[],
  attrs: { strides: [number, number] | number; dilations: [number, number] | number; pad: unknown; dimRoundingMode?: 'floor' | 'round' | 'ceil' },
): ConvInfo {
  return tf.backend_util.computeConv2DInfo(
    inShape as [number, number, number, number],
    filterShape as [number, number, number, number],
    attrs.strides,
    attrs.dilations,
    attrs.pad as 'same',
    attrs.dimRoundingMode,
    true,
  );
}

/** Calls visit(dyRow, xRow, wRow) for every in-bounds (output pixel, tap) pair, as element offsets. */
function forEachTap(c: ConvInfo, visit: (dyRow: number, xRow: number, wRow: number) => void): void {
  const { batchSize: B, inHeight: H, inWidth: W, inChannels: C, outHeight: OH, outWidth: OW } = c;
  const { filterHeight: KH, filterWidth: KW, strideHeight: sh, strideWidth: sw, dilationHeight: dh, dilationWidth: dw } = c;
  const { top, left } = c.padInfo;
  const CO = c.outChannels;
  let dyRow = 0;
  for (let b = 0; b < B; b++) {
    for (let oh = 0; oh < OH; oh++) {
      for (let ow = 0; ow < OW; ow++, dyRow += CO) {
        for (let kh = 0; kh < KH; kh++) {
          const ih = oh * sh - top + kh * dh;
          if (ih < 0 || ih >= H) continue;
          for (let kw = 0; kw < KW; kw++) {
            const iw = ow * sw - left + kw * dw;
            if (iw < 0 || iw >= W) continue;
            visit(dyRow, ((b * H + ih) * W + iw) * C, (kh * KW + kw) * CO);
          }
        }
      }
    }
  }
}

function checkFloat(kernel: string, ...ts: TensorInfo[]): void {
  for (const t of ts) {
    if (t.dtype !== 'float32') throw new Error(`${kernel} (wasm kernel pack): expected float32 tensors, got ${t.dtype}`);
  }
}

export function packDepthwiseBackpropInput(args: Parameters<KernelFunc>[0]): TensorInfo {
  const dy = args.inputs.dy as TensorInfo;
  const filter = args.inputs.filter as TensorInfo;
  const attrs = args.attrs as unknown as DepthwiseConv2dNativeBackpropInputAttrs;
  checkFloat('DepthwiseConv2dNativeBackpropInput', dy, filter);
  const c = depthwiseInfo(attrs.inputShape, filter.shape, attrs);
  const C = c.inChannels;
  const M = c.outChannels / C;
  return withScratch(args.backend, (s, be) => {
    const dx = s.zeros(attrs.inputShape);
    const dxs = f32(be, dx);
    const dys = f32(be, dy);
    const ws = f32(be, filter);
    if (M === 1) {
      forEachTap(c, (dyRow, xRow, wRow) => {
        for (let ch = 0; ch < C; ch++) dxs[xRow + ch] += dys[dyRow + ch] * ws[wRow + ch];
      });
    } else {
      forEachTap(c, (dyRow, xRow, wRow) => {
        for (let ch = 0; ch < C; ch++) {
          let acc = 0;
          for (let m = 0; m < M; m++) acc += dys[dyRow + ch * M + m] * ws[wRow + ch * M + m];
          dxs[xRow + ch] += acc;
        }
      });
    }
    return s.keep(dx);
  });
}

export function packDepthwiseBackpropFilter(args: Parameters<KernelFunc>[0]): TensorInfo {
  const x = args.inputs.x as TensorInfo;
  const dy = args.inputs.dy as TensorInfo;
  const attrs = args.attrs as unknown as DepthwiseConv2dNativeBackpropFilterAttrs;
  checkFloat('DepthwiseConv2dNativeBackpropFilter', x, dy);
  const c = depthwiseInfo(x.shape, attrs.filterShape, attrs);
  const C = c.inChannels;
  const M = c.outChannels / C;
  return withScratch(args.backend, (s, be) => {
    const acc = new Float64Array(tf.util.sizeFromShape(attrs.filterShape));
    const xs = f32(be, x);
    const dys = f32(be, dy);
    if (M === 1) {
      forEachTap(c, (dyRow, xRow, wRow) => {
        for (let ch = 0; ch < C; ch++) acc[wRow + ch] += xs[xRow + ch] * dys[dyRow + ch];
      });
    } else {
      forEachTap(c, (dyRow, xRow, wRow) => {
        for (let ch = 0; ch < C; ch++) {
          const xv = xs[xRow + ch];
          for (let m = 0; m < M; m++) acc[wRow + ch * M + m] += xv * dys[dyRow + ch * M + m];
        }
      });
    }
    const dW = s.alloc(attrs.filterShape);
    f32(be, dW).set(acc);
    return s.keep(dW);
  });
}
