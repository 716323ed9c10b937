/**
 * The webgpu kernel pack: kernels mgllava registers for backend 'webgpu' on top of
 * `@tensorflow/tfjs-backend-webgpu` 4.22, beside the wasm pack (../kernels/). Every golden piece, forward and
 * gradients, passes on the package's own kernels plus these (measured on lavapipe; test/webgpu-*.test.ts):
 *
 * | kernel | package | pack |
 * |---|---|---|
 * | AddN | one shader binding every input: more than maxStorageBuffersPerShaderStage - 1 inputs (15 on lavapipe) fails pipeline validation and returns garbage (the global-norm clip's gradient sum) | groups that fit, then their sum (addn.ts) |
 * | MgllavaRope (mgllava's) | - (the model falls back to a matmul + 3 elementwise kernels) | one WGSL pass, forward and gradient (rope.ts) |
 * | MgllavaAdamW (mgllava's) | - (the ~10-kernel composite) | three WGSL passes (adamw.ts) |
 *
 * The package reaches `OffscreenCanvas` for synchronous reads, which Node lacks: the backend class (backend.ts)
 * turns those into an error that says to use `await data()`.
 */
import * as tf from '@tensorflow/tfjs';
import type { KernelConfig, KernelFunc } from '@tensorflow/tfjs';
import { chunkedAddN } from './addn.js';
import { ADAMW_KERNEL, webgpuAdamW } from './adamw.js';
import { ROPE_KERNEL, webgpuRope } from './rope.js';

let registered = false;

/** The pack's kernels by tfjs kernel name (AddN wraps the package's, captured at registration). */
function packKernels(): Record<string, KernelFunc> {
  const stockAddN = tf.getKernel(tf.AddN, 'webgpu');
  if (!stockAddN) throw new Error("webgpu kernel pack: the package's AddN is not registered (import @tensorflow/tfjs-backend-webgpu first)");
  return {
    [tf.AddN]: chunkedAddN(stockAddN.kernelFunc),
    [ROPE_KERNEL]: webgpuRope as KernelFunc,
    [ADAMW_KERNEL]: webgpuAdamW as KernelFunc,
  };
}

/** Register the pack for 'webgpu' (idempotent), replacing the package's kernel of the same name. */
export function registerWebgpuKernelPack(): void {
  if (registered) return;
  for (const [kernelName, kernelFunc] of Object.entries(packKernels())) {
    if (tf.getKernel(kernelName, 'webgpu')) tf.unregisterKernel(kernelName, 'webgpu');
    const config: KernelConfig = { kernelName, backendName: 'webgpu', kernelFunc };
    tf.registerKernel(config);
  }
  registered = true;
}

export function webgpuKernelPackRegistered(): boolean {
  return registered;
}
