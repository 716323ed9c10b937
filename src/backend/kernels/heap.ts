/**
 * The wasm backend's internals the kernel pack builds on: its module (heap views, exported C
 * kernels), its tensor table (`dataIdMap`: tensor id and byte offset of every tensor) and scratch
 * space for kernels.
 *
 * Heap views (`f32`, `i32`) are only valid until the next allocation: the heap may grow, which
 * detaches every typed array made over the old buffer. Take them after allocating.
 */
import * as tf from '@tensorflow/tfjs';
import type { DataType, TensorInfo } from '@tensorflow/tfjs';

export interface WasmModule {
  HEAPU8: Uint8Array;
  HEAPF32: Float32Array;
  HEAP32: Int32Array;
  _malloc(bytes: number): number;
  _free(ptr: number): void;
  cwrap(name: string, ret: string | null, args: string[]): (...args: unknown[]) => unknown;
  /** The module's exports; `memory` is the heap itself (single-threaded build). */
  asm?: { memory?: WebAssembly.Memory };
  /** The heap of the threaded build (shared, imported by the module rather than exported). */
  wasmMemory?: WebAssembly.Memory;
  tfjs: {
    registerTensor(id: number, size: number, byteOffset: number): void;
    disposeData(id: number): void;
    getThreadsCount(): number;
  };
}

export interface WasmTensorData {
  id: number;
  memoryOffset: number;
  shape: number[];
  dtype: DataType;
  refCount: number;
}

export interface WasmBackend {
  wasm: WasmModule;
  dataIdMap: { get(dataId: object): WasmTensorData | undefined; has(dataId: object): boolean };
  dataIdNextNumber: number;
  makeOutput(shape: number[], dtype: DataType, memoryOffset?: number | null, values?: unknown): TensorInfo;
  disposeData(dataId: object, force?: boolean): boolean;
}

/** The backend a kernel received, typed as the wasm backend (checked: it must have a heap). */
export function asWasm(backend: unknown): WasmBackend {
  const be = backend as Partial<WasmBackend>;
  if (!be || !be.wasm || !be.dataIdMap) {
    throw new Error('wasm kernel pack: kernel called with a backend that is not the wasm backend');
  }
  return be as WasmBackend;
}

function data(be: WasmBackend, t: TensorInfo): WasmTensorData {
  const d = be.dataIdMap.get(t.dataId);
  if (!d) throw new Error(`wasm kernel pack: tensor of shape [${t.shape}] has no data on the wasm backend`);
  return d;
}

/** The C++ side's id of a tensor. */
export function idOf(be: WasmBackend, t: TensorInfo): number {
  return data(be, t).id;
}

/** Byte offset of a tensor's first element in the heap. */
export function offsetOf(be: WasmBackend, t: TensorInfo): number {
  return data(be, t).memoryOffset;
}

/** Float32 view of a tensor's elements (valid until the next allocation). */
export function f32(be: WasmBackend, t: TensorInfo): Float32Array {
  return new Float32Array(be.wasm.HEAPF32.buffer, offsetOf(be, t), tf.util.sizeFromShape(t.shape));
}

/** Int32 view of a tensor's elements (valid until the next allocation). */
export function i32(be: WasmBackend, t: TensorInfo): Int32Array {
  return new Int32Array(be.wasm.HEAP32.buffer, offsetOf(be, t), tf.util.sizeFromShape(t.shape));
}

/** The same data under another shape (no copy, no new tensor: like the wasm Reshape kernel minus the ref). */
export function alias(t: TensorInfo, shape: number[]): TensorInfo {
  return { dataId: t.dataId, shape, dtype: t.dtype };
}

/**
 * Temporaries of one kernel call, freed together when the call ends (also when it throws).
 * `keep` takes a tensor out of the set: it is the kernel's result.
 */
export class Scratch {
  private readonly tensors: TensorInfo[] = [];
  private readonly views: number[] = [];

  constructor(readonly be: WasmBackend) {}

  /** A new uninitialised tensor on the heap. */
  alloc(shape: number[], dtype: DataType = 'float32'): TensorInfo {
    const t = this.be.makeOutput(shape, dtype);
    this.tensors.push(t);
    return t;
  }

  /** A new tensor filled with zeros. */
  zeros(shape: number[], dtype: DataType = 'float32'): TensorInfo {
    const t = this.alloc(shape, dtype);
    const start = offsetOf(this.be, t);
    this.be.wasm.HEAPU8.fill(0, start, start + tf.util.sizeFromShape(shape) * tf.util.bytesPerElement(dtype));
    return t;
  }

  /** Free this tensor (made by a stock kernel or `alloc`) when the call ends. */
  adopt(t: TensorInfo): TensorInfo {
    this.tensors.push(t);
    return t;
  }

  /** Free a temporary now (its memory can be reused by the rest of the call). */
  free(t: TensorInfo): void {
    const i = this.indexOf(t);
    if (i < 0) throw new Error('wasm kernel pack: Scratch.free of a tensor it does not own');
    this.tensors.splice(i, 1);
    this.be.disposeData(t.dataId);
  }

  /** Take `t` (or an alias of it) out of the set: it outlives the call. */
  keep(t: TensorInfo): TensorInfo {
    const i = this.indexOf(t);
    if (i >= 0) this.tensors.splice(i, 1);
    return t;
  }

  private indexOf(t: TensorInfo): number {
    return this.tensors.findIndex((u) => u.dataId === t.dataId);
  }

  /**
   * A C++ tensor id for `size` float32 elements at `byteOffset`: lets exported C kernels work on
   * part of a tensor without copying it. Never freed through `_free` (the memory belongs to the
   * tensor it lies in); disposing the id also drops XNNPACK operators cached on it.
   */
  view(byteOffset: number, size: number): number {
    const id = this.be.dataIdNextNumber++;
    this.be.wasm.tfjs.registerTensor(id, size, byteOffset);
    this.views.push(id);
    return id;
  }

  dropView(id: number): void {
    const i = this.views.indexOf(id);
    if (i >= 0) this.views.splice(i, 1);
    this.be.wasm.tfjs.disposeData(id);
  }

  release(): void {
    for (const id of this.views.splice(0)) this.be.wasm.tfjs.disposeData(id);
    for (const t of this.tensors.splice(0)) this.be.disposeData(t.dataId);
  }
}

/** Run `fn` with a scratch set that is released afterwards; `fn` returns `s.keep(result)`. */
export function withScratch<T>(backend: unknown, fn: (s: Scratch, be: WasmBackend) => T): T {
  const be = asWasm(backend);
  const s = new Scratch(be);
  try {
    return fn(s, be);
  } finally {
    s.release();
  }
}
