/**
 * Small WebAssembly SIMD loops that work directly on the wasm backend's heap: the inner loops of
 * the pack's JavaScript kernels (a multiply-add over channels, a row add, a 4x4-block transpose),
 * 3-6x faster than the same loops in JavaScript.
 *
 * The loops are written in WebAssembly text (simd.wat, compiled by wabt: simd-compile.ts) and
 * instantiated once per backend with the backend's own `WebAssembly.Memory` as its memory, so the
 * loops take the same byte offsets as `dataIdMap` gives. All pointers are byte offsets, all counts
 * are float32 element counts.
 */
import type { WasmBackend } from './heap.js';
import { simdBinaries, type SimdVariant } from './simd-compile.js';

export interface SimdLoops {
  /** acc[i] += a[i] * b[i] for i < n. */
  madd(acc: number, a: number, b: number, n: number): void;
  /** acc[i] += a[i] for i < n. */
  add(acc: number, a: number, n: number): void;
  /**
   * dst[j*dstStride + i] = src[i*srcStride + j] for i < R&~3, j < C&~3: whole 4x4 blocks of an R x C
   * block (the caller does the edges).
   */
  transpose4(src: number, dst: number, R: number, C: number, srcStride: number, dstStride: number): void;
  /**
   * A run of n pixels of C channels (`cBytes` = 4C, a multiple of 16): for p < n, c < C,
   * acc[p*accStride + c] += a[p*aStride + c] * w[c]. Strides in bytes. One depthwise tap over a row.
   */
  maddRun(acc: number, accStride: number, a: number, aStride: number, w: number, n: number, cBytes: number): void;
  /**
   * acc[c] += sum over p < n of a[p*aStride + c] * b[p*bStride + c] (pixels in order), `cBytes` = 4C a
   * multiple of 16, strides in bytes. One depthwise filter-gradient tap over a row.
   */
  dotRun(acc: number, a: number, aStride: number, b: number, bStride: number, n: number, cBytes: number): void;
  /**
   * One AdamW update of `bytes` / 4 elements (a multiple of 4), the float32 operations of
   * `AdamW.apply` in the same order, with c = [b1, 1-b1, b2, 1-b2, sqrt(bias corr. 2), eps,
   * lr / bias corr. 1, 1 - lr*wd, gradient scale] (9 floats at `consts`):
   *   g = g*c8;  m' = m*c0 + g*c1;  v' = v*c2 + (g*g)*c3;  p' = p*c7 - (m' / (sqrt(v')/c4 + c5)) * c6.
   */
  adamw(p: number, m: number, v: number, g: number, pOut: number, mOut: number, vOut: number, bytes: number, consts: number): void;
  /**
   * Rotary embedding of `rows` rows of `heads` heads of hd floats (`halfBytes` = 2*hd, a multiple
   * of 16), the tables c, s [rows, hd] shared by a row's heads: out_j = x_j*c_j + x_σ(j)*s_j with σ
   * swapping the two halves of a head.
   */
  rope(x: number, c: number, s: number, out: number, rows: number, heads: number, halfBytes: number): void;
}

let modules: Record<SimdVariant, WebAssembly.Module> | null = null;
const instances = new WeakMap<WebAssembly.Memory, SimdLoops>();

/** Compile the loops (both memory variants) once; `registerWasmKernelPack` awaits it before any kernel can run. */
export async function loadSimdModules(): Promise<void> {
  if (modules) return;
  const bin = await simdBinaries();
  modules = { plain: new WebAssembly.Module(bin.plain), shared: new WebAssembly.Module(bin.shared) };
}

/** The loops bound to this backend's heap. */
export function simdLoops(be: WasmBackend): SimdLoops {
  const memory = be.wasm.asm?.memory ?? be.wasm.wasmMemory;
  if (!(memory instanceof WebAssembly.Memory)) {
    throw new Error('wasm kernel pack: the wasm backend does not expose its WebAssembly.Memory (module.asm.memory / module.wasmMemory)');
  }
  let loops = instances.get(memory);
  if (!loops) {
    if (!modules) throw new Error('wasm kernel pack: SIMD loops used before registerWasmKernelPack() loaded them');
    const shared = typeof SharedArrayBuffer !== 'undefined' && memory.buffer instanceof SharedArrayBuffer;
    loops = new WebAssembly.Instance(modules[shared ? 'shared' : 'plain'], { env: { memory } }).exports as unknown as SimdLoops;
    instances.set(memory, loops);
  }
  return loops;
}

/** Columns per tile of `transposeMatrix`: keeps the written rows of dst in cache. */
const TRANSPOSE_TILE = 16;

/** dst [C,R] = src [R,C]ᵀ (float32, byte offsets on the heap): SIMD 4x4 blocks by column tiles, edges in JS. */
export function transposeMatrix(be: WasmBackend, src: number, dst: number, R: number, C: number): void {
  const loops = simdLoops(be);
  for (let j0 = 0; j0 < C; j0 += TRANSPOSE_TILE) {
    loops.transpose4(src + j0 * 4, dst + j0 * R * 4, R, Math.min(TRANSPOSE_TILE, C - j0), C, R);
  }
  const heap = be.wasm.HEAPF32;
  const s = src >>> 2;
  const d = dst >>> 2;
  const R4 = R & ~3;
  const C4 = C & ~3;
  for (let i = 0; i < R; i++) for (let j = C4; j < C; j++) heap[d + j * R + i] = heap[s + i * C + j];
  for (let i = R4; i < R; i++) for (let j = 0; j < C4; j++) heap[d + j * R + i] = heap[s + i * C + j];
}
