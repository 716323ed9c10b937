/**
 * BatchMatMul on wasm: on the native addon when it is active (native.ts: AVX-512/AVX2 GEMM reading
 * the operands in place in the heap, any transpose and batch broadcast handled by its packing),
 * otherwise through XNNPACK only, as follows.
 *
 * The stock kernel uses XNNPACK (SIMD GEMM) for a plain 2-D product and a scalar C++ loop for
 * everything else (any transpose flag, any batch > 1): 10-40x slower, and every backward pass of a
 * linear layer transposes. Here every product becomes one or more plain 2-D XNNPACK products:
 * - transposes: explicit ones of the flagged operands (a SIMD 4x4-block transpose on the heap,
 *   simd.ts, 5-15x the stock Transpose kernel), or, when that moves fewer elements, C computed as
 *   Cᵀ = op(B)ᵀ·op(A)ᵀ and transposed back (see `preferSwapped`);
 * - batch folding: [b,M,K]·[K,N] (B broadcast) is one [b*M,K]·[K,N] product;
 * - true batches: one XNNPACK call per batch element on views of the operands (tensor ids
 *   registered on sub-ranges of the heap, no copies), with tfjs's batch broadcasting.
 *
 * XNNPACK caches the packed B operand per tensor id and keys the cache on the id alone: a tensor
 * reused as B under another [K,N] (same data, other reshape) gets the stale operator (wrong result or
 * an out-of-bounds trap in stock tfjs 4.22). Only the plain 2-D case goes to the stock kernel, and
 * only when `packableAs` says b was never packed under another shape; the pack's own products use
 * throwaway view ids.
 */
import * as tf from '@tensorflow/tfjs';
import type { BatchMatMulAttrs, KernelFunc, TensorInfo } from '@tensorflow/tfjs';
import { accountExternal } from '../memory.js';
import { activeNative, type NativeAddon } from '../native.js';
import { alias, idOf, offsetOf, withScratch, type Scratch, type WasmBackend, type WasmModule } from './heap.js';
import { transposeMatrix } from './simd.js';
import { stockKernel } from './stock.js';

type RawBatchMatMul = (
  aId: number, aShape: Uint8Array, aRank: number,
  bId: number, bShape: Uint8Array, bRank: number,
  transposeA: number, transposeB: number, outId: number,
) => void;

const rawByModule = new WeakMap<WasmModule, RawBatchMatMul>();

function rawBatchMatMul(be: WasmBackend): RawBatchMatMul {
  let f = rawByModule.get(be.wasm);
  if (!f) {
    const args = ['number', 'array', 'number', 'number', 'array', 'number', 'number', 'number', 'number'];
    f = be.wasm.cwrap('BatchMatMul', null, args) as unknown as RawBatchMatMul;
    rawByModule.set(be.wasm, f);
  }
  return f;
}

const shapeBytes = (dims: number[]) => new Uint8Array(new Int32Array(dims).buffer);

/** out[M,N] = a[M,K]·b[K,N] by XNNPACK; operands given as C++ tensor ids. */
function xnnMatMul(be: WasmBackend, aId: number, bId: number, outId: number, M: number, K: number, N: number): void {
  rawBatchMatMul(be)(aId, shapeBytes([1, M, K]), 3, bId, shapeBytes([1, K, N]), 3, 0, 0, outId);
}

/** The [K,N] under which each tensor's packed XNNPACK operator was cached. */
const packedAs = new WeakMap<object, string>();

/** Bytes XNNPACK keeps for a packed [K,N] B operand (+ bias row, N padded to its tile). */
const packedBytes = (K: number, N: number) => (K + 1) * (N + 16) * 4;

/**
 * True when the stock kernel may hand `b` to XNNPACK as a [K,N] B operand under its own id (the
 * packed copy is then cached until b is freed: good for weights reused every call); records it.
 */
