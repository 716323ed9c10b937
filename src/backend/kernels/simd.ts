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
const F32X4_SUB = simd(0xe5);
const F32X4_MUL = simd(0xe6);
const F32X4_DIV = simd(0xe7);
const F32X4_SQRT = simd(0xe3);
const splat32 = (offset: number) => simd(0x09, 2, ...uleb(offset)); // v128.load32_splat
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

const at = (base: number, k: number) => [...get(base), ...get(k), ...ADD];

// maddRun(acc 0, accStride 1, a 2, aStride 3, w 4, n 5, cBytes 6); locals 7: p, 8: k
const maddRun: Fn = {
  name: 'maddRun',
  params: 7,
  locals: [I32, I32],
  body: [
    ...i32(0), ...set(7),
    ...whileLt(7, 5, [
      ...i32(0), ...set(8),
      ...whileLt(8, 6, [
        ...at(0, 8), ...at(0, 8), ...v128Load(), ...at(2, 8), ...v128Load(), ...at(4, 8), ...v128Load(), ...F32X4_MUL, ...F32X4_ADD, ...v128Store(),
        ...bump(8, 16),
      ]),
      ...get(0), ...get(1), ...ADD, ...set(0),
      ...get(2), ...get(3), ...ADD, ...set(2),
      ...bump(7, 1),
    ]),
  ],
};

// dotRun(acc 0, a 1, aStride 2, b 3, bStride 4, n 5, cBytes 6); locals 7: p, 8: k
const dotRun: Fn = {
  name: 'dotRun',
  params: 7,
  locals: [I32, I32],
  body: [
    ...i32(0), ...set(7),
    ...whileLt(7, 5, [
      ...i32(0), ...set(8),
      ...whileLt(8, 6, [
        ...at(0, 8), ...at(0, 8), ...v128Load(), ...at(1, 8), ...v128Load(), ...at(3, 8), ...v128Load(), ...F32X4_MUL, ...F32X4_ADD, ...v128Store(),
        ...bump(8, 16),
      ]),
      ...get(1), ...get(2), ...ADD, ...set(1),
      ...get(3), ...get(4), ...ADD, ...set(3),
      ...bump(7, 1),
    ]),
  ],
};

// adamw(p 0, m 1, v 2, g 3, pOut 4, mOut 5, vOut 6, bytes 7, consts 8); locals 9: i, 10-18: the
// splatted constants, 19: g, 20: m', 21: v'
const cst = (k: number) => get(10 + k);
const adamw: Fn = {
  name: 'adamw',
  params: 9,
  locals: [I32, V128, V128, V128, V128, V128, V128, V128, V128, V128, V128, V128, V128],
  body: [
    ...Array.from({ length: 9 }, (_, k) => [...get(8), ...splat32(4 * k), ...set(10 + k)]).flat(),
    ...i32(0), ...set(9),
    ...whileLt(9, 7, [
      ...at(3, 9), ...v128Load(), ...cst(8), ...F32X4_MUL, ...set(19),
      // m' = m*b1 + g*(1-b1)
      ...at(1, 9), ...v128Load(), ...cst(0), ...F32X4_MUL, ...get(19), ...cst(1), ...F32X4_MUL, ...F32X4_ADD, ...set(20),
      ...at(5, 9), ...get(20), ...v128Store(),
      // v' = v*b2 + (g*g)*(1-b2)
      ...at(2, 9), ...v128Load(), ...cst(2), ...F32X4_MUL, ...get(19), ...get(19), ...F32X4_MUL, ...cst(3), ...F32X4_MUL, ...F32X4_ADD, ...set(21),
      ...at(6, 9), ...get(21), ...v128Store(),
      // p' = p*decay - (m' / (sqrt(v')/bc2 + eps)) * step
      ...at(4, 9),
      ...at(0, 9), ...v128Load(), ...cst(7), ...F32X4_MUL,
      ...get(20), ...get(21), ...F32X4_SQRT, ...cst(4), ...F32X4_DIV, ...cst(5), ...F32X4_ADD, ...F32X4_DIV, ...cst(6), ...F32X4_MUL,
      ...F32X4_SUB, ...v128Store(),
      ...bump(9, 16),
    ]),
  ],
};

