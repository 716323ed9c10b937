/**
 * Depthwise conv kernels, NHWC. The gradients are absent from stock wasm (any kernel size, stride,
 * dilation, padding and channel multiplier here); the stock forward is slow (~3 GFLOP/s for 7x7:
 * XNNPACK has no 49-tap microkernel), so the pack replaces it for channel multiplier 1 and NHWC
 * (other cases go to the stock kernel). All three are one pass over (output pixel, tap) pairs whose
 * inner loop is a multiply-add over contiguous channels: the SIMD `madd` loop for multiplier 1,
 * JavaScript for other multipliers.
 *
 *   y[b, oh, ow, c]     = sum over taps of x[b, ih, iw, c] * W[kh, kw, c, 0]   (multiplier 1)
 * With M the channel multiplier, filter [kh, kw, C, M], dy [B, oh, ow, C*M]:
 *   dx[b, ih, iw, c]    = sum over taps, m of dy[b, oh, ow, c*M+m] * W[kh, kw, c, m]
 *   dW[kh, kw, c, m]    = sum over b, oh, ow of x[b, ih, iw, c] * dy[b, oh, ow, c*M+m]
 * where ih = oh*strideH - padTop + kh*dilationH (likewise iw). dW sums B*oh*ow terms per element:
 * each output row's terms are summed apart and then added to the total (two-level float32
 * summation keeps the rounding error near that of a float64 sum).
 */
import * as tf from '@tensorflow/tfjs';
import type {
  DepthwiseConv2dNativeAttrs,
  DepthwiseConv2dNativeBackpropFilterAttrs,
  DepthwiseConv2dNativeBackpropInputAttrs,
  KernelFunc,
  TensorInfo,
} from '@tensorflow/tfjs';
import { f32, offsetOf, withScratch } from './heap.js';
import { simdLoops } from './simd.js';
import { stockKernel } from './stock.js';

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

/**
 * Calls visit(dyRow, xRow, wRow) for every in-bounds (output pixel, tap) pair, as element offsets,
 * and rowDone() after each output row.
 */
function forEachTap(c: ConvInfo, visit: (dyRow: number, xRow: number, wRow: number) => void, rowDone?: () => void): void {
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
      rowDone?.();
    }
  }
}

/**
 * Calls visit(dyRun, xRun, wRow, n) for every (output row, tap) pair with the run of n >= 1 output
 * pixels of that row the tap reaches in bounds: the run's first output pixel and its input pixel
 * as element offsets (next pixel: + outChannels in dy, + strideWidth * inChannels in x), and
 * rowDone() after each output row. Per output element, taps are visited in the same order as
 * `forEachTap`.
 */
function forEachTapRun(c: ConvInfo, visit: (dyRun: number, xRun: number, wRow: number, n: number) => void, rowDone?: () => void): void {
  const { batchSize: B, inHeight: H, inWidth: W, inChannels: C, outHeight: OH, outWidth: OW } = c;
  const { filterHeight: KH, filterWidth: KW, strideHeight: sh, strideWidth: sw, dilationHeight: dh, dilationWidth: dw } = c;
  const { top, left } = c.padInfo;
  const CO = c.outChannels;
  // Valid output columns of each kw: iw = ow*sw - left + kw*dw in [0, W).
  const first: number[] = [];
  const last: number[] = [];
  for (let kw = 0; kw < KW; kw++) {
    const shift = kw * dw - left;
    first.push(Math.max(0, Math.ceil(-shift / sw)));
    last.push(Math.min(OW - 1, Math.floor((W - 1 - shift) / sw)));
  }
  for (let b = 0; b < B; b++) {
    for (let oh = 0; oh < OH; oh++) {
      const dyRow = (b * OH + oh) * OW * CO;
      for (let kh = 0; kh < KH; kh++) {
        const ih = oh * sh - top + kh * dh;
        if (ih < 0 || ih >= H) continue;
        for (let kw = 0; kw < KW; kw++) {
          const n = last[kw]! - first[kw]! + 1;
          if (n <= 0) continue;
          const ow = first[kw]!;
          const iw = ow * sw - left + kw * dw;
          visit(dyRow + ow * CO, ((b * H + ih) * W + iw) * C, (kh * KW + kw) * CO, n);
        }
      }
      rowDone?.();
    }
  }
}

