/**
 * The `webgpu` backend: `@tensorflow/tfjs-backend-webgpu` on a Dawn device, registered by mgllava rather than by
 * the package's own factory so that
 * - the adapter is the one select.ts vetted (hardware only, unless webgpu was asked for by name), and its facts
 *   are kept for `doctor`;
 * - the device gets the adapter's maximum limits (buffer and binding sizes above all: the defaults are
 *   128-256 MiB, a 32000 x 4096 float32 embedding is 500 MiB);
 * - a tensor larger than one binding allows fails when it is made, with a one-line ResourceError, instead of a
 *   WebGPU validation error that would only be logged while the kernel computed garbage;
 * - validation / out-of-memory errors the device reports asynchronously surface at the next read;
 * - a synchronous read of GPU data (dataSync/arraySync) says what to use instead: in Node the package's
 *   readSync needs `OffscreenCanvas`, which does not exist.
 */
import * as tf from '@tensorflow/tfjs';
import { MgllavaError, ResourceError } from '../../errors.js';
import { adapterFacts, adapterLine, importOptional, installDawn, requestAdapter, NO_ADAPTER, notLoadable, REQUESTED_LIMITS, type AdapterFacts, type GpuAdapter, type GpuDevice } from './adapter.js';
import { registerWebgpuKernelPack } from './pack.js';

type BackendCtor = new (device: GpuDevice, adapterInfo: unknown) => tf.KernelBackend;
interface TensorData {
  values: unknown;
  dtype: tf.DataType;
  shape: number[];
}

let adapterInUse: AdapterFacts | null = null;
let deviceLimits: Record<string, number> | null = null;

/** The adapter the webgpu backend runs on (null before it loaded). */
export function webgpuAdapter(): AdapterFacts | null {
  return adapterInUse;
}

/** The limits the device was granted (null before the backend initialised). */
export function webgpuDeviceLimits(): Record<string, number> | null {
  return deviceLimits;
}

/** Bytes of one binding this device allows (the largest tensor it can compute on). */
export function maxTensorBytes(limits: Record<string, number>): number {
  return Math.min(limits.maxStorageBufferBindingSize ?? Infinity, limits.maxBufferSize ?? Infinity);
}

const MiB = 1024 * 1024;
const mib = (b: number) => `${(b / MiB).toFixed(b < 10 * MiB ? 2 : 0)} MiB`;

/** The error for a tensor too big for one storage binding (exported for tests). */
export function tensorTooBig(shape: number[], dtype: string, limits: Record<string, number>, adapter: string): ResourceError {
  const bytes = tf.util.sizeFromShape(shape) * 4;
  return new ResourceError(
    `webgpu: a ${dtype} tensor [${shape.join(', ')}] needs ${mib(bytes)}, more than one storage buffer of this device can hold ` +
      `(maxStorageBufferBindingSize ${mib(limits.maxStorageBufferBindingSize ?? NaN)}, maxBufferSize ${mib(limits.maxBufferSize ?? NaN)}; ${adapter})`,
    { hint: 'use a GPU whose adapter allows larger buffers (`mgllava doctor --backend webgpu` lists the limits), a smaller model, or --backend tensorflow' },
  );
}