// rope(x 0, c 1, s 2, out 3, rows 4, heads 5, halfBytes 6); locals 7: r, 8: h, 9: j, 10: c row, 11: s row
const ropeHalf = (lo: boolean) => {
  // out[j (+half)] = x[j (+half)] * c[j (+half)] + x[j + half (or j)] * s[j (+half)]
  const off = (base: number, hi: boolean) => [...get(base), ...get(9), ...ADD, ...(hi ? [...get(6), ...ADD] : [])];
  return [
    ...off(3, !lo),
    ...off(0, !lo), ...v128Load(), ...off(10, !lo), ...v128Load(), ...F32X4_MUL,
    ...off(0, lo), ...v128Load(), ...off(11, !lo), ...v128Load(), ...F32X4_MUL,
    ...F32X4_ADD, ...v128Store(),
  ];
};
const rope: Fn = {
  name: 'rope',
  params: 7,
  locals: [I32, I32, I32, I32, I32],
  body: [
    ...i32(0), ...set(7),
    ...whileLt(7, 4, [
      ...get(1), ...set(10),
      ...get(2), ...set(11),
      ...i32(0), ...set(8),
      ...whileLt(8, 5, [
        ...i32(0), ...set(9),
        ...whileLt(9, 6, [...ropeHalf(true), ...ropeHalf(false), ...bump(9, 16)]),
        // next head: x and out move by one head (2 halves); the tables stay
        ...get(0), ...get(6), ...get(6), ...ADD, ...ADD, ...set(0),
        ...get(3), ...get(6), ...get(6), ...ADD, ...ADD, ...set(3),
        ...bump(8, 1),
      ]),
      // next row: the tables move by one row
      ...get(1), ...get(6), ...get(6), ...ADD, ...ADD, ...set(1),
      ...get(2), ...get(6), ...get(6), ...ADD, ...ADD, ...set(2),
      ...bump(7, 1),
    ]),
  ],
};

const FUNCTIONS = [madd, add, transpose4, maddRun, dotRun, adamw, rope];

/** Pages of a 4 GiB memory: the maximum a shared memory import must declare. */
const MAX_PAGES = 65536;

function assemble(shared: boolean): Uint8Array<ArrayBuffer> {
  const types = FUNCTIONS.map((f) => [0x60, ...vec(Array.from({ length: f.params }, () => [I32])), 0]);
  // memory, min 0, no max; the threaded build's memory is shared (flags 3: shared, with a max)
  const limits = shared ? [0x03, 0x00, ...uleb(MAX_PAGES)] : [0x00, 0x00];
  const imports = vec([[...bytes('env'), ...bytes('memory'), 0x02, ...limits]]);
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

const compiled = new Map<boolean, WebAssembly.Module>();
const instances = new WeakMap<WebAssembly.Memory, SimdLoops>();

/** The loops bound to this backend's heap. */
export function simdLoops(be: WasmBackend): SimdLoops {
  const memory = be.wasm.asm?.memory ?? be.wasm.wasmMemory;
  if (!(memory instanceof WebAssembly.Memory)) {
    throw new Error('wasm kernel pack: the wasm backend does not expose its WebAssembly.Memory (module.asm.memory / module.wasmMemory)');
  }
  let loops = instances.get(memory);
  if (!loops) {
    const shared = typeof SharedArrayBuffer !== 'undefined' && memory.buffer instanceof SharedArrayBuffer;
    let mod = compiled.get(shared);
    if (!mod) {
      mod = new WebAssembly.Module(assemble(shared));
      compiled.set(shared, mod);
    }
    loops = new WebAssembly.Instance(mod, { env: { memory } }).exports as unknown as SimdLoops;
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
