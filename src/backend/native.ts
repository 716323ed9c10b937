/**
 * The native matrix-multiply addon (native/: C++, AVX-512 or AVX2+FMA, built by `npm ci` through
 * node-gyp): the wasm kernel pack hands it every float32 BatchMatMul. It reads and writes the
 * operands in place in the wasm heap (a typed array over the heap plus byte offsets), so tensors stay
 * where tfjs-wasm keeps them; only the product runs outside WebAssembly, whose 128-bit SIMD reaches
 * ~45 GFLOP/s per core where AVX-512 reaches ~200 here.
 *
 * MGLLAVA_NATIVE: `auto` (default: used when the addon loads and the CPU has AVX2+FMA or AVX-512,
 * otherwise XNNPACK, said by `mgllava doctor` and every benchmark line), `on` (required: selecting the
 * wasm backend fails when it is missing), `off` (XNNPACK). MGLLAVA_NATIVE_THREADS: threads of the
 * addon's pool (default: one per core, at most 8); each output element is computed the same way
 * whatever the split, so results are bitwise identical for every thread count. MGLLAVA_NATIVE_ISA:
 * auto (default) | avx512 | avx2. MGLLAVA_NATIVE_ADDON: another build of the addon (a .node file).
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import { fileURLToPath } from 'node:url';

export interface NativeAddon {
  /** c = op(a)·op(b) over `batch` elements; offsets in bytes from the start of `heap`. */
  gemm(
    heap: Float32Array, aOffset: number, bOffset: number, cOffset: number, m: number, k: number, n: number,
    transA: boolean, transB: boolean, batch: number, aIndex: Int32Array | null, bIndex: Int32Array | null,
  ): void;
  setThreads(n: number): void;
  /** 'auto' | 'avx512' | 'avx2'; throws when the CPU lacks it. */
  setIsa(name: string): void;
  info(): { isa: string; threads: number };
}

export type NativeMode = 'auto' | 'on' | 'off';
export const NATIVE_ISAS = ['auto', 'avx512', 'avx2'] as const;
export type NativeIsa = (typeof NATIVE_ISAS)[number];

export interface NativeStatus {
  mode: NativeMode;
  /** True when BatchMatMul runs on the addon now. */
  active: boolean;
  /** 'avx512' | 'avx2' when loaded. */
  isa: string | null;
  threads: number;
  /** Why it is (not) active. */
  detail: string;
  path: string;
}

export const NATIVE_ADDON_PATH = fileURLToPath(new URL('../../native/build/Release/mgllava_native.node', import.meta.url));

export function parseNativeMode(raw: string | undefined): NativeMode {
  const v = (raw ?? '').trim().toLowerCase();
  if (v === '' || v === 'auto') return 'auto';
  if (v === 'on' || v === '1' || v === 'true') return 'on';
  if (v === 'off' || v === '0' || v === 'false') return 'off';
  throw new Error(`MGLLAVA_NATIVE='${raw}': expected auto, on or off`);
}

/** MGLLAVA_NATIVE_ISA: which micro-kernel (default the best the CPU has; avx2 where AVX-512 clocks down). */
export function parseNativeIsa(raw: string | undefined): NativeIsa {
  const v = (raw ?? '').trim().toLowerCase();
  if (v === '') return 'auto';
  if ((NATIVE_ISAS as readonly string[]).includes(v)) return v as NativeIsa;
  throw new Error(`MGLLAVA_NATIVE_ISA='${raw}': expected ${NATIVE_ISAS.join(', ')}`);
}

/** Default: one thread per core, at most 8 (the products of these models stop scaling well past that). */
export function defaultNativeThreads(): number {
  return Math.max(1, Math.min(8, os.availableParallelism()));
}

export function parseNativeThreads(raw: string | undefined): number {
  if (raw == null || raw.trim() === '') return defaultNativeThreads();
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1 || n > 64) throw new Error(`MGLLAVA_NATIVE_THREADS='${raw}': expected an integer in [1, 64]`);
  return n;
}

let addon: NativeAddon | null = null;
let addonPath = NATIVE_ADDON_PATH;
let status: NativeStatus = { mode: 'auto', active: false, isa: null, threads: 0, detail: 'not configured (the wasm backend was not selected)', path: addonPath };

