/**
 * WebGPU in Node through Dawn (the `webgpu` package ships a prebuilt `dawn.node`): the GPU object, the adapter
 * it offers, and what that adapter is. `@tensorflow/tfjs-backend-webgpu` registers itself only when
 * `navigator.gpu` exists as it is imported, and uses the WebGPU globals (`GPUBuffer`, `GPUBufferUsage`, ...),
 * so `installDawn` puts both on `globalThis` first.
 *
 * Software adapters (Mesa's lavapipe/llvmpipe, SwiftShader, WARP) emulate a GPU on the CPU at ~1 GFLOP/s:
 * correct, useful for tests, never chosen automatically (select.ts).
 */
import { execFile } from 'node:child_process';

/**
 * The parts of the WebGPU API used here. Declared locally: `webgpu` and its `@webgpu/types` are optional
 * dependencies, and the project must type-check where they are not installed.
 */
export interface GpuAdapter {
  readonly info?: Record<string, unknown>;
  readonly isFallbackAdapter?: boolean;
  readonly limits: Record<string, number>;
  readonly features: ReadonlySet<string>;
  requestDevice(descriptor?: { requiredFeatures?: string[]; requiredLimits?: Record<string, number> }): Promise<GpuDevice>;
}
export interface GpuDevice {
  readonly limits: Record<string, number>;
  readonly features: ReadonlySet<string>;
  readonly lost: Promise<{ reason: string; message: string }>;
  addEventListener(type: 'uncapturederror', listener: (event: { error: { message: string } }) => void): void;
  destroy(): void;
}
export interface Gpu {
  requestAdapter(options?: { powerPreference?: 'high-performance' | 'low-power' }): Promise<GpuAdapter | null>;
}

/** Import an optional package by a name TypeScript does not resolve (it may not be installed). */
export function importOptional<T>(name: string): Promise<T> {
  return import(name) as Promise<T>;
}

/** The adapter facts `doctor` reports. */
export interface AdapterFacts {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  /** 'cpu' for a software adapter, 'gpu' otherwise (WebGPU does not say discrete or integrated). */
  type: 'cpu' | 'gpu';
  /** A CPU emulation of a GPU (see `softwareReason`). */
  software: boolean;
  /** Why it counts as software, or null. */
  softwareReason: string | null;
  /** The adapter's maximum limits (the device is requested with them: webgpu/backend.ts). */
  limits: Record<string, number>;
  features: string[];
}

/** Limits the device is requested with, each at the adapter's maximum (webgpu/backend.ts). */
export const REQUESTED_LIMITS = [
  'maxBufferSize',
  'maxStorageBufferBindingSize',
  'maxStorageBuffersPerShaderStage',
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupSizeY',
  'maxComputeWorkgroupSizeZ',
  'maxComputeWorkgroupsPerDimension',
] as const;

/** Limits worth reporting: the requested ones and the uniform binding size (left at its default). */
export const REPORTED_LIMITS = [...REQUESTED_LIMITS, 'maxUniformBufferBindingSize'] as const;

const SOFTWARE_NAMES = /llvmpipe|lavapipe|softpipe|swiftshader|microsoft basic render|\bwarp\b/i;

/** Whether an adapter is a CPU emulation, and why. */
export function softwareReason(info: { vendor?: string; architecture?: string; device?: string; description?: string; isFallbackAdapter?: boolean }): string | null {
  if (info.isFallbackAdapter === true) return 'a fallback adapter (isFallbackAdapter)';
  if ((info.architecture ?? '').toLowerCase() === 'software') return "architecture 'software'";
  const names = [info.vendor, info.device, info.description].filter(Boolean).join(' ');
  const m = SOFTWARE_NAMES.exec(names);
  return m ? `a CPU rasteriser ('${m[0]}')` : null;
}

export function adapterFacts(adapter: GpuAdapter): AdapterFacts {
  const info = adapter.info ?? {};
  const str = (k: string) => (typeof info[k] === 'string' ? (info[k] as string) : '');
  const fallback = info.isFallbackAdapter === true || adapter.isFallbackAdapter === true;
  const why = softwareReason({ vendor: str('vendor'), architecture: str('architecture'), device: str('device'), description: str('description'), isFallbackAdapter: fallback });
  const limits: Record<string, number> = {};
  for (const k of REPORTED_LIMITS) {
    const v = adapter.limits[k];
    if (typeof v === 'number') limits[k] = v;
  }
  return {
    vendor: str('vendor'),
    architecture: str('architecture'),
    device: str('device'),
    description: str('description'),
    type: why ? 'cpu' : 'gpu',
    software: why != null,
    softwareReason: why,
    limits,
    features: [...adapter.features].map(String).sort(),
  };
}

/** One line naming the adapter: "mesa llvmpipe (software: architecture 'software')". */
export function adapterLine(a: AdapterFacts): string {
  const name = a.description || [a.vendor, a.architecture, a.device].filter(Boolean).join(' ') || 'unnamed adapter';
  return `${name} (${a.software ? `software, ${a.softwareReason}` : 'hardware'})`;
}

