/**
 * Small WebAssembly SIMD loops that work directly on the wasm backend's heap: the inner loops of
 * the pack's JavaScript kernels (a multiply-add over channels, a row add, a 4x4-block transpose),
 * 3-6x faster than the same loops in JavaScript.
 *
 * The module is assembled here from its instructions (no toolchain, no binary blob in the repo) and
 * instantiated once per backend with the backend's own `WebAssembly.Memory` as its memory, so the
 * loops take the same byte offsets as `dataIdMap` gives. All pointers are byte offsets, all counts
 * are float32 element counts.
 */
import type { WasmBackend } from './heap.js';

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
}

// ---- a minimal assembler: just the instructions used below ----------------------------------

const I32 = 0x7f;
const V128 = 0x7b;

function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
  return out;
}

function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (b & 0x40) === 0) || (n === -1 && (b & 0x40) !== 0)) {
      out.push(b);
      return out;
    }
    out.push(b | 0x80);
  }
}

const bytes = (s: string) => [...uleb(s.length), ...Array.from(s, (c) => c.charCodeAt(0))];
const vec = (items: number[][]) => [...uleb(items.length), ...items.flat()];
const section = (id: number, body: number[]) => [id, ...uleb(body.length), ...body];

const get = (i: number) => [0x20, ...uleb(i)];
const set = (i: number) => [0x21, ...uleb(i)];
const i32 = (v: number) => [0x41, ...sleb(v)];
const ADD = [0x6a];
const MUL = [0x6c];
const AND = [0x71];
const SHL = [0x74];
const GE_U = [0x4f];
const f32Load = [0x2a, 2, 0];
const f32Store = [0x38, 2, 0];
const F32_ADD = [0x92];
const F32_MUL = [0x94];
const simd = (op: number, ...rest: number[]) => [0xfd, ...uleb(op), ...rest];
const v128Load = (offset = 0) => simd(0x00, 2, ...uleb(offset));
const v128Store = (offset = 0) => simd(0x0b, 2, ...uleb(offset));
const F32X4_ADD = simd(0xe4);
const F32X4_MUL = simd(0xe6);
const shuffle = (lanes: number[]) => simd(0x0d, ...lanes);

/** `while (local[i] < local[end]) { body }`. */
const whileLt = (i: number, end: number, body: number[]) => [
  0x02, 0x40, 0x03, 0x40, ...get(i), ...get(end), ...GE_U, 0x0d, 1, ...body, 0x0c, 0, 0x0b, 0x0b,
];
/** local[i] += k */
const bump = (i: number, k: number) => [...get(i), ...i32(k), ...ADD, ...set(i)];
/** local[dst] = local[base] + (local[n] & mask) * 4 */
const endPtr = (dst: number, base: number, n: number, mask: number) => [
  ...get(base), ...get(n), ...i32(mask), ...AND, ...i32(2), ...SHL, ...ADD, ...set(dst),
];

interface Fn {
  name: string;
  params: number;
  locals: number[]; // types of the extra locals
  body: number[];
}

// madd(acc, a, b, n); locals 4: end of SIMD part, 5: end
const madd: Fn = {
  name: 'madd',
  params: 4,
  locals: [I32, I32],
  body: [
    ...endPtr(4, 0, 3, -4),
    ...endPtr(5, 0, 3, -1),
    ...whileLt(0, 4, [
      ...get(0), ...get(0), ...v128Load(), ...get(1), ...v128Load(), ...get(2), ...v128Load(), ...F32X4_MUL, ...F32X4_ADD, ...v128Store(),
      ...bump(0, 16), ...bump(1, 16), ...bump(2, 16),
    ]),
    ...whileLt(0, 5, [
      ...get(0), ...get(0), ...f32Load, ...get(1), ...f32Load, ...get(2), ...f32Load, ...F32_MUL, ...F32_ADD, ...f32Store,
      ...bump(0, 4), ...bump(1, 4), ...bump(2, 4),
    ]),
  ],
};

// add(acc, a, n); locals 3: end of SIMD part, 4: end
const add: Fn = {
  name: 'add',
  params: 3,
  locals: [I32, I32],
  body: [
    ...endPtr(3, 0, 2, -4),
    ...endPtr(4, 0, 2, -1),
    ...whileLt(0, 3, [...get(0), ...get(0), ...v128Load(), ...get(1), ...v128Load(), ...F32X4_ADD, ...v128Store(), ...bump(0, 16), ...bump(1, 16)]),
    ...whileLt(0, 4, [...get(0), ...get(0), ...f32Load, ...get(1), ...f32Load, ...F32_ADD, ...f32Store, ...bump(0, 4), ...bump(1, 4)]),
  ],
};

