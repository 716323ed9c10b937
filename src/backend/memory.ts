/**
 * Memory guard for the wasm heap.
 *
 * The wasm backend keeps every tensor in one 32-bit heap (at most 4 GiB - 64 KiB: emscripten's
 * getHeapMax() in tfjs-backend-wasm 4.22). It does not check malloc's result: past the limit a new
 * tensor is placed at offset 0 and silently overwrites others. The guard
 * - counts the bytes of every tensor the backend allocates (wrapping the backend instance's `move`,
 *   through which `write` and `makeOutput` allocate, `makeOutput` for memory the C++ side allocated,
 *   and `disposeData`), plus the packed copies XNNPACK keeps of matmul B operands (reported by the
 *   kernel pack through `accountExternal`);
 * - refuses, before malloc, any allocation that would pass the ceiling, with a `MemoryCeilingError`
 *   naming what was being allocated, by which kernel, and the numbers;
 * - wraps the module's `_malloc` so that a failed allocation (0) throws instead of corrupting memory
 *   (fragmentation or C++-side allocations can exhaust the heap below the ceiling).
 *
 * Ceiling: `MGLLAVA_WASM_CEILING_MB` (MiB of live tensors), default `DEFAULT_CEILING_BYTES`, which
 * leaves room under the heap limit for what the guard cannot see (XNNPACK workspaces, C++ vectors,
 * allocator fragmentation). Tensors that existed before the guard was installed are not counted.
 */
import * as tf from '@tensorflow/tfjs';
import type { DataType, TensorInfo } from '@tensorflow/tfjs';
import { ResourceError } from '../errors.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** Largest heap tfjs-backend-wasm 4.22 can grow to (emscripten getHeapMax()). */
export const WASM_HEAP_MAX_BYTES = 4 * GiB - 64 * 1024;
/**
 * Default ceiling on counted bytes. Measured in Node 20: the heap grows to 3.84 GiB and holds
 * 3.75 GiB of 256 MiB tensors before malloc fails (test/memory-guard.test.ts, last test); 3.5 GiB
 * leaves room for what the guard cannot count.
 */
export const DEFAULT_CEILING_BYTES = 3.5 * GiB;
export const CEILING_ENV = 'MGLLAVA_WASM_CEILING_MB';

export interface MemoryCeilingDetail {
  /** What was being allocated, e.g. "float32[4096,4096]". */
  what: string;
  /** Kernel running when the allocation was asked for (null: a tensor made from host data). */
  kernel: string | null;
  bytesNeeded: number;
  bytesInUse: number;
  ceilingBytes: number;
  /** 'ceiling': refused by the guard; 'heap': malloc itself failed (heap exhausted). */
  cause: 'ceiling' | 'heap';
}

export class MemoryCeilingError extends ResourceError {
  constructor(readonly detail: MemoryCeilingDetail) {
    super(describeRefusal(detail));
    this.name = 'MemoryCeilingError';
  }
}

const fmt = (bytes: number) =>
  bytes >= GiB ? `${(bytes / GiB).toFixed(2)} GiB` : bytes >= MiB ? `${(bytes / MiB).toFixed(1)} MiB` : `${bytes} B`;

function describeRefusal(d: MemoryCeilingDetail): string {
  const where = d.kernel ? ` in kernel ${d.kernel}` : '';
  const head =
    d.cause === 'ceiling'
      ? `wasm memory ceiling: cannot allocate ${d.what} (${fmt(d.bytesNeeded)})${where}: ` +
        `${fmt(d.bytesInUse)} in use, ceiling ${fmt(d.ceilingBytes)}.`
      : `wasm heap exhausted: malloc of ${d.what} (${fmt(d.bytesNeeded)})${where} failed with ` +
        `${fmt(d.bytesInUse)} counted in use (ceiling ${fmt(d.ceilingBytes)}, heap limit ${fmt(WASM_HEAP_MAX_BYTES)}).`;
  return (
    `${head} The wasm backend keeps all tensors in one heap of at most 4 GiB. ` +
    `Use --backend tensorflow (tfjs-node / tfjs-node-gpu), or reduce the batch size / sequence length` +
    (d.cause === 'ceiling' ? `, or raise ${CEILING_ENV} (at most ${Math.floor(WASM_HEAP_MAX_BYTES / MiB)}).` : '.')
  );
}