let gpu: Gpu | null = null;

/**
 * Load Dawn and expose it as `navigator.gpu` plus the WebGPU globals (idempotent). Throws with the loader's
 * message when the package or its native binary cannot load.
 */
export async function installDawn(): Promise<Gpu> {
  if (gpu) return gpu;
  const dawn = await importOptional<{ create: (flags: string[]) => Gpu; globals: Record<string, unknown> }>('webgpu');
  for (const [k, v] of Object.entries(dawn.globals)) {
    if (!(k in globalThis)) Object.defineProperty(globalThis, k, { value: v, configurable: true, writable: true });
  }
  const created = dawn.create(dawnFlags());
  const nav = (globalThis as { navigator?: object }).navigator;
  if (nav) Object.defineProperty(nav, 'gpu', { value: created, configurable: true, writable: true });
  else Object.defineProperty(globalThis, 'navigator', { value: { gpu: created }, configurable: true, writable: true });
  gpu = created;
  return created;
}

/** Dawn options from MGLLAVA_DAWN_FLAGS (comma-free list separated by spaces, e.g. "adapter=NVIDIA backend=vulkan"). */
function dawnFlags(): string[] {
  return (process.env.MGLLAVA_DAWN_FLAGS ?? '').split(/\s+/).filter(Boolean);
}

/** The adapter tfjs will use (high-performance preference), or null when Dawn finds none. */
export async function requestAdapter(g: Gpu): Promise<GpuAdapter | null> {
  return g.requestAdapter({ powerPreference: 'high-performance' });
}

/** Result of asking for an adapter without touching this process. */
export type ProbeResult = { ok: true; adapter: AdapterFacts } | { ok: false; detail: string };

/**
 * Ask a child Node process what adapter Dawn offers. Automatic selection uses this instead of loading Dawn here:
 * Dawn writes warnings straight to file descriptor 2 while it enumerates some adapters (lavapipe: "max...
 * artificially reduced"), and a software adapter that will not be used should not cost the user that noise or
 * keep a Dawn instance alive in this process.
 */
export function probeAdapter(timeoutMs = 30_000): Promise<ProbeResult> {
  const script = `
    const { create } = await import('webgpu');
    const flags = (process.env.MGLLAVA_DAWN_FLAGS ?? '').split(/\\s+/).filter(Boolean);
    let a = null;
    try { a = await create(flags).requestAdapter({ powerPreference: 'high-performance' }); }
    catch (e) { process.stdout.write(JSON.stringify({ error: String(e && e.message || e).split('\\n')[0] })); process.exit(0); }
    if (!a) { process.stdout.write(JSON.stringify({ none: true })); process.exit(0); }
    const info = {};
    for (const k of ['vendor', 'architecture', 'device', 'description', 'isFallbackAdapter']) info[k] = a.info?.[k];
    const limits = {};
    for (const k in a.limits) limits[k] = a.limits[k];
    process.stdout.write(JSON.stringify({ info, limits, features: [...a.features] }));
    process.exit(0);
  `;
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--input-type=module', '-e', script],
      { cwd: import.meta.dirname, timeout: timeoutMs, encoding: 'utf8', maxBuffer: 1 << 20 },
      (err, stdout, stderr) => {
        let out: { error?: string; none?: boolean; info?: Record<string, unknown>; limits?: Record<string, number>; features?: string[] };
        try {
          out = JSON.parse(stdout);
        } catch {
          const why = err?.killed ? `timed out after ${timeoutMs} ms` : (stderr.trim().split('\n').pop() ?? err?.message ?? 'no output');
          resolve({ ok: false, detail: `adapter probe failed: ${why}` });
          return;
        }
        if (out.error) resolve({ ok: false, detail: notLoadable(out.error) });
        else if (out.none) resolve({ ok: false, detail: NO_ADAPTER });
        else resolve({ ok: true, adapter: adapterFacts(fakeAdapter(out.info ?? {}, out.limits ?? {}, out.features ?? [])) });
      },
    );
  });
}

function fakeAdapter(info: Record<string, unknown>, limits: Record<string, number>, features: string[]): GpuAdapter {
  return { info, limits, features: new Set(features) } as unknown as GpuAdapter;
}

export const NO_ADAPTER =
  'Dawn found no WebGPU adapter (no Vulkan/Metal/D3D12 driver: on Linux a Vulkan ICD, e.g. the NVIDIA driver\'s nvidia_icd.json or Mesa\'s mesa-vulkan-drivers)';

/** A loader error as one line, with what usually causes it. */
export function notLoadable(message: string): string {
  const first = message.split('\n')[0]!.slice(0, 300);
  if (/Cannot find (package|module) 'webgpu'/.test(first) || /ERR_MODULE_NOT_FOUND/.test(first)) {
    return "the optional dependency 'webgpu' (Dawn) is not installed";
  }
  if (/no suitable backends found/.test(first)) return NO_ADAPTER;
  return first;
}