function packableAs(b: TensorInfo, K: number, N: number): boolean {
  const key = `${K}x${N}`;
  const prev = packedAs.get(b.dataId);
  if (prev === undefined) {
    accountExternal(b.dataId, packedBytes(K, N), `XNNPACK packed weights [${K},${N}]`);
    packedAs.set(b.dataId, key);
    return true;
  }
  return prev === key;
}

/**
 * New [M,N] tensor (owned by s) = a[M,K]·b[K,N]. B goes to XNNPACK under a throwaway view id: its
 * packed copy is dropped when the kernel call ends instead of living as long as b (B here is
 * usually an activation or gradient, new at every step).
 */
function plain(s: Scratch, a: TensorInfo, b: TensorInfo, M: number, K: number, N: number): TensorInfo {
  if (K === 0) return s.zeros([M, N]);
  const out = s.alloc([M, N]);
  if (M > 0 && N > 0) xnnMatMul(s.be, idOf(s.be, a), s.view(offsetOf(s.be, b), K * N), idOf(s.be, out), M, K, N);
  return out;
}

/** New [batch, C, R] tensor (owned by s) = x [batch, R, C] with its last two axes swapped (SIMD). */
export function transposeLast2(s: Scratch, x: TensorInfo, batch: number, R: number, C: number): TensorInfo {
  const out = s.alloc(batch === 1 ? [C, R] : [batch, C, R]);
  const src = offsetOf(s.be, x);
  const dst = offsetOf(s.be, out);
  for (let b = 0; b < batch; b++) transposeMatrix(s.be, src + b * R * C * 4, dst + b * R * C * 4, R, C);
  return out;
}

/**
 * Whether (op(B)ᵀ·op(A)ᵀ)ᵀ moves fewer elements than op(A)·op(B): explicit transposes plus XNNPACK's
 * packing of the right-hand operand (one copy per distinct batch element), plus the result's
 * transpose for the swapped form. Measured on shapes like attention's backward pass, this model
 * picks the faster form (the direct form also keeps more rows per XNNPACK call).
 */
function preferSwapped(tA: boolean, tB: boolean, batchA: number, batchB: number, batchOut: number, M: number, K: number, N: number): boolean {
  const sizeA = batchA * K * M;
  const sizeB = batchB * K * N;
  const direct = (tA ? sizeA : 0) + (tB ? sizeB : 0) + sizeB;
  const swapped = (tA ? 0 : sizeA) + (tB ? 0 : sizeB) + sizeA + batchOut * M * N;
  return swapped < direct;
}

/**
 * New [M,N] tensor (owned by s) = op(a)·op(b) for 2-D a, b (op = transpose when its flag is set).
 */
export function matMul2D(s: Scratch, a: TensorInfo, b: TensorInfo, tA: boolean, tB: boolean): TensorInfo {
  const [ar, ac] = a.shape as [number, number];
  const [br, bc] = b.shape as [number, number];
  const M = tA ? ac : ar;
  const K = tA ? ar : ac;
  const N = tB ? br : bc;
  return product(s, a, b, tA, tB, [], [], M, K, N);
}

/** The broadcast batch dims of a product and the element counts of each side's batch. */
function batchesOf(outerA: number[], outerB: number[]) {
  const outerOut = tf.backend_util.assertAndGetBroadcastShape(outerA, outerB);
  return { outerOut, batchA: tf.util.sizeFromShape(outerA), batchB: tf.util.sizeFromShape(outerB), batchOut: tf.util.sizeFromShape(outerOut) };
}

/**
 * New [batchOut, M, N] tensor (owned by s; [M, N] when there is no batch) = op(a)·op(b) with tfjs's
 * batch broadcasting; `outerA`/`outerB` are the operands' batch dims.
 */
