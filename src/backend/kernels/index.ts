/**
 * The wasm kernel pack: kernels the stock wasm backend (tfjs 4.22) lacks or runs slowly for
 * training. Registered for backend 'wasm' only, before `tf.setBackend('wasm')` (select.ts), so the
 * backend's setup functions run for them as usual; the stock kernel of each replaced name is
 * captured first (stock.ts) and still serves the cases the pack hands back to it.
 *
 * | kernel | stock wasm | pack (GFLOP/s from `mgllava bench kernels`, 1 thread) |
 * |---|---|---|
 * | BatchMatMul | XNNPACK (~46) only for plain 2-D; any transpose or batch: scalar loop, 0.6-3.8 | always XNNPACK: SIMD transposes of operand(s) or result, batch folding, per-batch heap views: 35-49 (matmul.ts) |
 * | UnsortedSegmentSum | missing (gather's gradient: embeddings) | SIMD row adds (segment-sum.ts) |
 * | Conv2DBackpropFilter | missing | im2col + XNNPACK matmul, 45 for 1x1 (conv2d-backprop.ts) |
 * | Conv2DBackpropInput | scalar C++ loop, ~4 | XNNPACK matmul + col2im, 40-46 (conv2d-backprop.ts) |
 * | DepthwiseConv2dNative | XNNPACK, ~3 for 7x7 (no 49-tap microkernel) | SIMD multiply-add over channels, ~14 (depthwise.ts; multiplier 1, NHWC) |
 * | DepthwiseConv2dNativeBackpropInput / ...Filter | missing | same loop, ~14 (depthwise.ts; any multiplier, stride, dilation) |
 * | Slice, SplitV, Unpack | copy the whole input out of the heap first | heap-to-heap copies per contiguous run (copy.ts) |
 * | Identity | copies | shares the data (reference count), as cpu does (copy.ts) |
 *
 * How a kernel works on wasm: every tensor lives in the module's heap (`backend.wasm.HEAPF32`) at
 * `backend.dataIdMap.get(dataId).memoryOffset`; the C++ kernels address tensors by an integer id
 * (`dataIdMap.get(dataId).id`). The pack reads and writes the heap from JavaScript, calls the
 * exported C `BatchMatMul` through `cwrap`, registers extra ids on sub-ranges of a tensor ("views",
 * heap.ts) so XNNPACK can work on one batch element without a copy, and runs its own small SIMD
 * loops (simd.ts: a WebAssembly module assembled at load time that imports the backend's memory).
 * Every kernel frees its temporaries, also when it throws (heap.ts `withScratch`).
 *
 * Found on the way (tests in test/kernels-*.test.ts):
 * - Stock BatchMatMul caches XNNPACK's packed B per tensor id, not per shape: the same data used as
 *   B under another reshape got a stale operator (wrong values or "memory access out of bounds").
 *   The pack hands XNNPACK a fresh view id in that case.
 * - The cpu backend is wrong where one would compare against it: its BatchMatMul mishandles batch
 *   broadcasting on both sides ([2,1,..] x [1,3,..] gives 3 products, not 6), its
 *   ResizeBilinearGrad labels a non-square result [B,W,H,C], and its depthwise backprop kernels ignore
 *   dilations. Tests use other references there.
 * - Fine on stock wasm (gradients agree with cpu, test/kernels-coverage.test.ts): gather,
 *   ResizeBilinearGrad, AvgPoolGrad, MaxPoolGrad, Prod, Cumsum, Erf, Tile, PadV2, StridedSlice
 *   forward. tfjs-core has no stridedSlice gradient on any backend (use slice). Not handled:
 *   `_FusedMatMul` (tf.fused.matMul, tf.layers Dense) keeps the stock slow transposed path and the
 *   stale-operator cache; the project does not use it. Stock Exp is slow (~200 M/s: 5 ms for the
 *   [512, 2000] logits of the decoder benchmark).
 *
 * Threads: stock wasm in Node loads the single-threaded SIMD build. The threaded build can be
 * started in Node (factory from wasm-out/, worker script written to a temp file, backend
 * re-registered), but (1) its C++ side caps the thread pool at logical cores / 2 = 1 on this
 * 2-vCPU machine, so a second thread needs `os.cpus()` faked during start-up; (2) with 2 threads
 * it measured no faster here: 1024^3 matmul 29-47 GFLOP/s vs 45-49 single-threaded, and slower and
 * erratic on small products ([2048,64]x[64,256]: 26 vs 43-47), the machine's two cores being shared
 * with other processes (vitest workers, CI); (3) it needs SharedArrayBuffer memory and a temp file.
 * Not kept. Worth re-measuring on a machine with >= 4 idle cores.
 */
import * as tf from '@tensorflow/tfjs';
import type { KernelConfig, KernelFunc } from '@tensorflow/tfjs';
import { packConv2DBackpropFilter, packConv2DBackpropInput } from './conv2d-backprop.js';
import { packIdentity, packSlice, packSplitV, packUnpack } from './copy.js';
import { packDepthwiseBackpropFilter, packDepthwiseBackpropInput, packDepthwiseConv2d } from './depthwise.js';
import { packBatchMatMul } from './matmul.js';
import { packUnsortedSegmentSum } from './segment-sum.js';
import { captureStock } from './stock.js';

/** The pack's kernels by tfjs kernel name. */
export const PACK_KERNELS: Readonly<Record<string, KernelFunc>> = {
  [tf.BatchMatMul]: packBatchMatMul as KernelFunc,
  [tf.UnsortedSegmentSum]: packUnsortedSegmentSum as KernelFunc,
  [tf.Conv2DBackpropFilter]: packConv2DBackpropFilter as KernelFunc,
  [tf.Conv2DBackpropInput]: packConv2DBackpropInput as KernelFunc,
  [tf.DepthwiseConv2dNativeBackpropInput]: packDepthwiseBackpropInput as KernelFunc,
  [tf.DepthwiseConv2dNativeBackpropFilter]: packDepthwiseBackpropFilter as KernelFunc,
  [tf.DepthwiseConv2dNative]: packDepthwiseConv2d as KernelFunc,
  [tf.Slice]: packSlice as KernelFunc,
  [tf.SplitV]: packSplitV as KernelFunc,
  [tf.Unpack]: packUnpack as KernelFunc,
  [tf.Identity]: packIdentity as KernelFunc,
};

/** Kernels the stock backend builds on that the pack calls directly (captured before any replacement). */
const STOCK_USED = [tf.BatchMatMul, tf.Transpose, tf.Conv2DBackpropInput, tf.DepthwiseConv2dNative];

let registered = false;

/**
 * Register the pack for backend 'wasm' (idempotent). Must run after `@tensorflow/tfjs-backend-wasm`
 * is imported (it registers the stock kernels) and before the backend is initialised.
 */
export function registerWasmKernelPack(): void {
  if (registered) return;
  for (const name of STOCK_USED) {
    if (!captureStock(name)) throw new Error(`wasm kernel pack: stock wasm kernel '${name}' not registered (import @tensorflow/tfjs-backend-wasm first)`);
  }
  for (const [kernelName, kernelFunc] of Object.entries(PACK_KERNELS)) {
    const stock = captureStock(kernelName);
    if (stock) tf.unregisterKernel(kernelName, 'wasm');
    // Keep the stock setup function: the stock kernel may still be called for the plain case.
    const config: KernelConfig = { kernelName, backendName: 'wasm', kernelFunc, setupFunc: stock?.setupFunc };
    tf.registerKernel(config);
  }
  registered = true;
}

export function wasmKernelPackRegistered(): boolean {
  return registered;
}
