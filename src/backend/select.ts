/**
 * Backend selection: the best TensorFlow.js backend that loads, `tensorflow` > `webgpu` > `wasm` > `cpu`.
 * `webgpu` is taken automatically only on a hardware adapter: a software one (lavapipe, SwiftShader) emulates
 * the GPU on the CPU, far slower than wasm; `--backend webgpu` uses any adapter.
 *
 * An explicitly requested backend (flag or MGLLAVA_BACKEND) that fails to load is an error, never a
 * silent fallback. `tf.setBackend` returns false instead of throwing when a backend fails to
 * initialise, so both its result and `tf.getBackend()` are checked.
 */
import { createRequire } from 'node:module';
import * as tf from '@tensorflow/tfjs';
import { MgllavaError } from '../errors.js';
import { registerWasmKernelPack } from './kernels/index.js';
import { registerThreadedWasm, wasmThreadsFromEnv } from './kernels/threads.js';
import { installMemoryGuard } from './memory.js';
import { configureNative, nativeStatus } from './native.js';
import { adapterLine, probeAdapter } from './webgpu/adapter.js';
import { loadWebgpu } from './webgpu/backend.js';

export const BACKEND_NAMES = ['tensorflow', 'webgpu', 'wasm', 'cpu'] as const;
export type BackendName = (typeof BACKEND_NAMES)[number];

export interface BackendAttempt {
  name: BackendName;
  ok: boolean;
  /** Which package provided it (tensorflow only) or why it failed. */
  detail: string;
}

export interface BackendChoice {
  name: BackendName;
  /** Human-readable reason for the choice. */
  reason: string;
  /** true when the choice came from --backend or MGLLAVA_BACKEND. */
  explicit: boolean;
  attempts: BackendAttempt[];
  /** Package that provided the `tensorflow` backend, if it loaded. */
  tensorflowPackage: string | null;
}

/** A backend that was asked for and cannot load, or none at all (exit code of category 'backend'). */
export class BackendError extends MgllavaError {
  constructor(message: string) {
    super(message, 'backend');
    this.name = 'BackendError';
  }
}

let current: BackendChoice | null = null;
let pending: Promise<BackendChoice> | null = null;

/** The choice made by the last `selectBackend`, or null before any. */
export function currentBackend(): BackendChoice | null {
  return current;
}

/** Parse a backend name from a flag or the environment; '' / 'auto' mean "pick the best". */
export function parseBackendName(raw: string | undefined | null): BackendName | null {
  if (raw == null) return null;
  const v = raw.trim().toLowerCase();
  if (v === '' || v === 'auto') return null;
  if ((BACKEND_NAMES as readonly string[]).includes(v)) return v as BackendName;
  throw new BackendError(
    `unknown backend '${raw}': expected one of ${BACKEND_NAMES.join(', ')} or 'auto'`,
  );
}

async function loadTensorflow(): Promise<{ ok: boolean; detail: string }> {
  // tfjs-node-gpu first (CUDA), then the CPU build of libtensorflow. Both register 'tensorflow'.
  const failures: string[] = [];
  for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
    try {
      await import(pkg);
      if (tf.findBackendFactory('tensorflow') != null) return { ok: true, detail: pkg };
      failures.push(`${pkg}: loaded but registered no 'tensorflow' backend`);
    } catch (e) {
      const missing = (e as { code?: string }).code === 'ERR_MODULE_NOT_FOUND' && firstLine(e).includes(pkg);
      failures.push(`${pkg}: ${missing ? 'not installed' : firstLine(e)}`);
    }
  }
  return { ok: false, detail: failures.join('; ') };
}

async function loadWasm(): Promise<{ ok: boolean; detail: string }> {
  let threads: number;
  try {
    threads = wasmThreadsFromEnv();
  } catch (e) {
    throw new BackendError(firstLine(e)); // a malformed variable is an error (as MGLLAVA_NATIVE_THREADS), never a silent fall back to cpu
  }
  try {
    await import('@tensorflow/tfjs-backend-wasm');
    if (threads > 1) {
      registerThreadedWasm(threads);
      return { ok: true, detail: `@tensorflow/tfjs-backend-wasm (threaded build, ${threads} threads)` };
    }
    return { ok: true, detail: '@tensorflow/tfjs-backend-wasm' };
  } catch (e) {
    return { ok: false, detail: firstLine(e) };
  }
}

const require = createRequire(import.meta.url);

function installed(pkg: string): boolean {
  try {
    require.resolve(pkg);
    return true;
  } catch {
    return false;
  }
}

/**
 * webgpu: by name, any adapter; automatically, only a hardware one. The automatic check asks a child process
 * (webgpu/adapter.ts `probeAdapter`), so a software adapter that is not used leaves nothing behind here.
 */
async function loadWebgpuBackend(explicit: boolean): Promise<{ ok: boolean; detail: string }> {
  const missing = ['webgpu', '@tensorflow/tfjs-backend-webgpu'].filter((p) => !installed(p));
  if (missing.length) return { ok: false, detail: `optional dependencies not installed: ${missing.join(', ')}` };
  if (!explicit) {
    const probe = await probeAdapter();
    if (!probe.ok) return probe;
    if (probe.adapter.software) {
      return { ok: false, detail: `adapter ${adapterLine(probe.adapter)} is a software adapter: never chosen automatically (--backend webgpu uses it)` };
    }
  }
  return loadWebgpu(explicit);
}