function product(
  s: Scratch, a: TensorInfo, b: TensorInfo, tA: boolean, tB: boolean, outerA: number[], outerB: number[],
  M: number, K: number, N: number,
): TensorInfo {
  const { batchA, batchB, batchOut } = batchesOf(outerA, outerB);
  const native = activeNative();
  if (native) return nativeProduct(s, native, a, b, tA, tB, outerA, outerB, M, K, N);
  if ((tA || tB) && preferSwapped(tA, tB, batchA, batchB, batchOut, M, K, N)) {
    // Cᵀ = op(B)ᵀ·op(A)ᵀ: B's stored layout read with the opposite flag, and so for A.
    const ct = direct(s, b, a, !tB, !tA, outerB, outerA, N, K, M);
    return transposeLast2(s, ct, batchOut, N, M);
  }
  return direct(s, a, b, tA, tB, outerA, outerB, M, K, N);
}

/**
 * op(a)·op(b) as plain XNNPACK products: one folded product when B has no batch, else one per
 * batch element, each flagged operand transposed just before its product (still in cache).
 */
function direct(
  s: Scratch, a: TensorInfo, b: TensorInfo, tA: boolean, tB: boolean, outerA: number[], outerB: number[],
  M: number, K: number, N: number,
): TensorInfo {
  const { outerOut, batchA, batchB, batchOut } = batchesOf(outerA, outerB);
  if (batchB === 1 && batchA === batchOut) {
    // A's batch folds into its rows: one [batch*M, K]·[K, N] product, already in output order.
    const a3 = tA ? transposeLast2(s, a, batchA, K, M) : a;
    const b2 = tB ? transposeLast2(s, b, 1, N, K) : b;
    return plain(s, alias(a3, [batchA * M, K]), alias(b2, [K, N]), batchA * M, K, N);
  }
  const ia = broadcastBatchIndex(outerOut, outerA);
  const ib = broadcastBatchIndex(outerOut, outerB);
  return loopBatches(s, a, b, tA, tB, ia, ib, M, K, N);
}

/**
 * op(a)·op(b) on the native addon (native.ts), straight from and into the heap: it packs the
 * operands itself, so transposes and batch broadcasting cost no extra pass.
 */
function nativeProduct(
  s: Scratch, native: NativeAddon, a: TensorInfo, b: TensorInfo, tA: boolean, tB: boolean,
  outerA: number[], outerB: number[], M: number, K: number, N: number,
): TensorInfo {
  const { outerOut, batchA, batchB, batchOut: batch } = batchesOf(outerA, outerB);
  const out = s.alloc(outerOut.length === 0 ? [M, N] : [batch, M, N]);
  // Equal batch sizes mean equal batch shapes (a broadcast dim only grows): element i is element i.
  const ia = batchA === batch ? null : broadcastBatchIndex(outerOut, outerA);
  const ib = batchB === batch ? null : broadcastBatchIndex(outerOut, outerB);
  const be = s.be;
  // HEAPF32 taken after the allocation above: a heap growth replaces the array.
  native.gemm(be.wasm.HEAPF32, offsetOf(be, a), offsetOf(be, b), offsetOf(be, out), M, K, N, tA, tB, batch, ia, ib);
  return out;
}

/** For each flat index into the broadcast batch `outDims`, the flat index into `inDims` (right-aligned). */
export function broadcastBatchIndex(outDims: number[], inDims: number[]): Int32Array {
  const n = tf.util.sizeFromShape(outDims);
  const res = new Int32Array(n);
  const shift = outDims.length - inDims.length;
  const inStride = inDims.map((_, d) => tf.util.sizeFromShape(inDims.slice(d + 1)));
  for (let i = 0; i < n; i++) {
    let rem = i;
    let idx = 0;
    for (let d = outDims.length - 1; d >= 0; d--) {
      const c = rem % outDims[d]!;
      rem = Math.floor(rem / outDims[d]!);
      const di = d - shift;
      if (di >= 0 && inDims[di] !== 1) idx += c * inStride[di]!;
    }
    res[i] = idx;
  }
  return res;
}

/**
 * out[i] = op(A[ia[i]])·op(B[ib[i]]) for every batch element, XNNPACK on views of the stored
 * operands, or of a one-element scratch holding the transpose of a flagged operand's element.
 */
