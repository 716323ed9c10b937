/**
 * Kernels that copy (part of) a tensor: Slice, SplitV, Unpack, Concat, GatherV2, Identity, and Cast to the
 * same dtype (which tfjs' gradients of Mul/Div/... issue for every float input: shared like Identity).
 *
 * The stock wasm Slice first copies its whole input out of the heap (`readSync`), then copies the
 * slice row by row through new subarrays: ~1.5 ms to split a [4,4,128,64] tensor in two (RoPE
 * does that for every q and k). Here a slice is copied heap to heap, one `copyWithin` per
 * contiguous run. SplitV and Unpack are slices. Identity shares the data (reference count) instead
 * of copying it, as the cpu backend does: tensors are immutable, and the gradient machinery calls
 * Identity hundreds of times per training step.
 */
import * as tf from '@tensorflow/tfjs';
import type { CastAttrs, ConcatAttrs, GatherV2Attrs, KernelFunc, SliceAttrs, SplitVAttrs, TensorInfo, UnpackAttrs } from '@tensorflow/tfjs';
import { asWasm, i32, offsetOf, type WasmBackend } from './heap.js';
import { stockKernel } from './stock.js';

/** Runs shorter than this are copied element by element (cheaper than a copyWithin call). */
const SHORT_RUN = 16;

/** New tensor = x[begin : begin+size] (x not a string tensor). */
function sliceOf(be: WasmBackend, x: TensorInfo, begin: number[], size: number[]): TensorInfo {
  const out = be.makeOutput(size, x.dtype);
  const total = tf.util.sizeFromShape(size);
  if (total === 0) return out;
  const rank = x.shape.length;
  if (rank === 0) {
    be.wasm.HEAPU8.copyWithin(offsetOf(be, out), offsetOf(be, x), offsetOf(be, x) + tf.util.bytesPerElement(x.dtype));
    return out;
  }
  // Trailing dims taken whole merge into one contiguous run with the first partial dim before them.
  let d = rank - 1;
  while (d > 0 && begin[d] === 0 && size[d] === x.shape[d]) d--;
  const strides = [...tf.util.computeStrides(x.shape), 1];
  const run = size[d]! * strides[d]!;
  const bytes = tf.util.bytesPerElement(x.dtype);
  const heap = bytes === 4 ? be.wasm.HEAPF32 : be.wasm.HEAPU8; // bool is 1 byte; float32/int32 copy as bits
  const unit = bytes === 4 ? 2 : 0; // byte offset -> heap index shift
  const src0 = offsetOf(be, x) >>> unit;
  let dst = offsetOf(be, out) >>> unit;
  // Odometer over the outer dims 0..d-1.
  const idx = begin.slice(0, d);
  const runs = total / run;
  for (let r = 0; r < runs; r++) {
    let src = src0 + begin[d]! * strides[d]!;
    for (let k = 0; k < d; k++) src += idx[k]! * strides[k]!;
    if (run < SHORT_RUN) for (let i = 0; i < run; i++) heap[dst + i] = heap[src + i]!;
    else heap.copyWithin(dst, src, src + run);
    dst += run;
    for (let k = d - 1; k >= 0; k--) {
      if (++idx[k]! < begin[k]! + size[k]!) break;
      idx[k] = begin[k]!;
    }
  }
  return out;
}

export function packSlice(args: Parameters<KernelFunc>[0]): TensorInfo {
  const x = args.inputs.x as TensorInfo;
  if (x.dtype === 'string') return stockKernel(tf.Slice)(args) as TensorInfo;
  const { begin, size } = args.attrs as unknown as SliceAttrs;
  const [b, s] = tf.slice_util.parseSliceParams(x as tf.Tensor, begin, size);
  return sliceOf(asWasm(args.backend), x, b, s);
}

export function packSplitV(args: Parameters<KernelFunc>[0]): TensorInfo[] {
  const x = args.inputs.x as TensorInfo;
  if (x.dtype === 'string') return stockKernel(tf.SplitV)(args) as TensorInfo[];
  const { numOrSizeSplits, axis } = args.attrs as unknown as SplitVAttrs;
  const ax = tf.util.parseAxisParam(axis, x.shape)[0]!;
  const sizes = tf.backend_util.prepareSplitSize(x as tf.Tensor, numOrSizeSplits, ax);
  const be = asWasm(args.backend);
  const begin = new Array<number>(x.shape.length).fill(0);
  return sizes.map((n) => {
    const size = [...x.shape];
    size[ax] = n;
    const part = sliceOf(be, x, begin, size);
    begin[ax]! += n;
    return part;
  });
}

export function packUnpack(args: Parameters<KernelFunc>[0]): TensorInfo[] {
  const value = args.inputs.value as TensorInfo;
  if (value.dtype === 'string') return stockKernel(tf.Unpack)(args) as TensorInfo[];
  const { axis } = args.attrs as unknown as UnpackAttrs;
  const ax = axis < 0 ? axis + value.shape.length : axis;
  const be = asWasm(args.backend);
  const outShape = value.shape.filter((_, i) => i !== ax);
  const begin = new Array<number>(value.shape.length).fill(0);
  const size = [...value.shape];
  size[ax] = 1;
  return Array.from({ length: value.shape[ax]! }, (_, i) => {
    begin[ax] = i;
    const part = sliceOf(be, value, begin, size);
    return { dataId: part.dataId, shape: outShape, dtype: part.dtype };
  });
}

