/**
 * What the runtime looks like: the facts `mgllava doctor` prints. Separate from selection so that
 * tests and the trainer can record the same facts in a run directory.
 */
import { createRequire } from 'node:module';
import os from 'node:os';
import * as tf from '@tensorflow/tfjs';
import { currentBackend, type BackendChoice } from './select.js';
import { memoryCeilingBytes } from './memory.js';
import { wasmKernelPackRegistered } from './kernels/index.js';
import { nativeStatus, type NativeStatus } from './native.js';
import type { AdapterFacts } from './webgpu/adapter.js';
import { maxTensorBytes, webgpuAdapter, webgpuDeviceLimits } from './webgpu/backend.js';
import { webgpuKernelPackRegistered } from './webgpu/pack.js';

const require = createRequire(import.meta.url);

export interface RuntimeInfo {
  backend: string;
  reason: string;
  explicit: boolean;
  attempts: BackendChoice['attempts'];
  tfjsVersion: string;
  node: string;
  cpus: number;
  totalMemoryBytes: number;
  /** True when computation runs on a GPU: CUDA, or webgpu on a hardware adapter. */
  gpu: boolean;
  tfjsNodeGpu: { installed: boolean; version: string | null; cudaFound: boolean | null; note: string };
  webgpu: {
    /** Versions of the optional packages (null: not installed). */
    dawn: string | null;
    tfjsBackendWebgpu: string | null;
    /** The adapter in use (null unless the backend is webgpu). */
    adapter: AdapterFacts | null;
    /** Limits the device was granted (the adapter's maxima) and the largest tensor they allow. */
    deviceLimits: Record<string, number> | null;
    maxTensorBytes: number | null;
    kernelPack: boolean;
  };
  wasm: { threads: number | null; kernelPack: boolean; simd: boolean | null };
  /** The native matmul addon the wasm kernel pack uses for BatchMatMul (native.ts). */
  native: NativeStatus;
  /** Bytes the memory guard allows live tensors to take on this backend (null: no ceiling enforced). */
  memoryCeilingBytes: number | null;
}

function packageVersion(name: string): string | null {
  try {
    return (require(`${name}/package.json`) as { version: string }).version;
  } catch {
    return null;
  }
}

const CUDA_REQUIREMENT =
  '@tensorflow/tfjs-node-gpu 4.x is built against CUDA 11.2 + cuDNN 8.1; with another CUDA it falls back to its CPU kernels without an error (tfjs issues #8269, #8362)';

export function runtimeInfo(): RuntimeInfo {
  const choice = currentBackend();
  if (!choice) throw new Error('runtimeInfo() called before selectBackend()');
  const gpuVersion = packageVersion('@tensorflow/tfjs-node-gpu');
  const backend = tf.backend() as unknown as { isUsingGpuDevice?: boolean; isGPUPackage?: boolean };
  let cudaFound: boolean | null = null;
  let note: string;
  if (gpuVersion == null) {
    note = 'not installed (optional dependency; its install script downloads libtensorflow, which fails offline)';
  } else if (choice.tensorflowPackage === '@tensorflow/tfjs-node-gpu') {
    cudaFound = backend.isUsingGpuDevice === true;
    note = cudaFound ? 'CUDA device in use' : `loaded, but no CUDA device is used. ${CUDA_REQUIREMENT}`;
  } else {
    note = `installed but not loaded (${choice.attempts.find((a) => a.name === 'tensorflow')?.detail ?? 'another backend was requested'}). ${CUDA_REQUIREMENT}`;
  }
  let threads: number | null = null;
  let simd: boolean | null = null;
  if (choice.name === 'wasm') {
    const wasm = tf.backend() as unknown as { wasm?: { _getThreadsCount?: () => number } };
    threads = wasm.wasm?._getThreadsCount?.() ?? 1;
    simd = tf.env().getBool('WASM_HAS_SIMD_SUPPORT');
  }
  const onWebgpu = choice.name === 'webgpu';
  const adapter = onWebgpu ? webgpuAdapter() : null;
  const limits = onWebgpu ? webgpuDeviceLimits() : null;
  return {
    backend: choice.name,
    reason: choice.reason,
    explicit: choice.explicit,
    attempts: choice.attempts,
    tfjsVersion: tf.version.tfjs,
    node: process.version,
    cpus: os.cpus().length,
    totalMemoryBytes: os.totalmem(),
    gpu: cudaFound === true || (adapter != null && !adapter.software),
    tfjsNodeGpu: { installed: gpuVersion != null, version: gpuVersion, cudaFound, note },
    webgpu: {
      dawn: packageVersion('webgpu'),
      tfjsBackendWebgpu: packageVersion('@tensorflow/tfjs-backend-webgpu'),
      adapter,
      deviceLimits: limits,
      maxTensorBytes: limits ? maxTensorBytes(limits) : null,
      kernelPack: onWebgpu && webgpuKernelPackRegistered(),
    },
    wasm: { threads, kernelPack: choice.name === 'wasm' && wasmKernelPackRegistered(), simd },
    native: nativeStatus(),
    memoryCeilingBytes: memoryCeilingBytes(),
  };
}