function loopBatches(
  s: Scratch, a: TensorInfo, b: TensorInfo, tA: boolean, tB: boolean, ia: Int32Array, ib: Int32Array,
  M: number, K: number, N: number,
): TensorInfo {
  const batch = ia.length;
  if (K === 0) return s.zeros([batch, M, N]);
  const out = s.alloc([batch, M, N]);
  if (M === 0 || N === 0) return out;
  const be = s.be;
  const aOff = offsetOf(be, a);
  const bOff = offsetOf(be, b);
  const outOff = offsetOf(be, out);
  const aBuf = tA ? offsetOf(be, s.alloc([M, K])) : 0;
  const bBuf = tB ? offsetOf(be, s.alloc([K, N])) : 0;
  let aIdx = -1;
  let bIdx = -1;
  let aView = 0;
  let bView = 0;
  for (let i = 0; i < batch; i++) {
    // Operands are re-viewed (and re-transposed) only when the batch index changes (broadcasting).
    if (ia[i] !== aIdx) {
      if (aView) s.dropView(aView);
      aIdx = ia[i]!;
      const src = aOff + aIdx * M * K * 4;
      if (tA) transposeMatrix(be, src, aBuf, K, M);
      aView = s.view(tA ? aBuf : src, M * K);
    }
    if (ib[i] !== bIdx) {
      // A new id each time: XNNPACK keys its packed copy of B on the id.
      if (bView) s.dropView(bView);
      bIdx = ib[i]!;
      const src = bOff + bIdx * K * N * 4;
      if (tB) transposeMatrix(be, src, bBuf, N, K);
      bView = s.view(tB ? bBuf : src, K * N);
    }
    const outView = s.view(outOff + i * M * N * 4, M * N);
    xnnMatMul(be, aView, bView, outView, M, K, N);
    s.dropView(outView);
  }
  return out;
}

/** The pack's BatchMatMul: same contract as tfjs's (rank >= 2, broadcast batch dims). */
export function packBatchMatMul(args: Parameters<KernelFunc>[0]): TensorInfo {
  const { inputs, backend, attrs } = args;
  const a = inputs.a as TensorInfo;
  const b = inputs.b as TensorInfo;
  const { transposeA: tA, transposeB: tB } = attrs as unknown as BatchMatMulAttrs;
  if (a.dtype !== 'float32' || b.dtype !== 'float32') return stockKernel(tf.BatchMatMul)(args) as TensorInfo;
  const aRank = a.shape.length;
  const bRank = b.shape.length;
  const M = tA ? a.shape[aRank - 1]! : a.shape[aRank - 2]!;
  const K = tA ? a.shape[aRank - 2]! : a.shape[aRank - 1]!;
  const Kb = tB ? b.shape[bRank - 1]! : b.shape[bRank - 2]!;
  const N = tB ? b.shape[bRank - 2]! : b.shape[bRank - 1]!;
  if (K !== Kb) {
    throw new Error(
      `Error in matMul: inner shapes (${K}) and (${Kb}) of Tensors with shapes ${a.shape} and ${b.shape} ` +
        `and transposeA=${tA} and transposeB=${tB} must match.`,
    );
  }
  const outerA = a.shape.slice(0, -2);
  const outerB = b.shape.slice(0, -2);
  const outerOut = tf.backend_util.assertAndGetBroadcastShape(outerA, outerB);
  const outShape = [...outerOut, M, N];
  const batchA = tf.util.sizeFromShape(outerA);
  const batchB = tf.util.sizeFromShape(outerB);

  const empty = M === 0 || K === 0 || N === 0; // XNNPACK refuses empty operands (it logs an error)
  if (!tA && !tB && batchA === 1 && batchB === 1 && !empty && !activeNative() && packableAs(b, K, N)) {
    return stockKernel(tf.BatchMatMul)(args) as TensorInfo; // the plain XNNPACK case
  }
  return withScratch(backend, (s) => {
    const r = product(s, a, b, tA, tB, outerA, outerB, M, K, N);
    s.keep(r);
    return { dataId: r.dataId, shape: outShape, dtype: 'float32' };
  });
}
