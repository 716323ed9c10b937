/**
 * UnsortedSegmentSum (the gradient of gather, e.g. of a token embedding), absent from stock wasm:
 * out[s, ...] = sum of x[i, ...] over the i with segmentIds[i] = s. `segmentIds` may have any rank
 * that is a prefix of x's shape. Ids outside [0, numSegments) are dropped, as on the cpu backend.
 * One pass over x in JavaScript on the heap: the work is a row add per index.
 */
import * as tf from '@tensorflow/tfjs';
import type { KernelFunc, TensorInfo, UnsortedSegmentSumAttrs } from '@tensorflow/tfjs';
import { f32, i32, withScratch } from './heap.js';

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
    const view = x.dtype === 'float32' ? f32 : i32;
    const xs = view(be, x);
    const os = view(be, out);
    const seg = i32(be, ids);
    for (let i = 0; i < n; i++) {
      const sid = seg[i];
      if (sid < 0 || sid >= numSegments) continue;
      const src = i * D;
      const dst = sid * D;
      for (let j = 0; j < D; j++) os[dst + j] += xs[src + j];
    }
    return s.keep(out);
  });
}