/**
 * Concat (float32, int32, bool): for each index of the dims before `axis`, each input's run of
 * (its size along axis) x (the dims after) elements, heap to heap. The stock kernel took ~0.7 ms to
 * join two [4,4,128,32] halves on the last axis (RoPE written with slices).
 */
export function packConcat(args: Parameters<KernelFunc>[0]): TensorInfo {
  const inputs = args.inputs as unknown as TensorInfo[];
  const { axis } = args.attrs as unknown as ConcatAttrs;
  const dtype = inputs[0]?.dtype;
  if (!dtype || dtype === 'string' || dtype === 'complex64' || inputs.some((t) => t.dtype !== dtype)) return stockKernel(tf.Concat)(args) as TensorInfo;
  const ax = tf.util.parseAxisParam(axis, inputs[0]!.shape)[0]!;
  tf.backend_util.assertParamsConsistent(inputs.map((t) => t.shape), ax);
  const outShape = tf.backend_util.computeOutShape(inputs.map((t) => t.shape), ax);
  const be = asWasm(args.backend);
  const out = be.makeOutput(outShape, dtype);
  const total = tf.util.sizeFromShape(outShape);
  if (total === 0) return out;
  const parts = inputs.filter((t) => tf.util.sizeFromShape(t.shape) > 0);
  const outer = tf.util.sizeFromShape(outShape.slice(0, ax));
  const runs = parts.map((t) => tf.util.sizeFromShape(t.shape.slice(ax)));
  const bytes = tf.util.bytesPerElement(dtype);
  const heap = bytes === 4 ? be.wasm.HEAPF32 : be.wasm.HEAPU8;
  const unit = bytes === 4 ? 2 : 0;
  const srcs = parts.map((t) => offsetOf(be, t) >>> unit);
  let dst = offsetOf(be, out) >>> unit;
  for (let o = 0; o < outer; o++) {
    for (let i = 0; i < parts.length; i++) {
      const run = runs[i]!;
      const src = srcs[i]! + o * run;
      if (run < SHORT_RUN) for (let j = 0; j < run; j++) heap[dst + j] = heap[src + j]!;
      else heap.copyWithin(dst, src, src + run);
      dst += run;
    }
  }
  return out;
}

/**
 * GatherV2 with batchDims 0: out[o, i, r] = x[o, indices[i], r] (o over the dims before `axis`, i
 * over the index tensor, r over the dims after), one heap copy per (o, i) run. The stock kernel
 * took ~3 ms to gather 512 rows of 256 floats (the multimodal splice, the embeddings). An index
 * outside [0, x.shape[axis]) is an error, as on the cpu backend.
 */
export function packGatherV2(args: Parameters<KernelFunc>[0]): TensorInfo {
  const x = args.inputs.x as TensorInfo;
  const indices = args.inputs.indices as TensorInfo;
  const { axis, batchDims } = args.attrs as unknown as GatherV2Attrs;
  if (x.dtype === 'string' || (batchDims ?? 0) !== 0 || indices.dtype !== 'int32') return stockKernel(tf.GatherV2)(args) as TensorInfo;
  const be = asWasm(args.backend);
  const ax = tf.util.parseAxisParam(axis, x.shape)[0]!;
  const outer = tf.util.sizeFromShape(x.shape.slice(0, ax));
  const N = x.shape[ax]!;
  const run = tf.util.sizeFromShape(x.shape.slice(ax + 1));
  const ids = Int32Array.from(i32(be, indices)); // a copy: makeOutput may grow the heap
  const n = ids.length;
  for (let i = 0; i < n; i++) {
    const k = ids[i]!;
    if (k < 0 || k >= N) throw new Error(`GatherV2 (wasm kernel pack): index ${k} at position ${i} is not in [0, ${N - 1}]`);
  }
  const out = be.makeOutput([...x.shape.slice(0, ax), ...indices.shape, ...x.shape.slice(ax + 1)], x.dtype);
  if (outer * n * run === 0) return out;
  const bytes = tf.util.bytesPerElement(x.dtype);
  const heap = bytes === 4 ? be.wasm.HEAPF32 : be.wasm.HEAPU8;
  const unit = bytes === 4 ? 2 : 0;
  const src0 = offsetOf(be, x) >>> unit;
  let dst = offsetOf(be, out) >>> unit;
  for (let o = 0; o < outer; o++) {
    const base = src0 + o * N * run;
    for (let i = 0; i < n; i++, dst += run) {
      const src = base + ids[i]! * run;
      if (run < SHORT_RUN) for (let j = 0; j < run; j++) heap[dst + j] = heap[src + j]!;
      else heap.copyWithin(dst, src, src + run);
    }
  }
  return out;
}

export function packIdentity(args: Parameters<KernelFunc>[0]): TensorInfo {
  const x = args.inputs.x as TensorInfo;
  (args.backend as { incRef(dataId: object): void }).incRef(x.dataId);
  return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
}

/** Cast to the tensor's own dtype shares the data (like Identity); real conversions go to the stock kernel. */
export function packCast(args: Parameters<KernelFunc>[0]): TensorInfo {
  const x = args.inputs.x as TensorInfo;
  const { dtype } = args.attrs as unknown as CastAttrs;
  if (dtype !== x.dtype || dtype === 'string') return stockKernel(tf.Cast)(args) as TensorInfo;
  return packIdentity(args);
}