function load(): { addon: NativeAddon | null; detail: string } {
  if (!existsSync(addonPath)) {
    return { addon: null, detail: `addon not built (${addonPath} missing: \`npm ci\` builds it with node-gyp, which needs python3, make and a C++ compiler; rebuild with \`npm run build:native\`)` };
  }
  try {
    const mod = createRequire(import.meta.url)(addonPath) as NativeAddon;
    if (!mod.info().isa) return { addon: null, detail: 'addon loaded, but this CPU has neither AVX-512 nor AVX2+FMA' };
    return { addon: mod, detail: 'loaded' };
  } catch (e) {
    return { addon: null, detail: `addon failed to load: ${(e as Error).message.split('\n')[0]}` };
  }
}

function activeStatus(mode: NativeMode, mod: NativeAddon): NativeStatus {
  const { isa, threads } = mod.info();
  const detail = `BatchMatMul on the native addon (${isa}, ${threads} thread${threads > 1 ? 's' : ''})`;
  return { mode, active: true, isa, threads, detail, path: addonPath };
}

function inactiveStatus(mode: NativeMode, why: string): NativeStatus {
  return { mode, active: false, isa: null, threads: 0, detail: `BatchMatMul on XNNPACK (${why})`, path: addonPath };
}

/**
 * Decide from the environment whether BatchMatMul runs natively (called when the wasm backend is
 * selected). Throws when MGLLAVA_NATIVE=on and the addon is unusable, or on a malformed variable.
 */
export function configureNative(env: NodeJS.ProcessEnv = process.env): NativeStatus {
  const mode = parseNativeMode(env.MGLLAVA_NATIVE);
  const threads = parseNativeThreads(env.MGLLAVA_NATIVE_THREADS);
  const isa = parseNativeIsa(env.MGLLAVA_NATIVE_ISA);
  addonPath = env.MGLLAVA_NATIVE_ADDON?.trim() || NATIVE_ADDON_PATH;
  if (mode === 'off') {
    addon = null;
    status = inactiveStatus(mode, 'native addon switched off');
    return status;
  }
  const loaded = load();
  if (!loaded.addon) {
    if (mode === 'on') throw new Error(`MGLLAVA_NATIVE=on but the native matmul is unusable: ${loaded.detail}`);
    addon = null;
    status = inactiveStatus(mode, loaded.detail);
    return status;
  }
  try {
    loaded.addon.setIsa(isa);
  } catch (e) {
    throw new Error(`MGLLAVA_NATIVE_ISA=${isa}: ${(e as Error).message}`);
  }
  addon = loaded.addon;
  addon.setThreads(threads);
  status = activeStatus(mode, addon);
  return status;
}

/** The addon when BatchMatMul should use it, else null. */
export function activeNative(): NativeAddon | null {
  return addon;
}

export function nativeStatus(): NativeStatus {
  return status;
}

/**
 * Which code does the matrix products on `backend` (tf.getBackend()): on wasm 'native <isa> x<threads>' (the
 * addon) or 'xnnpack'; elsewhere the backend's name. Results differ in the last bits between them, so runs,
 * evals and benchmarks record it.
 */
export function matmulPath(backend: string): string {
  if (backend !== 'wasm') return backend;
  return status.active ? `native ${status.isa} x${status.threads}` : 'xnnpack';
}

/**
 * Switch the native path on or off at run time (tests and benchmarks compare it with XNNPACK);
 * returns the previous state. Switching on requires a loadable addon.
 */
export function setNativeActive(on: boolean): boolean {
  const was = addon != null;
  addon = on ? anyAddon() : null;
  status = addon ? activeStatus(status.mode, addon) : inactiveStatus(status.mode, 'native addon switched off at run time');
  return was;
}

/** The active addon, else a freshly loaded one (tests, benchmarks); throws when there is none. */
function anyAddon(): NativeAddon {
  if (addon) return addon;
  const loaded = load();
  if (!loaded.addon) throw new Error(`native matmul unavailable: ${loaded.detail}`);
  return loaded.addon;
}

/** The addon's micro-kernel (tests run every kernel the CPU has). */
export function setNativeIsa(name: NativeIsa): void {
  anyAddon().setIsa(name);
  if (addon) status = activeStatus(status.mode, addon);
}

/** Threads of the addon's pool (benchmarks, tests). */
export function setNativeThreads(n: number): void {
  anyAddon().setThreads(n);
  if (addon) status = activeStatus(status.mode, addon);
}
