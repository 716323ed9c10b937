/**
 * Kernels that copy (part of) a tensor: Slice, SplitV, Unpack, Identity.
 *
 * The stock wasm Slice first copies its whole input out of the heap (`readSync`), then copies the
 * slice row by row through new subarrays: ~1.5 ms to split a [4,4,128,64] tensor in two (RoPE
 * does that for every q and k). Here a slice is copied heap to heap, one `copyWithin` per
 * contiguous run. SplitV and Unpack are slices. Identity shares the data (reference count) instead
 * of copying it, as the cpu backend does: tensors are immutable, and the gradient machinery calls
 * Identity hundreds of times per training step.
 */
import * as tf from '@tensorflow/tfjs';
import type { KernelFunc, SliceAttrs, SplitVAttrs, TensorInfo, UnpackAttrs } from '@tensorflow/tfjs';
import { asWasm, offsetOf, type WasmBackend } from './heap.js';
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

export function packIdentity(args: Parameters<KernelFunc>[0]): TensorInfo {
  const x = args.inputs.x as TensorInfo;
  (args.backend as { incRef(dataId: object): void }).incRef(x.dataId);
  return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
}