// transpose4(src, dst, R, C, srcStride, dstStride)
// locals: 6 i, 7 j, 8 R4, 9 C4, 10 src row bytes, 11 dst row bytes, 12 sp, 13 dp, 14-17 v128 temporaries
const lo = [0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23]; // (x0 y0 x1 y1)
const hi = [8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31]; // (x2 y2 x3 y3)
const lo64 = [0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23];
const hi64 = [8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31];
const rowAt = (k: number) => [...get(12), ...(k ? [...get(10), ...i32(k), ...MUL, ...ADD] : []), ...v128Load()];
const storeCol = (k: number, value: number[]) => [...get(13), ...(k ? [...get(11), ...i32(k), ...MUL, ...ADD] : []), ...value, ...v128Store()];
const transpose4: Fn = {
  name: 'transpose4',
  params: 6,
  locals: [I32, I32, I32, I32, I32, I32, I32, I32, V128, V128, V128, V128],
  body: [
    ...get(2), ...i32(-4), ...AND, ...set(8),
    ...get(3), ...i32(-4), ...AND, ...set(9),
    ...get(4), ...i32(2), ...SHL, ...set(10),
    ...get(5), ...i32(2), ...SHL, ...set(11),
    ...i32(0), ...set(6),
    ...whileLt(6, 8, [
      ...i32(0), ...set(7),
      ...whileLt(7, 9, [
        // sp = src + (i*srcStride + j)*4, dp = dst + (j*dstStride + i)*4
        ...get(0), ...get(6), ...get(4), ...MUL, ...get(7), ...ADD, ...i32(2), ...SHL, ...ADD, ...set(12),
        ...get(1), ...get(7), ...get(5), ...MUL, ...get(6), ...ADD, ...i32(2), ...SHL, ...ADD, ...set(13),
        // rows 0,1 -> (a0 b0 a1 b1), (a2 b2 a3 b3); rows 2,3 likewise; then pair them up
        ...rowAt(0), ...rowAt(1), ...shuffle(lo), ...set(14),
        ...rowAt(0), ...rowAt(1), ...shuffle(hi), ...set(15),
        ...rowAt(2), ...rowAt(3), ...shuffle(lo), ...set(16),
        ...rowAt(2), ...rowAt(3), ...shuffle(hi), ...set(17),
        ...storeCol(0, [...get(14), ...get(16), ...shuffle(lo64)]),
        ...storeCol(1, [...get(14), ...get(16), ...shuffle(hi64)]),
        ...storeCol(2, [...get(15), ...get(17), ...shuffle(lo64)]),
        ...storeCol(3, [...get(15), ...get(17), ...shuffle(hi64)]),
        ...bump(7, 4),
      ]),
      ...bump(6, 4),
    ]),
  ],
};

const FUNCTIONS = [madd, add, transpose4];

function assemble(): Uint8Array<ArrayBuffer> {
  const types = FUNCTIONS.map((f) => [0x60, ...vec(Array.from({ length: f.params }, () => [I32])), 0]);
  const imports = vec([[...bytes('env'), ...bytes('memory'), 0x02, 0x00, 0x00]]); // memory, min 0, no max
  const funcs = vec(FUNCTIONS.map((_, i) => uleb(i)));
  const exports = vec(FUNCTIONS.map((f, i) => [...bytes(f.name), 0x00, ...uleb(i)]));
  const code = vec(
    FUNCTIONS.map((f) => {
      const locals = vec(f.locals.map((t) => [1, t]));
      const body = [...locals, ...f.body, 0x0b];
      return [...uleb(body.length), ...body];
    }),
  );
  return new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, vec(types)),
    ...section(2, imports),
    ...section(3, funcs),
    ...section(7, exports),
    ...section(10, code),
  ]);
}

let compiled: WebAssembly.Module | null = null;
const instances = new WeakMap<WebAssembly.Memory, SimdLoops>();

/** The loops bound to this backend's heap. */
export function simdLoops(be: WasmBackend): SimdLoops {
  const memory = be.wasm.asm?.memory;
  if (!(memory instanceof WebAssembly.Memory)) {
    throw new Error('wasm kernel pack: the wasm backend does not expose its WebAssembly.Memory (module.asm.memory)');
  }
  let loops = instances.get(memory);
  if (!loops) {
    compiled ??= new WebAssembly.Module(assemble());
    loops = new WebAssembly.Instance(compiled, { env: { memory } }).exports as unknown as SimdLoops;
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
