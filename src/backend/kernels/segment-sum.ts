/**
 * UnsortedSegmentSum (the gradient of gather, e.g. of a token embedding), absent from stock wasm:
 * out[s, ...] = sum of x[i, ...] over the i with segmentIds[i] = s. `segmentIds` may have any rank
 * that is a prefix of x's shape. Ids outside [0, numSegments) are dropped, as on the cpu backend.
 * One pass over x: a row add per index (the SIMD `add` loop for float32, JavaScript for int32).
 */
import * as tf from '@tensorflow/tfjs';
import type { KernelFunc, TensorInfo, UnsortedSegmentSumAttrs } from '@tensorflow/tfjs';
import { i32, offsetOf, withScratch } from './heap.js';
import { simdLoops } from './simd.js';

export function packUnsortedSegmentSum(args: Parameters<KernelFunc>[0]): TensorInfo {
  const x = args.inputs.x as TensorInfo;
  const ids = args.inputs.segmentIds as TensorInfo;
  const { numSegments } = args.attrs as unknown as UnsortedSegmentSumAttrs;
  if (x.dtype !== 'float32' && x.dtype !== 'int32') {
    throw new Error(`UnsortedSegmentSum (wasm kernel pack): x must be float32 or int32, got ${x.dtype}`);
  }
  if (ids.dtype !== 'int32') throw new Error(`UnsortedSegmentSum (wasm kernel pack): segmentIds must be int32, got ${ids.dtype}`);
  const prefix = x.shape.slice(0, ids.shape.length);
  if (ids.shape.length > x.shape.length || prefix.some((d, i) => d !== ids.shape[i])) {
    throw new Error(
      `UnsortedSegmentSum (wasm kernel pack): segmentIds shape [${ids.shape}] must be a prefix of x shape [${x.shape}]`,
    );
  }
  const inner = x.shape.slice(ids.shape.length);
  const D = tf.util.sizeFromShape(inner);
  const n = tf.util.sizeFromShape(ids.shape);
  return withScratch(args.backend, (s, be) => {
    const out = s.zeros([numSegments, ...inner], x.dtype);
    const seg = i32(be, ids);
    if (x.dtype === 'float32') {
      const { add } = simdLoops(be);
      const [xo, oo] = [offsetOf(be, x), offsetOf(be, out)];
      for (let i = 0; i < n; i++) {
        const sid = seg[i];
        if (sid >= 0 && sid < numSegments) add(oo + sid * D * 4, xo + i * D * 4, D);
      }
    } else {
      const xs = i32(be, x);
      const os = i32(be, out);
      for (let i = 0; i < n; i++) {
        const sid = seg[i];
        if (sid < 0 || sid >= numSegments) continue;
        for (let j = 0; j < D; j++) os[sid * D + j] += xs[i * D + j];
      }
    }
    return s.keep(out);
  });
}