interface GuardedBackend {
  wasm: { _malloc(bytes: number): number; asm?: { malloc?: (bytes: number) => number }; HEAPU8: Uint8Array };
  move(dataId: object, values: unknown, shape: number[], dtype: DataType, refCount: number): void;
  makeOutput(shape: number[], dtype: DataType, memoryOffset?: number | null, values?: unknown): TensorInfo;
  disposeData(dataId: object, force?: boolean): boolean;
}

interface Guard {
  backend: GuardedBackend;
  ceiling: number;
  inUse: number;
  /** Most bytes in use since the guard was installed or `resetWasmPeak` (measured peak of a run). */
  peak: number;
  /** Counted bytes per dataId: the tensor's own and those of XNNPACK's packed copy of it. */
  owned: WeakMap<object, number>;
}

let guard: Guard | null = null;
let ceilingOverride: number | null = null;
/** Kernels being run by the engine (innermost last), for error messages. */
const kernelStack: string[] = [];

/** The ceiling MGLLAVA_WASM_CEILING_MB asks for (bytes), or the default; an error when malformed. */
export function ceilingFromEnv(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env[CEILING_ENV];
  if (raw == null || raw.trim() === '') return DEFAULT_CEILING_BYTES;
  const mb = Number(raw);
  const maxMb = Math.floor(WASM_HEAP_MAX_BYTES / MiB);
  if (!Number.isFinite(mb) || mb <= 0 || mb > maxMb) {
    throw new Error(`${CEILING_ENV}='${raw}': expected a number of MiB in (0, ${maxMb}]`);
  }
  return Math.floor(mb * MiB);
}

const describe = (shape: number[], dtype: DataType) => `${dtype}[${shape.join(',')}]`;

function currentKernel(): string | null {
  return kernelStack.length ? kernelStack[kernelStack.length - 1]! : null;
}

/** Throw if `bytes` more would pass the ceiling. */
function reserve(g: Guard, bytes: number, what: string): void {
  if (g.inUse + bytes > g.ceiling) {
    throw new MemoryCeilingError({
      what,
      kernel: currentKernel(),
      bytesNeeded: bytes,
      bytesInUse: g.inUse,
      ceilingBytes: g.ceiling,
      cause: 'ceiling',
    });
  }
}

function record(g: Guard, dataId: object, bytes: number): void {
  g.owned.set(dataId, (g.owned.get(dataId) ?? 0) + bytes);
  g.inUse += bytes;
  if (g.inUse > g.peak) g.peak = g.inUse;
}

function release(g: Guard, dataId: object): void {
  const bytes = g.owned.get(dataId);
  if (bytes === undefined) return;
  g.owned.delete(dataId);
  g.inUse -= bytes;
}

