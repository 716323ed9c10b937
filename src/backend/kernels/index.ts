/**
 * The wasm kernel pack: kernels the stock wasm backend (tfjs 4.22, and only that release:
 * versions.ts) lacks or runs slowly for training. Registered for backend 'wasm' only, before `tf.setBackend('wasm')` (select.ts), so the
 * backend's setup functions run for them as usual; the stock kernel of each replaced name is
 * captured first (stock.ts) and still serves the cases the pack hands back to it.
 *
 * | kernel | stock wasm | pack (GFLOP/s from `mgllava bench kernels`, 1 thread) |
 * |---|---|---|
 * | BatchMatMul | XNNPACK (~46) only for plain 2-D; any transpose or batch: scalar loop, 0.6-3.8 | the native addon when built (../native.ts; AVX-512 here: 145-260 on 1 thread, 210-350 on 2); else always XNNPACK: SIMD transposes of operand(s) or result, batch folding, per-batch heap views: 35-49 (matmul.ts) |
 * | UnsortedSegmentSum | missing (gather's gradient: embeddings) | SIMD row adds (segment-sum.ts) |
 * | Conv2DBackpropFilter | missing | im2col + XNNPACK matmul, 45 for 1x1 (conv2d-backprop.ts) |
 * | Conv2DBackpropInput | scalar C++ loop, ~4 | XNNPACK matmul + col2im, 40-46 (conv2d-backprop.ts) |
 * | DepthwiseConv2dNative | XNNPACK, ~3 for 7x7 (no 49-tap microkernel) | SIMD multiply-add over channels, one call per (output row, tap) when C % 4 = 0: ~12 at C = 16 (was ~3 with one call per pixel), ~14 at C = 256 (depthwise.ts; multiplier 1, NHWC) |
 * | DepthwiseConv2dNativeBackpropInput / ...Filter | missing | same loop, ~14 (depthwise.ts; any multiplier, stride, dilation) |
 * | Slice, SplitV, Unpack | copy the whole input out of the heap first | heap-to-heap copies per contiguous run (copy.ts) |
 * | Sum | over leading axes (bias / norm-weight gradients): transposes first, ~0.4 ms for [512,256] -> [256] | SIMD row adds, same float32 order (reduce.ts); other axes: stock |
 * | Concat | ~0.7 ms to join two [4,4,128,32] halves | heap-to-heap copies per run (copy.ts) |
 * | GatherV2 | ~3 ms for 512 rows of 256 floats | one heap copy per gathered run (copy.ts; batchDims 0, int32 indices) |
 * | Identity, Cast to the same dtype | copies | shares the data (reference count), as cpu does (copy.ts) |
 * | MgllavaRope (the pack's own) | - | rotary embedding forward / gradient in one SIMD pass, bit-identical to the matmul composite (rope.ts, model/llm/rope.ts) |
 * | MgllavaAdamW (the pack's own) | - | one SIMD pass per parameter for AdamW, bit-identical to the tfjs composite (adamw.ts, nn/adamw-update.ts) |
 *
 * How a kernel works on wasm: every tensor lives in the module's heap (`backend.wasm.HEAPF32`) at
 * `backend.dataIdMap.get(dataId).memoryOffset`; the C++ kernels address tensors by an integer id
 * (`dataIdMap.get(dataId).id`). The pack reads and writes the heap from JavaScript, calls the
 * exported C `BatchMatMul` through `cwrap`, registers extra ids on sub-ranges of a tensor ("views",
 * heap.ts) so XNNPACK can work on one batch element without a copy, and runs its own small SIMD
 * loops (simd.wat, compiled by wabt into a module that imports the backend's memory: simd.ts).
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
 * - Stock wasm Cast float32 -> bool keeps the value's low byte (2.5 -> 2, -1.7 -> 255) instead of
 *   x != 0 (not fixed: the project casts comparisons, not floats, to bool).
 * - Fine on stock wasm (gradients agree with cpu, test/kernels-coverage.test.ts): gather,
 *   ResizeBilinearGrad, AvgPoolGrad, MaxPoolGrad, Prod, Cumsum, Erf, Tile, PadV2, StridedSlice
 *   forward. tfjs-core has no stridedSlice gradient on any backend (use slice). Not handled:
 *   `_FusedMatMul` (tf.fused.matMul, tf.layers Dense) keeps the stock slow transposed path and the
 *   stale-operator cache; the project does not use it. Stock Exp is slow (~200 M/s: 5 ms for the
 *   [512, 2000] logits of the decoder benchmark).
 *
 * Threads (threads.ts): stock wasm in Node loads the single-threaded SIMD build. With
 * MGLLAVA_WASM_THREADS=N (N >= 2) the threaded build is started instead (Emscripten factory called
 * directly, worker script written to the temp dir, `os.cpus()` faked while the pool is created: the
 * C++ side caps it at cores / 2). XNNPACK's products then split over N threads: 45 -> 88 GFLOP/s
 * on the decoder's [512,256]x[256,688] with 2 threads on an idle 2-core machine, and the tiny-e2e
 * step goes from ~250/~350 ms (pretrain/sft) to ~190/~255 ms. But every parallel product ends with
 * a barrier: when another process holds the second core, the main thread waits for a descheduled
 * worker at each of the ~300 products of a step and the step gets ~3x slower than single-threaded
 * (measured here while other jobs ran). Hence opt-in, not the default. The pack's own loops
 * (simd.ts) run on the main thread; their module imports the shared memory.
 */