function checkFloat(kernel: string, ...ts: TensorInfo[]): void {
  for (const t of ts) {
    if (t.dtype !== 'float32') throw new Error(`${kernel} (wasm kernel pack): expected float32 tensors, got ${t.dtype}`);
  }
}

export function packDepthwiseConv2d(args: Parameters<KernelFunc>[0]): TensorInfo {
  const x = args.inputs.x as TensorInfo;
  const filter = args.inputs.filter as TensorInfo;
  const attrs = args.attrs as unknown as DepthwiseConv2dNativeAttrs;
  const nhwc = attrs.dataFormat == null || attrs.dataFormat === 'NHWC';
  if (!nhwc || filter.shape[3] !== 1 || x.dtype !== 'float32' || filter.dtype !== 'float32') {
    return stockKernel(tf.DepthwiseConv2dNative)(args) as TensorInfo;
  }
  const c = depthwiseInfo(x.shape, filter.shape, { ...attrs, dilations: attrs.dilations ?? 1 });
  return withScratch(args.backend, (s, be) => {
    const y = s.zeros(c.outShape);
    const { madd } = simdLoops(be);
    const [yo, xo, wo] = [offsetOf(be, y), offsetOf(be, x), offsetOf(be, filter)];
    const C = c.inChannels;
    if (C % 4 === 0) {
      const { maddRun } = simdLoops(be);
      const xStep = c.strideWidth * C * 4;
      forEachTapRun(c, (yRun, xRun, wRow, n) => maddRun(yo + yRun * 4, C * 4, xo + xRun * 4, xStep, wo + wRow * 4, n, C * 4));
    } else {
      forEachTap(c, (yRow, xRow, wRow) => madd(yo + yRow * 4, xo + xRow * 4, wo + wRow * 4, C));
    }
    return s.keep(y);
  });
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
    if (M === 1 && C % 4 === 0) {
      const { maddRun } = simdLoops(be);
      const [dxo, dyo, wo] = [offsetOf(be, dx), offsetOf(be, dy), offsetOf(be, filter)];
      const xStep = c.strideWidth * C * 4;
      forEachTapRun(c, (dyRun, xRun, wRow, n) => maddRun(dxo + xRun * 4, xStep, dyo + dyRun * 4, C * 4, wo + wRow * 4, n, C * 4));
    } else if (M === 1) {
      const { madd } = simdLoops(be);
      const [dxo, dyo, wo] = [offsetOf(be, dx), offsetOf(be, dy), offsetOf(be, filter)];
      forEachTap(c, (dyRow, xRow, wRow) => madd(dxo + xRow * 4, dyo + dyRow * 4, wo + wRow * 4, C));
    } else {
      const dxs = f32(be, dx);
      const dys = f32(be, dy);
      const ws = f32(be, filter);
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
    const size = tf.util.sizeFromShape(attrs.filterShape);
    const dW = s.zeros(attrs.filterShape);
    if (M === 1) {
      const { madd, add, dotRun } = simdLoops(be);
      const row = s.zeros([size]); // this output row's terms
      const [xo, dyo, wo, ro] = [offsetOf(be, x), offsetOf(be, dy), offsetOf(be, dW), offsetOf(be, row)];
      const rowDone = () => {
        add(wo, ro, size);
        be.wasm.HEAPU8.fill(0, ro, ro + size * 4);
      };
      if (C % 4 === 0) {
        const xStep = c.strideWidth * C * 4;
        forEachTapRun(c, (dyRun, xRun, wRow, n) => dotRun(ro + wRow * 4, xo + xRun * 4, xStep, dyo + dyRun * 4, C * 4, n, C * 4), rowDone);
      } else {
        forEachTap(c, (dyRow, xRow, wRow) => madd(ro + wRow * 4, xo + xRow * 4, dyo + dyRow * 4, C), rowDone);
      }
    } else {
      const acc = new Float64Array(size);
      const xs = f32(be, x);
      const dys = f32(be, dy);
      forEachTap(c, (dyRow, xRow, wRow) => {
        for (let ch = 0; ch < C; ch++) {
          const xv = xs[xRow + ch];
          for (let m = 0; m < M; m++) acc[wRow + ch * M + m] += xv * dys[dyRow + ch * M + m];
        }
      });
      f32(be, dW).set(acc);
    }
    return s.keep(dW);
  });
}
