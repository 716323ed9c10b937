/**
 * The wasm kernel pack: gradient kernels the stock wasm backend (tfjs 4.22) lacks and fast paths
 * for the products it runs in a scalar loop. Registered for backend 'wasm' only, before
 * `tf.setBackend('wasm')` (select.ts), so the backend's setup functions run for them as usual.
 *
 * | kernel | stock wasm | pack |
 * |---|---|---|
 * | BatchMatMul | XNNPACK only for plain 2-D; any transpose or batch: scalar loop (0.7-3 GFLOP/s) | always XNNPACK: explicit transposes, batch folding, per-batch views (matmul.ts) |
 * | UnsortedSegmentSum | missing (gather's gradient) | JS row adds on the heap (segment-sum.ts) |
 * | Conv2DBackpropFilter | missing | im2col + XNNPACK matmul (conv2d-backprop.ts) |
 * | Conv2DBackpropInput | scalar C++ loop (~4 GFLOP/s) | XNNPACK matmul + col2im (conv2d-backprop.ts) |
 * | DepthwiseConv2dNativeBackpropInput / ...Filter | missing | JS multiply-add over channels (depthwise-backprop.ts) |
 *
 * How a kernel works on wasm: every tensor lives in the module's heap (`backend.wasm.HEAPF32`) at
 * `backend.dataIdMap.get(dataId).memoryOffset`, and the C++ kernels address tensors by an integer
 * id (`dataIdMap.get(dataId).id`). The pack reads and writes the heap from JavaScript, calls the
 * exported C functions (`BatchMatMul`, through `cwrap`) and registers extra ids on sub-ranges of a
 * tensor ("views", heap.ts) so a C kernel can work on one batch element without a copy (the
 * stock `Slice` copies its whole input first).
 *
 * Checked and fine on stock wasm (gradients agree with cpu, see BACKENDS.md and
 * test/kernels-coverage.test.ts): gather forward, ResizeBilinearGrad, AvgPoolGrad, Prod, Cumsum, Erf,
 * Tile, PadV2, StridedSlice forward. Not fixed here: tfjs-core has no gradient for stridedSlice
 * (use slice), and the stock `_FusedMatMul` (tf.fused.matMul) keeps its slow transposed path.
 *
 * Threads: the pack runs on the single-threaded SIMD build that tfjs picks under Node. The threaded
 * build was tried; see the note at the end of this comment block in the kernel-pack report
 * (THREADS below).
 */
import * as tf from '@tensorflow/tfjs';
import type { KernelConfig, KernelFunc } from '@tensorflow/tfjs';
import { packConv2DBackpropFilter, packConv2DBackpropInput } from './conv2d-backprop.js';
import { packDepthwiseBackpropFilter, packDepthwiseBackpropInput } from './depthwise-backprop.js';
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
};

/** Kernels the stock backend builds on that the pack calls directly (captured before any replacement). */
const STOCK_USED = [tf.BatchMatMul, tf.Transpose, tf.Conv2DBackpropInput];

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