/** Install the guard on the active wasm backend (idempotent). Called by selectBackend. */
export function installMemoryGuard(): void {
  if (tf.getBackend() !== 'wasm') throw new Error(`installMemoryGuard: the active backend is '${tf.getBackend()}', not wasm`);
  const be = tf.backend() as unknown as GuardedBackend;
  if (guard?.backend === be) return;
  const g: Guard = { backend: be, ceiling: ceilingOverride ?? ceilingFromEnv(), inUse: 0, peak: 0, owned: new WeakMap() };
  /** What `move` is allocating, for the malloc wrapper's message. */
  let pendingWhat: string | null = null;

  const move = be.move.bind(be);
  be.move = (dataId, values, shape, dtype, refCount) => {
    if (dtype === 'string') return move(dataId, values, shape, dtype, refCount);
    const bytes = tf.util.sizeFromShape(shape) * tf.util.bytesPerElement(dtype);
    const what = describe(shape, dtype);
    reserve(g, bytes, what);
    pendingWhat = what;
    try {
      move(dataId, values, shape, dtype, refCount);
    } finally {
      pendingWhat = null;
    }
    record(g, dataId, bytes);
  };

  const makeOutput = be.makeOutput.bind(be);
  be.makeOutput = (shape, dtype, memoryOffset, values) => {
    const out = makeOutput(shape, dtype, memoryOffset, values);
    // Memory the C++ side allocated and handed over: freed with the tensor, so counted with it.
    if (memoryOffset != null) record(g, out.dataId, tf.util.sizeFromShape(shape) * tf.util.bytesPerElement(dtype));
    return out;
  };

  const disposeData = be.disposeData.bind(be);
  be.disposeData = (dataId, force) => {
    const freed = disposeData(dataId, force);
    if (freed) release(g, dataId);
    return freed;
  };

  // Emscripten's `_malloc` stub replaces itself with the raw export on first call: wrap the export.
  const malloc = be.wasm.asm?.malloc ?? be.wasm._malloc.bind(be.wasm);
  be.wasm._malloc = (bytes: number) => {
    const ptr = malloc(bytes);
    if (ptr === 0 && bytes > 0) {
      throw new MemoryCeilingError({
        what: pendingWhat ?? `${bytes} bytes`,
        kernel: currentKernel(),
        bytesNeeded: bytes,
        bytesInUse: g.inUse,
        ceilingBytes: g.ceiling,
        cause: 'heap',
      });
    }
    return ptr;
  };

  wrapEngineOnce();
  guard = g;
}

let engineWrapped = false;

/** Track the engine's running kernel so refusals can name it. */
function wrapEngineOnce(): void {
  if (engineWrapped) return;
  engineWrapped = true;
  const engine = tf.engine() as unknown as { runKernelFunc(p: { kernelName?: string }): unknown };
  const run = engine.runKernelFunc.bind(engine);
  engine.runKernelFunc = (params) => {
    kernelStack.push(params.kernelName ?? 'custom op');
    try {
      return run(params);
    } finally {
      kernelStack.pop();
    }
  };
}

function activeGuard(): Guard | null {
  if (!guard || tf.getBackend() !== 'wasm' || (tf.backend() as unknown) !== guard.backend) return null;
  return guard;
}

/** The ceiling in force on the active backend: bytes on wasm with the guard, null elsewhere. */
export function memoryCeilingBytes(): number | null {
  return activeGuard()?.ceiling ?? null;
}

/** Bytes the guard counts as in use on wasm (null on other backends). */
export function wasmBytesInUse(): number | null {
  return activeGuard()?.inUse ?? null;
}

/** Most bytes the guard counted in use at once since install or `resetWasmPeak` (null on other backends). */
export function wasmPeakBytes(): number | null {
  return activeGuard()?.peak ?? null;
}

/** Start a new peak measurement from the bytes in use now. */
export function resetWasmPeak(): void {
  const g = activeGuard();
  if (g) g.peak = g.inUse;
}

/**
 * Set the ceiling (bytes; null: back to MGLLAVA_WASM_CEILING_MB or the default). For tests and
 * programs that know better; applies now and to a guard installed later.
 */
export function setMemoryCeiling(bytes: number | null): void {
  if (bytes != null && !(bytes > 0)) throw new Error(`setMemoryCeiling: expected a positive byte count, got ${bytes}`);
  ceilingOverride = bytes;
  if (guard) guard.ceiling = bytes ?? ceilingFromEnv();
}

/**
 * Count `bytes` the wasm side keeps on behalf of tensor `owner` (e.g. XNNPACK's packed copy of a
 * matmul operand), released when the tensor's data is freed. Throws MemoryCeilingError when that
 * would pass the ceiling. No-op without an active guard.
 */
export function accountExternal(owner: object, bytes: number, what: string): void {
  const g = activeGuard();
  if (!g) return;
  reserve(g, bytes, what);
  record(g, owner, bytes);
}