async function activate(name: BackendName, env: NodeJS.ProcessEnv, explicit: boolean): Promise<{ ok: boolean; detail: string }> {
  const loaded =
    name === 'tensorflow'
      ? await loadTensorflow()
      : name === 'webgpu'
        ? await loadWebgpuBackend(explicit)
        : name === 'wasm'
          ? await loadWasm()
          : { ok: true, detail: '@tensorflow/tfjs' };
  if (!loaded.ok) return loaded;
  if (name === 'wasm') await registerWasmKernelPack(); // async: compiles the pack's SIMD loops
  let ok: boolean;
  try {
    ok = await tf.setBackend(name);
    await tf.ready();
  } catch (e) {
    return { ok: false, detail: `setBackend('${name}') threw: ${firstLine(e)}` };
  }
  if (!ok || tf.getBackend() !== name) {
    return { ok: false, detail: `setBackend('${name}') returned ${ok}, active backend is '${tf.getBackend()}'` };
  }
  if (name === 'wasm') {
    try {
      installMemoryGuard();
    } catch (e) {
      throw new BackendError(`wasm memory guard: ${firstLine(e)}`); // e.g. a malformed MGLLAVA_WASM_CEILING_MB
    }
    try {
      const native = configureNative(env);
      return { ok: true, detail: `${loaded.detail}; ${native.detail}` };
    } catch (e) {
      throw new BackendError(firstLine(e)); // MGLLAVA_NATIVE=on without a usable addon, or a malformed variable
    }
  }
  return loaded;
}

/**
 * Choose and initialise the backend. `requested` (from --backend) wins over MGLLAVA_BACKEND; with
 * neither, the best backend that loads is taken. Idempotent for the same request.
 */
export async function selectBackend(
  requested?: string | null,
  env: NodeJS.ProcessEnv = process.env,
): Promise<BackendChoice> {
  if (pending) {
    const prev = await pending;
    const want = parseBackendName(requested ?? env.MGLLAVA_BACKEND);
    if (want == null || want === prev.name) return prev;
    pending = null;
  }
  pending = doSelect(requested, env);
  try {
    current = await pending;
  } catch (e) {
    pending = null;
    throw e;
  }
  return current;
}

async function doSelect(requested: string | null | undefined, env: NodeJS.ProcessEnv): Promise<BackendChoice> {
  const fromFlag = parseBackendName(requested);
  const fromEnv = fromFlag == null ? parseBackendName(env.MGLLAVA_BACKEND) : null;
  const explicit = fromFlag ?? fromEnv;
  const attempts: BackendAttempt[] = [];
  const candidates: BackendName[] = explicit ? [explicit] : [...BACKEND_NAMES];
  for (const name of candidates) {
    const r = await activate(name, env, explicit != null);
    attempts.push({ name, ok: r.ok, detail: r.detail });
    if (!r.ok) continue;
    const skipped = attempts.filter((a) => !a.ok).map((a) => `${a.name} unavailable (${a.detail})`);
    const reason = explicit
      ? `requested by ${fromFlag ? '--backend' : 'MGLLAVA_BACKEND'}`
      : skipped.length
        ? `best available: ${skipped.join('; ')}`
        : 'best available';
    return {
      name,
      reason,
      explicit: explicit != null,
      attempts,
      tensorflowPackage: name === 'tensorflow' ? r.detail : null,
    };
  }
  const why = attempts.map((a) => `${a.name}: ${a.detail}`).join('\n  ');
  if (explicit) {
    const hint =
      explicit === 'tensorflow'
        ? '\nInstall @tensorflow/tfjs-node-gpu (CUDA 11.2 + cuDNN 8.1) or @tensorflow/tfjs-node, or choose --backend wasm.'
        : explicit === 'webgpu'
          ? '\nwebgpu needs the optional dependencies webgpu and @tensorflow/tfjs-backend-webgpu and a Vulkan (Linux), Metal or D3D12 driver; on an NVIDIA server the Vulkan ICD (README: Backends), for tests Mesa >= 25 lavapipe (scripts/install-lavapipe.sh).'
          : '';
    throw new BackendError(
      `backend '${explicit}' was requested by ${fromFlag ? '--backend' : 'MGLLAVA_BACKEND'} but failed to load:\n  ${why}${hint}`,
    );
  }
  throw new BackendError(`no TensorFlow.js backend could be initialised:\n  ${why}`);
}

function firstLine(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  return msg.split('\n')[0]!.slice(0, 300);
}

/** One line for run logs: the backend, why, on wasm where matrix products run, on webgpu the adapter. */
export function describeBackend(choice: BackendChoice): string {
  const extra =
    choice.name === 'wasm'
      ? `; matmul: ${nativeStatus().detail}`
      : choice.name === 'webgpu'
        ? `; ${choice.attempts.find((a) => a.name === 'webgpu' && a.ok)?.detail ?? ''}`
        : '';
  return `backend: ${choice.name} (${choice.reason})${extra}`;
}