import * as tf from '@tensorflow/tfjs';
import type { KernelConfig, KernelFunc } from '@tensorflow/tfjs';
import { packConv2DBackpropFilter, packConv2DBackpropInput } from './conv2d-backprop.js';
import { packCast, packConcat, packGatherV2, packIdentity, packSlice, packSplitV, packUnpack } from './copy.js';
import { packDepthwiseBackpropFilter, packDepthwiseBackpropInput, packDepthwiseConv2d } from './depthwise.js';
import { ADAMW_KERNEL, packAdamW } from './adamw.js';
import { packBatchMatMul } from './matmul.js';
import { packSum } from './reduce.js';
import { ROPE_KERNEL, packRope } from './rope.js';
import { packUnsortedSegmentSum } from './segment-sum.js';
import { loadSimdModules } from './simd.js';
import { captureStock } from './stock.js';
import { assertPackVersions } from './versions.js';

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
  [tf.Concat]: packConcat as KernelFunc,
  [tf.GatherV2]: packGatherV2 as KernelFunc,
  [tf.Identity]: packIdentity as KernelFunc,
  [tf.Cast]: packCast as KernelFunc,
  [tf.Sum]: packSum as KernelFunc,
  [ADAMW_KERNEL]: packAdamW as KernelFunc,
  [ROPE_KERNEL]: packRope as KernelFunc,
};

/** Kernels the stock backend builds on that the pack calls directly (captured before any replacement). */
const STOCK_USED = [tf.BatchMatMul, tf.Transpose, tf.Conv2DBackpropInput, tf.DepthwiseConv2dNative, tf.Sum, tf.GatherV2, tf.Cast, tf.Concat];

let registered = false;

/**
 * Register the pack for backend 'wasm' (idempotent). Must run after `@tensorflow/tfjs-backend-wasm`
 * is imported (it registers the stock kernels) and before the backend is initialised. Refuses a tfjs
 * release other than the one the pack was written for (versions.ts). The kernels are registered
 * before the first await; the returned promise settles when the SIMD loops are compiled, which must
 * happen before any pack kernel runs.
 */
export async function registerWasmKernelPack(): Promise<void> {
  if (!registered) {
    assertPackVersions();
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
  await loadSimdModules();
}

export function wasmKernelPackRegistered(): boolean {
  return registered;
}