/** The package's backend class with mgllava's checks (see the file comment). */
function checkedBackend(Base: BackendCtor, device: GpuDevice, adapter: AdapterFacts): BackendCtor {
  const limit = maxTensorBytes(device.limits);
  const pending: MgllavaError[] = [];
  let lost: string | null = null;
  device.addEventListener('uncapturederror', (event) => {
    const msg = event.error.message.split('\n')[0]!.slice(0, 400);
    pending.push(/out of memory/i.test(msg) ? new ResourceError(`webgpu: the device ran out of memory: ${msg}`) : new MgllavaError(`webgpu: the device reported an error: ${msg}`, 'backend'));
  });
  void device.lost.then((info) => {
    lost = `${info.reason}: ${info.message}`;
  });
  const fits = (shape: number[], dtype: tf.DataType) => {
    if (dtype === 'string' || dtype === 'complex64') return;
    if (tf.util.sizeFromShape(shape) * 4 > limit) throw tensorTooBig(shape, dtype, device.limits, adapterLine(adapter));
  };
  const raisePending = () => {
    if (lost) throw new MgllavaError(`webgpu: the device was lost (${lost})`, 'backend', { hint: 'a driver reset or an out-of-memory condition; run again' });
    const e = pending.shift();
    if (e) {
      pending.length = 0;
      throw e;
    }
  };
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const B = Base as unknown as new (...a: any[]) => any;
  return class MgllavaWebGpuBackend extends B {
    write(values: unknown, shape: number[], dtype: tf.DataType) {
      fits(shape, dtype);
      return super.write(values, shape, dtype);
    }
    move(dataId: object, values: unknown, shape: number[], dtype: tf.DataType, refCount: number) {
      fits(shape, dtype);
      return super.move(dataId, values, shape, dtype, refCount);
    }
    readSync(dataId: object) {
      const d = (this as unknown as { tensorMap: { get(id: object): TensorData } }).tensorMap.get(dataId);
      if (d && d.values == null && d.dtype !== 'string') {
        throw new Error(
          `webgpu: synchronous read (dataSync/arraySync/print) of a [${d.shape}] ${d.dtype} tensor on the GPU: not possible in Node (no OffscreenCanvas); use await tensor.data() / array()`,
        );
      }
      return super.readSync(dataId);
    }
    async read(dataId: object) {
      raisePending();
      const values = await super.read(dataId);
      raisePending(); // errors of the work this read waited for
      return values;
    }
  } as unknown as BackendCtor;
}

/**
 * Load Dawn and the package, and register `webgpu` on the adapter Dawn offers. `allowSoftware` false refuses a
 * software adapter (automatic selection). Returns what select.ts records as the attempt.
 */
export async function loadWebgpu(allowSoftware: boolean): Promise<{ ok: boolean; detail: string }> {
  let adapter: GpuAdapter | null;
  let Base: BackendCtor;
  try {
    const gpu = await installDawn();
    adapter = await requestAdapter(gpu);
    if (!adapter) return { ok: false, detail: NO_ADAPTER };
    ({ WebGPUBackend: Base } = await importOptional<{ WebGPUBackend: BackendCtor }>('@tensorflow/tfjs-backend-webgpu'));
  } catch (e) {
    return { ok: false, detail: notLoadable(e instanceof Error ? e.message : String(e)) };
  }
  const facts = adapterFacts(adapter);
  if (facts.software && !allowSoftware) {
    return { ok: false, detail: `adapter ${adapterLine(facts)} is a software adapter: never chosen automatically (--backend webgpu uses it)` };
  }
  const chosen = adapter;
  // The package registered its own factory at import; ours replaces it (same name, our device and class).
  if (tf.findBackendFactory('webgpu') != null && tf.findBackend('webgpu') == null) tf.removeBackend('webgpu');
  if (tf.findBackend('webgpu') == null) {
    tf.registerBackend(
      'webgpu',
      async () => {
        const requiredLimits: Record<string, number> = {};
        for (const k of REQUESTED_LIMITS) if (typeof chosen.limits[k] === 'number') requiredLimits[k] = chosen.limits[k]!;
        const requiredFeatures = chosen.features.has('timestamp-query') ? ['timestamp-query'] : [];
        const device = await chosen.requestDevice({ requiredFeatures, requiredLimits });
        deviceLimits = Object.fromEntries(REQUESTED_LIMITS.map((k) => [k, device.limits[k]!]));
        const Checked = checkedBackend(Base, device, facts);
        return new Checked(device, chosen.info);
      },
      1,
    );
  }
  registerWebgpuKernelPack();
  adapterInUse = facts;
  return { ok: true, detail: `@tensorflow/tfjs-backend-webgpu on ${adapterLine(facts)}` };
}
