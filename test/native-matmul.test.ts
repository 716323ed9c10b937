/**
 * The native matmul addon (native/, src/backend/native.ts) behind the wasm pack's BatchMatMul:
 * - parity of tf.matMul on the addon with a float64 reference computed here in plain JS, and with the
 *   XNNPACK path (setNativeActive(false)), over shapes crossing the addon's blocks (depth KC = 256,
 *   rows MC = 96, columns NC = 512, the kernel's MR/NR tiles), empty dims and batch broadcasting;
 * - gradients (the transposed products of the backward pass) against a JS reference;
 * - bitwise determinism across thread counts;
 * - the addon's argument validation, called directly;
 * - MGLLAVA_NATIVE / MGLLAVA_NATIVE_THREADS parsing and configureNative's state;
 * - no tensors or backend buffers left behind.
 *
 * The addon is optional (scripts/build-native.mjs): the tests needing it are skipped only when it is
 * not built and MGLLAVA_NATIVE does not require it, or when the CPU has neither AVX2+FMA nor AVX-512.
 * A built addon that fails to load fails the 'loads' test.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  NATIVE_ADDON_PATH,
  activeNative,
  configureNative,
  nativeStatus,
  parseNativeIsa,
  parseNativeMode,
  parseNativeThreads,
  setNativeActive,
  setNativeIsa,
  setNativeThreads,
  type NativeAddon,
} from '../src/backend/native.js';
import { rand as randHost } from './kernels-compare.js';

// ---------------------------------------------------------------------------------------------
// Environment: is the addon there, is the wasm backend (with the pack) the active one.

const requiredByEnv = ['on', '1', 'true'].includes((process.env.MGLLAVA_NATIVE ?? '').trim().toLowerCase());
const built = existsSync(NATIVE_ADDON_PATH);

function probe(): { addon: NativeAddon | null; error: string | null; isa: string } {
  if (!built) return { addon: null, error: requiredByEnv ? `${NATIVE_ADDON_PATH} missing` : null, isa: '' };
  try {
    const mod = createRequire(import.meta.url)(NATIVE_ADDON_PATH) as NativeAddon;
    return { addon: mod, error: null, isa: mod.info().isa };
  } catch (e) {
    return { addon: null, error: (e as Error).message, isa: '' };
  }
}

const probed = probe();
/** The addon can run here (loaded, and the CPU has one of its ISAs). */
const usable = probed.addon != null && probed.isa !== '';
const onWasm = tf.getBackend() === 'wasm';

// ---------------------------------------------------------------------------------------------
// Helpers: deterministic data, a float64 reference, comparisons.

/** Deterministic pseudo-random float32 values in [-1, 1) (the kernel tests' generator). */
const rand = (n: number, seed: number) => randHost([n], seed).data as Float32Array;

const size = (shape: number[]) => shape.reduce((x, y) => x * y, 1);

/**
 * For each flat index of the broadcast batch `outDims`, the flat index into `inDims`
 * (right-aligned, size-1 dims repeat). Written independently of matmul.ts's broadcastBatchIndex.
 */
function batchMap(outDims: number[], inDims: number[]): number[] {
  const res: number[] = [];
  const pad = [...new Array<number>(outDims.length - inDims.length).fill(1), ...inDims];
  const total = size(outDims);
  for (let flat = 0; flat < total; flat++) {
    // multi-index in outDims
    const coord: number[] = [];
    let rem = flat;
    for (let d = outDims.length - 1; d >= 0; d--) {
      coord[d] = rem % outDims[d]!;
      rem = Math.floor(rem / outDims[d]!);
    }
    let idx = 0;
    for (let d = 0; d < pad.length; d++) idx = idx * pad[d]! + (pad[d] === 1 ? 0 : coord[d]!);
    res.push(idx);
  }
  return res;
}

/** Broadcast of two batch shapes (numpy rules), asserting compatibility. */
function broadcastDims(x: number[], y: number[]): number[] {
  const r = Math.max(x.length, y.length);
  const out: number[] = [];
  for (let i = 0; i < r; i++) {
    const a = x[x.length - r + i] ?? 1;
    const b = y[y.length - r + i] ?? 1;
    if (a !== b && a !== 1 && b !== 1) throw new Error(`incompatible batch ${x} vs ${y}`);
    out.push(a === 1 ? b : a);
  }
  return out;
}

/** Float64 op(A)·op(B) of one batch element; aData/bData are the stored elements. */
function refProduct(
  aData: Float32Array, aBase: number, bData: Float32Array, bBase: number,
  M: number, K: number, N: number, tA: boolean, tB: boolean,
): Float64Array {
  const out = new Float64Array(M * N);
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      let acc = 0;
      for (let p = 0; p < K; p++) {
        const av = tA ? aData[aBase + p * M + i]! : aData[aBase + i * K + p]!;
        const bv = tB ? bData[bBase + j * K + p]! : bData[bBase + p * N + j]!;
        acc += av * bv;
      }
      out[i * N + j] = acc;
    }
  }
  return out;
}

interface Case {
  batchA: number[];
  batchB: number[];
  M: number;
  K: number;
  N: number;
  tA: boolean;
  tB: boolean;
}

const aShapeOf = (c: Case) => [...c.batchA, ...(c.tA ? [c.K, c.M] : [c.M, c.K])];
const bShapeOf = (c: Case) => [...c.batchB, ...(c.tB ? [c.N, c.K] : [c.K, c.N])];

/** Reference of the whole (broadcast) product: [batchOut..., M, N] in float64. */
function reference(c: Case, aData: Float32Array, bData: Float32Array): { shape: number[]; data: Float64Array[] } {
  const outer = broadcastDims(c.batchA, c.batchB);
  const ia = batchMap(outer, c.batchA);
  const ib = batchMap(outer, c.batchB);
  const data = ia.map((ai, e) => refProduct(aData, ai * c.M * c.K, bData, ib[e]! * c.K * c.N, c.M, c.K, c.N, c.tA, c.tB));
  return { shape: [...outer, c.M, c.N], data };
}

/** Runs tf.matMul on host data (inside tidy, nothing left behind) and returns shape + values. */
function runMatMul(c: Case, aData: Float32Array, bData: Float32Array): { shape: number[]; data: Float32Array } {
  const before = tf.memory().numTensors;
  const r = tf.tidy(() => {
    const a = tf.tensor(aData, aShapeOf(c));
    const b = tf.tensor(bData, bShapeOf(c));
    const out = tf.matMul(a, b, c.tA, c.tB);
    return { shape: out.shape, data: out.dataSync() as Float32Array };
  });
  expect(tf.memory().numTensors).toBe(before);
  return r;
}

/** Largest |x - y| of one batch element (output element e of `got`). */
function maxAbsErr(got: Float32Array, base: number, want: Float64Array): number {
  let err = 0;
  for (let i = 0; i < want.length; i++) {
    const d = Math.abs(got[base + i]! - want[i]!);
    if (!(d <= err)) err = Number.isNaN(d) ? Infinity : d;
  }
  return err;
}

/** max|x - y| / max(1e-6, max|y|) (relative to the output's largest magnitude). */
function relErr(x: Float32Array, y: Float32Array): number {
  expect(x.length).toBe(y.length);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < x.length; i++) {
    const d = Math.abs(x[i]! - y[i]!);
    diff = Number.isNaN(d) ? Infinity : Math.max(diff, d);
    scale = Math.max(scale, Math.abs(y[i]!));
  }
  return diff / Math.max(1e-6, scale);
}

const bits = (x: Float32Array) => new Uint32Array(x.buffer, x.byteOffset, x.length);

/** Index of the first bitwise difference, -1 when identical. */
function firstBitDiff(x: Float32Array, y: Float32Array): number {
  if (x.length !== y.length) return 0;
  const bx = bits(x);
  const by = bits(y);
  for (let i = 0; i < bx.length; i++) if (bx[i] !== by[i]) return i;
  return -1;
}

const tolFor = (K: number) => 1e-4 * Math.sqrt(Math.max(1, K));

/** Checks native (on), XNNPACK and the float64 reference for one case; returns the native result. */
function checkCase(c: Case, seed: number): Float32Array {
  const aData = rand(size(aShapeOf(c)), seed);
  const bData = rand(size(bShapeOf(c)), seed + 1000);
  const ref = reference(c, aData, bData);

  setNativeActive(true);
  expect(activeNative()).not.toBeNull();
  const nat = runMatMul(c, aData, bData);
  expect(nat.shape).toEqual(ref.shape);
  expect(nat.data.length).toBe(size(ref.shape));
  // Each batch element on its own (a broadcast mix-up would only show in some elements).
  ref.data.forEach((want, e) => {
    const err = maxAbsErr(nat.data, e * c.M * c.N, want);
    expect(err, `native vs float64, batch element ${e}`).toBeLessThanOrEqual(tolFor(c.K));
  });
  if (c.K === 0) expect(Array.from(nat.data).every((v) => v === 0 && !Object.is(v, -0))).toBe(true);

  setNativeActive(false);
  expect(activeNative()).toBeNull();
  const xnn = runMatMul(c, aData, bData);
  setNativeActive(true);
  expect(xnn.shape).toEqual(nat.shape);
  expect(relErr(nat.data, xnn.data), 'native vs XNNPACK').toBeLessThanOrEqual(1e-5);
  return nat.data;
}

const FLAGS: [boolean, boolean][] = [
  [false, false],
  [false, true],
  [true, false],
  [true, true],
];

// ---------------------------------------------------------------------------------------------
// Global state: native on at the thread count found at the start, restored after every test;
// the environment's configuration at the end of the file.

let startThreads = 0;

beforeAll(() => {
  if (usable) {
    setNativeActive(true);
    startThreads = nativeStatus().threads;
  }
});

afterEach(() => {
  if (usable) {
    setNativeIsa('auto');
    setNativeActive(true);
    if (startThreads > 0) setNativeThreads(startThreads);
  }
});

afterAll(() => {
  configureNative(process.env);
});

// ---------------------------------------------------------------------------------------------

describe('native addon availability', () => {
  it('loads when built (and is required when MGLLAVA_NATIVE=on)', () => {
    expect(probed.error).toBeNull();
    if (built) {
      expect(probed.addon).not.toBeNull();
      expect(['avx512', 'avx2', '']).toContain(probed.isa);
    }
    if (requiredByEnv) expect(usable).toBe(true);
  });
});

describe.runIf(usable && onWasm)('native BatchMatMul: parity with a float64 reference and XNNPACK', () => {
  it('is active after selecting the wasm backend with the native path on', () => {
    const st = nativeStatus();
    expect(st.active).toBe(true);
    expect(st.isa).toBe(probed.isa);
    expect(st.threads).toBeGreaterThanOrEqual(1);
    expect(activeNative()).toBe(probed.addon); // the same module instance (require cache)
  });

  it('tf.matMul really goes through the addon: bitwise equal to a direct addon call, unlike XNNPACK', () => {
    // K = 513 crosses two depth blocks; XNNPACK sums in another order, so some bits differ there,
    // which makes the bitwise equality below discriminate between the two paths.
    const M = 37, K = 513, N = 530;
    const aData = rand(M * K, 7);
    const bData = rand(K * N, 8);
    const c: Case = { batchA: [], batchB: [], M, K, N, tA: false, tB: false };
    const heap = new Float32Array(M * K + K * N + M * N);
    heap.set(aData, 0);
    heap.set(bData, M * K);
    probed.addon!.gemm(heap, 0, M * K * 4, (M * K + K * N) * 4, M, K, N, false, false, 1, null, null);
    const direct = heap.slice(M * K + K * N);
    const viaTf = runMatMul(c, aData, bData).data;
    expect(firstBitDiff(viaTf, direct)).toBe(-1);
    setNativeActive(false);
    const xnn = runMatMul(c, aData, bData).data;
    setNativeActive(true);
    expect(firstBitDiff(xnn, direct)).not.toBe(-1);
  });

  // [M, K, N]: 1s, odd sizes, N not a multiple of 32, K > 256 (depth block), M > 96 (row block),
  // N > 512 (column block), multiples of the kernel tiles, and empty dims.
  const sizes2D: [number, number, number][] = [
    [1, 1, 1],
    [1, 37, 1],
    [1, 300, 65],
    [13, 1, 37],
    [13, 37, 65],
    [65, 13, 37],
    [24, 40, 64],
    [97, 300, 33],
    [5, 513, 530],
    [100, 257, 530],
    [13, 0, 7], // K = 0: zeros
    [0, 13, 7], // M = 0: empty
    [7, 13, 0], // N = 0: empty
  ];
  for (const [M, K, N] of sizes2D) {
    it(`rank 2: ${M}x${K}x${N}, all transpose flags`, () => {
      for (const [tA, tB] of FLAGS) checkCase({ batchA: [], batchB: [], M, K, N, tA, tB }, M * 7 + K * 3 + N);
    });
  }

  it('K = 0 writes zeros over recycled (dirty) memory', () => {
    // A product of the same output size first: its freed buffer is likely reused for the next output.
    for (let round = 0; round < 3; round++) {
      const dirty = tf.tidy(() => tf.matMul(tf.ones([9, 5]), tf.ones([5, 11])).dataSync());
      expect(dirty[0]).toBe(5);
      const z = tf.tidy(() => tf.matMul(tf.ones([9, 0]), tf.ones([0, 11])).dataSync());
      expect(z.length).toBe(99);
      expect(Array.from(z).every((v) => v === 0)).toBe(true);
      const zb = tf.tidy(() => tf.matMul(tf.ones([2, 0, 9]), tf.ones([2, 0, 11]), true, false).dataSync());
      expect(zb.length).toBe(2 * 99);
      expect(Array.from(zb).every((v) => v === 0)).toBe(true);
    }
  });

  const batched: [string, number[], number[], number, number, number][] = [
    ['rank 3, equal batch', [3], [3], 13, 300, 37],
    ['rank 3, batch 1', [1], [1], 97, 40, 530],
    ['rank 4, equal batch', [2, 2], [2, 2], 13, 37, 65],
    ['rank 4 broadcast [2,1]x[1,3] (6 products)', [2, 1], [1, 3], 13, 37, 65],
    ['rank 4 broadcast [2,1]x[1,3], K > 256', [2, 1], [1, 3], 5, 300, 33],
    ['rank 3 x rank 2 (B broadcast)', [4], [], 13, 37, 65],
    ['rank 3 x rank 2, M > 96', [2], [], 97, 257, 33],
    ['rank 2 x rank 3 (A broadcast)', [], [3], 13, 37, 65],
    ['[1] x [B] (A broadcast, rank 3 both)', [1], [3], 13, 37, 65],
    ['[B] x [1] (B broadcast, rank 3 both)', [3], [1], 13, 300, 37],
    ['rank 3, K = 0', [2], [2], 5, 0, 3],
    ['rank 3, M = 0', [2], [2], 0, 5, 3],
    ['broadcast, K = 0', [2, 1], [1, 3], 4, 0, 3],
  ];
  for (const [name, batchA, batchB, M, K, N] of batched) {
    it(`${name}: [${batchA}]x[${batchB}] ${M}x${K}x${N}, all transpose flags`, () => {
      for (const [tA, tB] of FLAGS) checkCase({ batchA, batchB, M, K, N, tA, tB }, M + K + N + batchA.length * 17 + batchB.length * 5);
    });
  }

  it('rejects mismatched inner dimensions (before reaching the addon)', () => {
    expect(() => tf.tidy(() => tf.matMul(tf.ones([2, 3, 4]), tf.ones([2, 5, 6])))).toThrow(/inner shapes/);
  });
});

// Every micro-kernel this CPU can run (on an AVX-512 machine the AVX2 one is otherwise never used).
const ISAS = usable ? (['avx512', 'avx2'] as const).filter((isa) => {
  try {
    probed.addon!.setIsa(isa);
    return true;
  } catch {
    return false;
  } finally {
    probed.addon!.setIsa('auto');
  }
}) : [];

describe.runIf(usable && onWasm)('native BatchMatMul: every micro-kernel the CPU has', () => {
  it('the best kernel is the default, and one the CPU lacks is refused', () => {
    expect(ISAS[0]).toBe(probed.isa);
    expect(() => probed.addon!.setIsa('sse9')).toThrow(/setIsa/);
    if (!ISAS.includes('avx512')) expect(() => setNativeIsa('avx512')).toThrow(/not available/);
  });
  it.runIf(ISAS.length > 1)('every kernel gives the same bits (each element: the same FMA chain), so runs reproduce across CPUs', () => {
    const a = rand(97 * 300, 71);
    const b = rand(300 * 130, 72);
    for (const [tA, tB] of FLAGS) {
      const c: Case = { batchA: [], batchB: [], M: 97, K: 300, N: 130, tA, tB };
      const outs = ISAS.map((isa) => {
        setNativeIsa(isa);
        return runMatMul(c, a, b).data;
      });
      for (const o of outs.slice(1)) expect(firstBitDiff(o, outs[0]!), `flags ${tA} ${tB}`).toBe(-1);
    }
  });

  for (const isa of ISAS) {
    it(`${isa}: edge shapes, all flags and a broadcast batch against float64 and XNNPACK`, () => {
      const shapes: [number[], number[], number, number, number][] = [
        [[], [], 1, 1, 1],
        [[], [], 13, 37, 65],
        [[], [], 97, 300, 33],
        [[], [], 5, 513, 530],
        [[2, 1], [1, 3], 7, 19, 40],
      ];
      for (const [batchA, batchB, M, K, N] of shapes) {
        for (const [tA, tB] of FLAGS) {
          setNativeIsa(isa);
          expect(nativeStatus().isa).toBe(isa);
          checkCase({ batchA, batchB, M, K, N, tA, tB }, M + K + N);
        }
      }
    });
  }
});

describe.runIf(usable && onWasm)('native BatchMatMul: gradients', () => {
  /**
   * Reference gradients of L = sum(op(A)·op(B) * W) for stored A [batchA, ...], B [batchB, ...]:
   * dop(A)[m,k] = Σn W[m,n]·op(B)[k,n], dop(B)[k,n] = Σm op(A)[m,k]·W[m,n], accumulated over the
   * broadcast batch into the stored (possibly transposed, possibly broadcast) element.
   */
  function refGrads(c: Case, aData: Float32Array, bData: Float32Array, w: Float32Array): [Float64Array, Float64Array] {
    const { M, K, N, tA, tB } = c;
    const outer = broadcastDims(c.batchA, c.batchB);
    const ia = batchMap(outer, c.batchA);
    const ib = batchMap(outer, c.batchB);
    const da = new Float64Array(aData.length);
    const db = new Float64Array(bData.length);
    const aIdx = (base: number, m: number, k: number) => base + (tA ? k * M + m : m * K + k);
    const bIdx = (base: number, k: number, n: number) => base + (tB ? n * K + k : k * N + n);
    for (let e = 0; e < ia.length; e++) {
      const aBase = ia[e]! * M * K;
      const bBase = ib[e]! * K * N;
      const wBase = e * M * N;
      for (let m = 0; m < M; m++) {
        for (let k = 0; k < K; k++) {
          let acc = 0;
          for (let n = 0; n < N; n++) acc += w[wBase + m * N + n]! * bData[bIdx(bBase, k, n)]!;
          da[aIdx(aBase, m, k)]! += acc;
        }
      }
      for (let k = 0; k < K; k++) {
        for (let n = 0; n < N; n++) {
          let acc = 0;
          for (let m = 0; m < M; m++) acc += aData[aIdx(aBase, m, k)]! * w[wBase + m * N + n]!;
          db[bIdx(bBase, k, n)]! += acc;
        }
      }
    }
    return [da, db];
  }

  const cases: [string, number[], number[], number, number, number][] = [
    ['rank 2', [], [], 13, 300, 37],
    ['rank 2, M > 96, N > 512', [], [], 97, 33, 530],
    ['rank 3', [2], [2], 13, 37, 65],
    ['rank 3, K > 256', [2], [2], 7, 300, 13],
    ['rank 4', [2, 2], [2, 2], 5, 13, 7],
    // No broadcast batches here: tfjs-core's BatchMatMul gradient does not sum over broadcast batch
    // dims (any backend: "The gradient of input 'b' has shape '3,37,65', which does not match ..."),
    // so there is nothing to compare. The backward products themselves are forward products, covered above.
  ];
  for (const [name, batchA, batchB, M, K, N] of cases) {
    it(`${name}: [${batchA}]x[${batchB}] ${M}x${K}x${N}, all transpose flags`, () => {
      for (const [tA, tB] of FLAGS) {
        const c: Case = { batchA, batchB, M, K, N, tA, tB };
        const aData = rand(size(aShapeOf(c)), 31 + M);
        const bData = rand(size(bShapeOf(c)), 37 + N);
        const outShape = [...broadcastDims(batchA, batchB), M, N];
        const w = rand(size(outShape), 41 + K);
        const [refA, refB] = refGrads(c, aData, bData, w);
        expect(activeNative()).not.toBeNull();
        const before = tf.memory().numTensors;
        const [ga, gb] = tf.tidy(() => {
          const a = tf.tensor(aData, aShapeOf(c));
          const b = tf.tensor(bData, bShapeOf(c));
          const wt = tf.tensor(w, outShape);
          const g = tf.grads((x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.mul(tf.matMul(x, y, tA, tB), wt)))([a, b]);
          expect(g[0]!.shape).toEqual(aShapeOf(c));
          expect(g[1]!.shape).toEqual(bShapeOf(c));
          return [g[0]!.dataSync() as Float32Array, g[1]!.dataSync() as Float32Array];
        });
        expect(tf.memory().numTensors).toBe(before);
        // dA sums over N (times the broadcast count of A), dB over M (times that of B).
        const repA = size(outShape.slice(0, -2)) / size(batchA);
        const repB = size(outShape.slice(0, -2)) / size(batchB);
        expect(maxAbsErr(ga!, 0, refA), `dA tA=${tA} tB=${tB}`).toBeLessThanOrEqual(tolFor(N * repA));
        expect(maxAbsErr(gb!, 0, refB), `dB tA=${tA} tB=${tB}`).toBeLessThanOrEqual(tolFor(M * repB));
      }
    });
  }
});

describe.runIf(usable && onWasm)('native BatchMatMul: determinism across thread counts', () => {
  // 2*M*N*K well above the addon's 4e6 threshold for splitting; with 2 threads the rows are split
  // into groups (different edge tiles than with 1 thread).
  const cases: [string, number[], number[], number, number, number][] = [
    ['rank 2', [], [], 300, 300, 700],
    ['rank 3 x rank 2', [2], [], 150, 300, 530],
    ['rank 4 broadcast', [2, 1], [1, 2], 100, 257, 300],
  ];
  for (const [name, batchA, batchB, M, K, N] of cases) {
    it(`${name}: [${batchA}]x[${batchB}] ${M}x${K}x${N}, bitwise equal for 1, 2 and 3 threads, all flags`, () => {
      for (const [tA, tB] of FLAGS) {
        const c: Case = { batchA, batchB, M, K, N, tA, tB };
        const aData = rand(size(aShapeOf(c)), 51);
        const bData = rand(size(bShapeOf(c)), 52);
        const results: Float32Array[] = [];
        for (const threads of [1, 2, 3, 2]) {
          setNativeThreads(threads);
          expect(nativeStatus().threads).toBe(threads);
          expect(probed.addon!.info().threads).toBe(threads);
          results.push(runMatMul(c, aData, bData).data);
        }
        for (let i = 1; i < results.length; i++) {
          expect(firstBitDiff(results[i]!, results[0]!), `threads run ${i} vs 1 thread, tA=${tA} tB=${tB}`).toBe(-1);
        }
        // And the shared result is right (its first 3 rows of every batch element against float64).
        const rows = Math.min(M, 3);
        const ref = reference({ ...c, M: rows, tA: false }, firstRows(aData, c, rows), bData);
        ref.data.forEach((want, e) => {
          const got = results[0]!.subarray(e * M * N, e * M * N + rows * N);
          expect(maxAbsErr(got, 0, want), `batch element ${e}`).toBeLessThanOrEqual(tolFor(K));
        });
      }
    });
  }

  /** Rows [0, rows) of op(A) of every batch element of A, stored untransposed: [batchA, rows, K]. */
  function firstRows(aData: Float32Array, c: Case, rows: number): Float32Array {
    const batch = size(c.batchA);
    const out = new Float32Array(batch * rows * c.K);
    for (let e = 0; e < batch; e++)
      for (let m = 0; m < rows; m++)
        for (let k = 0; k < c.K; k++)
          out[(e * rows + m) * c.K + k] = aData[e * c.M * c.K + (c.tA ? k * c.M + m : m * c.K + k)]!;
    return out;
  }

  it('restores the start thread count after each test', () => {
    expect(nativeStatus().threads).toBe(startThreads);
    expect(probed.addon!.info().threads).toBe(startThreads);
  });
});

describe.runIf(usable)('native addon: several worker threads of one process', () => {
  it('concurrent calls from worker_threads (one JS context each) give correct products', async () => {
    // Each worker multiplies its own matrices many times with 2 pool threads and checks every result
    // against the first one and a float64 reference; a shared-scratch race would corrupt some of them.
    const src = `
      const { parentPort, workerData } = require('node:worker_threads');
      const a = require(workerData.path);
      a.setThreads(2);
      const M = 97, K = 300, N = 130, seed = workerData.seed;
      const h = new Float32Array(M * K + K * N + M * N);
      let x = seed;
      for (let i = 0; i < M * K + K * N; i++) { x = (x * 1103515245 + 12345) % 2147483648; h[i] = x / 2147483648 - 0.5; }
      const ref = new Float64Array(M * N);
      for (let i = 0; i < M; i++) for (let j = 0; j < N; j++) { let s = 0; for (let p = 0; p < K; p++) s += h[i * K + p] * h[M * K + p * N + j]; ref[i * N + j] = s; }
      let worst = 0, changed = 0, first = null;
      for (let r = 0; r < 60; r++) {
        a.gemm(h, 0, M * K * 4, (M * K + K * N) * 4, M, K, N, false, false, 1, null, null);
        const c = h.subarray(M * K + K * N);
        if (!first) first = Float32Array.from(c);
        for (let i = 0; i < M * N; i++) { worst = Math.max(worst, Math.abs(c[i] - ref[i])); if (c[i] !== first[i]) changed++; }
      }
      parentPort.postMessage({ worst, changed });`;
    const { Worker } = await import('node:worker_threads');
    const run = (seed: number) =>
      new Promise<{ worst: number; changed: number }>((resolve, reject) => {
        const w = new Worker(src, { eval: true, workerData: { path: NATIVE_ADDON_PATH, seed } });
        w.once('message', resolve);
        w.once('error', reject);
      });
    const results = await Promise.all([run(1), run(2), run(3)]);
    for (const r of results) {
      expect(r.changed).toBe(0);
      expect(r.worst).toBeLessThan(1e-3);
    }
  }, 60_000);
});

describe.runIf(usable)('native addon: gemm argument validation (called directly)', () => {
  const gemm = (...args: unknown[]) => (probed.addon!.gemm as unknown as (...a: unknown[]) => void)(...args);
  /** A 2x2 product on a 12-float heap: A at 0, B at 16 bytes, C at 32 bytes. */
  const heap = () => {
    const h = new Float32Array(12);
    h.set([1, 2, 3, 4, 5, 6, 7, 8]);
    return h;
  };
  const ok = (h: Float32Array) => [h, 0, 16, 32, 2, 2, 2, false, false, 1, null, null] as unknown[];
  const withArg = (i: number, v: unknown) => {
    const args = ok(heap());
    args[i] = v;
    return args;
  };

  it('computes a known 2x2 product on a plain Float32Array, with every transpose flag', () => {
    // A = [[1,2],[3,4]], B = [[5,6],[7,8]]
    const want: Record<string, number[]> = {
      'false,false': [19, 22, 43, 50], // A·B
      'false,true': [17, 23, 39, 53], // A·Bᵀ
      'true,false': [26, 30, 38, 44], // Aᵀ·B
      'true,true': [23, 31, 34, 46], // Aᵀ·Bᵀ
    };
    for (const [tA, tB] of FLAGS) {
      const h = heap();
      h.fill(NaN, 8); // C is overwritten, not accumulated
      gemm(h, 0, 16, 32, 2, 2, 2, tA, tB, 1, null, null);
      expect(Array.from(h.subarray(8)), `tA=${tA} tB=${tB}`).toEqual(want[`${tA},${tB}`]);
      expect(Array.from(h.subarray(0, 8))).toEqual([1, 2, 3, 4, 5, 6, 7, 8]); // operands untouched
    }
  });

  it('batches with index arrays (broadcast) and leaves the rest of the heap alone', () => {
    // A0 = I, A1 = 2I at 0; B0 = [[5,6],[7,8]] at 32 bytes; C[3] at 48 bytes; out element e uses A[aIndex[e]], B[0].
    const h = new Float32Array(12 + 12 + 2);
    h.set([1, 0, 0, 1, 2, 0, 0, 2, 5, 6, 7, 8]);
    h[24] = 123;
    h[25] = 456;
    gemm(h, 0, 32, 48, 2, 2, 2, false, false, 3, Int32Array.from([1, 0, 1]), Int32Array.from([0, 0, 0]));
    expect(Array.from(h.subarray(12, 24))).toEqual([10, 12, 14, 16, 5, 6, 7, 8, 10, 12, 14, 16]);
    expect([h[24], h[25]]).toEqual([123, 456]);
  });

  it('k = 0 zeroes C; m = 0, n = 0 or batch = 0 are no-ops', () => {
    const h = new Float32Array(4).fill(7);
    gemm(h, 0, 0, 0, 2, 0, 2, false, false, 1, null, null);
    expect(Array.from(h)).toEqual([0, 0, 0, 0]);
    const g = new Float32Array(4).fill(7);
    gemm(g, 0, 0, 0, 0, 2, 2, false, false, 1, null, null);
    gemm(g, 0, 0, 0, 2, 2, 0, false, false, 1, null, null);
    gemm(g, 0, 0, 0, 2, 2, 2, false, false, 0, null, null);
    expect(Array.from(g)).toEqual([7, 7, 7, 7]);
  });

  it('throws on a wrong argument count', () => {
    expect(() => gemm()).toThrow(/expected 12 arguments/);
    expect(() => gemm(...ok(heap()).slice(0, 11))).toThrow(/expected 12 arguments/);
    expect(() => gemm(...ok(heap()), null)).toThrow(/expected 12 arguments/);
  });

  it('throws when the heap is not a Float32Array', () => {
    for (const bad of [new Float64Array(12), new Int32Array(12), new Array<number>(12).fill(0), new ArrayBuffer(48), null, 5]) {
      expect(() => gemm(...withArg(0, bad))).toThrow(/Float32Array/);
    }
  });

  it('throws on non-number offsets/sizes and non-boolean flags', () => {
    expect(() => gemm(...withArg(1, '0'))).toThrow(/must be numbers/);
    expect(() => gemm(...withArg(4, null))).toThrow(/must be numbers/);
    expect(() => gemm(...withArg(7, 0))).toThrow(/booleans/);
    expect(() => gemm(...withArg(8, 'true'))).toThrow(/booleans/);
    expect(() => gemm(...withArg(9, 'x'))).toThrow(/bad batch/);
  });

  it('throws on operands out of the heap bounds', () => {
    // heap: 12 floats = 48 bytes; each operand is 4 floats.
    expect(() => gemm(...withArg(1, 36))).toThrow(/out of the heap/); // A = floats 9..12
    expect(() => gemm(...withArg(2, 36))).toThrow(/out of the heap/);
    expect(() => gemm(...withArg(3, 36))).toThrow(/out of the heap/);
    expect(() => gemm(...withArg(3, 1 << 30))).toThrow(/out of the heap/);
    expect(() => gemm(...withArg(1, 2 ** 52))).toThrow(/out of the heap/);
    expect(() => gemm(...withArg(4, 3))).toThrow(/out of the heap/); // m = 3: C needs 6 floats from 8
    expect(() => gemm(...withArg(5, 1000))).toThrow(/out of the heap/);
    expect(() => gemm(...withArg(9, 2))).toThrow(/out of the heap/); // second batch element past the end
    // a batch index addressing past the end
    expect(() => gemm(...withArg(10, Int32Array.from([3])))).toThrow(/out of the heap/); // A at floats 12..15
    expect(() => gemm(...withArg(10, Int32Array.from([2])))).not.toThrow(); // A at floats 8..11: inside
    expect(() => gemm(...withArg(11, Int32Array.from([5])))).toThrow(/out of the heap/);
    // the last in-bounds layout works: C ends exactly at the heap's end
    const h = heap();
    expect(() => gemm(h, 0, 16, 32, 2, 2, 2, false, false, 1, null, null)).not.toThrow();
  });

  it('throws on misaligned offsets and negative sizes/offsets', () => {
    for (const [i, v] of [[1, 2], [2, 17], [3, 34], [1, -4], [3, -4], [4, -1], [5, -1], [6, -2]] as [number, number][]) {
      expect(() => gemm(...withArg(i, v)), `arg ${i} = ${v}`).toThrow(/negative or misaligned/);
    }
    expect(() => gemm(...withArg(9, -1))).toThrow(/bad batch/);
  });

  it('throws on index arrays of the wrong type or length, and on negative batch indices', () => {
    expect(() => gemm(...withArg(11, new Int32Array(2)))).toThrow(/Int32Array of length batch/);
    expect(() => gemm(...withArg(10, new Int32Array(0)))).toThrow(/Int32Array of length batch/);
    expect(() => gemm(...withArg(11, new Uint32Array(1)))).toThrow(/Int32Array of length batch/);
    expect(() => gemm(...withArg(10, [0]))).toThrow(/Int32Array of length batch/);
    expect(() => gemm(...withArg(10, Int32Array.from([-1])))).toThrow(/negative batch index/);
    expect(() => gemm(...withArg(11, Int32Array.from([-1])))).toThrow(/negative batch index/);
    // negative index after a valid one (batch 2 on a heap large enough for 2 elements)
    const h = new Float32Array(16);
    expect(() => gemm(h, 0, 16, 32, 2, 2, 2, false, false, 2, Int32Array.from([0, 0]), Int32Array.from([0, -3]))).toThrow(
      /negative batch index/,
    );
  });

  it('throws its errors with code MGLLAVA_NATIVE', () => {
    let err: unknown;
    try {
      gemm();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(Error);
    expect((err as { code?: string }).code).toBe('MGLLAVA_NATIVE');
  });

  it('setThreads rejects values outside [1, 64]', () => {
    const set = probed.addon!.setThreads as unknown as (...a: unknown[]) => void;
    for (const bad of [0, -1, 65, 'two']) expect(() => set(bad)).toThrow(/setThreads/);
    expect(() => set()).toThrow(/setThreads/);
  });

  // The addon's bounds check must not overflow: products like (aMax + 1) * m * k are checked with
  // overflow-aware arithmetic and sizes beyond int32 are refused (a wrapped product once passed the
  // check and the call then wrote outside the heap). Each case runs in a child process: a crash
  // would otherwise kill the test worker.
  it('throws (does not crash) when the bounds arithmetic would overflow', () => {
    const cases = [
      `h = new Float32Array(2 ** 18); a.gemm(h, 0, 0, 0, 65536, 131072, 1, false, false, 1, Int32Array.from([2 ** 31 - 1]), null)`,
      `h = new Float32Array(16); const s = 2 ** 50 + 4096; a.gemm(h, 0, 0, 0, s, s, s, false, false, 1, null, null)`,
      // a huge batch is refused at once (no per-element loop over 2^40 indices)
      `h = new Float32Array(16); a.gemm(h, 0, 0, 0, 1, 1, 1, false, false, 2 ** 40, null, null)`,
      `h = new Float32Array(16); a.gemm(h, 0, 0, 0, 1, 1, 1, false, false, 2 ** 31 - 1, null, null)`,
    ];
    for (const body of cases) {
      const script =
        `const a = require(${JSON.stringify(NATIVE_ADDON_PATH)}); let h;` +
        `try { ${body}; console.log('returned'); } catch (e) { console.log('threw: ' + e.message); }`;
      const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 30_000 });
      expect({ signal: r.signal, status: r.status, out: r.stdout.trim() }, body).toEqual({
        signal: null,
        status: 0,
        out: expect.stringMatching(/^threw: gemm: /) as unknown as string,
      });
    }
  }, 60_000);
});

describe('MGLLAVA_NATIVE / MGLLAVA_NATIVE_THREADS parsing and configureNative', () => {
  it('parses MGLLAVA_NATIVE', () => {
    expect(parseNativeMode(undefined)).toBe('auto');
    expect(parseNativeMode('')).toBe('auto');
    expect(parseNativeMode('  ')).toBe('auto');
    expect(parseNativeMode('auto')).toBe('auto');
    expect(parseNativeMode('AUTO')).toBe('auto');
    expect(parseNativeMode('on')).toBe('on');
    expect(parseNativeMode(' On ')).toBe('on');
    expect(parseNativeMode('1')).toBe('on');
    expect(parseNativeMode('true')).toBe('on');
    expect(parseNativeMode('off')).toBe('off');
    expect(parseNativeMode('0')).toBe('off');
    expect(parseNativeMode('false')).toBe('off');
    for (const bad of ['yes', 'no', '2', 'native', 'o n']) {
      expect(() => parseNativeMode(bad), bad).toThrow(/MGLLAVA_NATIVE=/);
      expect(() => parseNativeMode(bad), bad).toThrow(new RegExp(`'${bad}'`));
    }
  });

  it('a missing or broken addon: an error with MGLLAVA_NATIVE=on, XNNPACK (said in the status) with auto', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'mgllava-native-'));
    try {
      const missing = path.join(dir, 'none.node');
      expect(() => configureNative({ MGLLAVA_NATIVE: 'on', MGLLAVA_NATIVE_ADDON: missing })).toThrow(/MGLLAVA_NATIVE=on .*addon not built .*none\.node missing/);
      const st = configureNative({ MGLLAVA_NATIVE: 'auto', MGLLAVA_NATIVE_ADDON: missing });
      expect(st.active).toBe(false);
      expect(activeNative()).toBeNull();
      expect(st.detail).toMatch(/^BatchMatMul on XNNPACK \(addon not built/);
      const broken = path.join(dir, 'broken.node');
      writeFileSync(broken, 'not a shared object');
      expect(() => configureNative({ MGLLAVA_NATIVE: 'on', MGLLAVA_NATIVE_ADDON: broken })).toThrow(/addon failed to load/);
      expect(configureNative({ MGLLAVA_NATIVE_ADDON: broken }).detail).toMatch(/addon failed to load/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
      configureNative(process.env);
    }
  });

  it('parses MGLLAVA_NATIVE_ISA', () => {
    expect(parseNativeIsa(undefined)).toBe('auto');
    expect(parseNativeIsa(' AVX2 ')).toBe('avx2');
    expect(parseNativeIsa('avx512')).toBe('avx512');
    expect(() => parseNativeIsa('neon')).toThrow(/MGLLAVA_NATIVE_ISA='neon'/);
  });

  it('parses MGLLAVA_NATIVE_THREADS (default: one per core, at most 8)', () => {
    const def = Math.max(1, Math.min(8, os.availableParallelism()));
    expect(parseNativeThreads(undefined)).toBe(def);
    expect(parseNativeThreads('')).toBe(def);
    expect(parseNativeThreads(' ')).toBe(def);
    expect(parseNativeThreads('3')).toBe(3);
    expect(parseNativeThreads('1')).toBe(1);
    expect(parseNativeThreads('64')).toBe(64);
    for (const bad of ['0', 'x', '1.5', '-2', '65', 'NaN', 'Infinity']) {
      expect(() => parseNativeThreads(bad), bad).toThrow(/MGLLAVA_NATIVE_THREADS=/);
    }
  });

  it('configureNative: off, then auto/on, with the thread count; malformed values leave the state alone', () => {
    const off = configureNative({ MGLLAVA_NATIVE: 'off' });
    expect(off.active).toBe(false);
    expect(off.mode).toBe('off');
    expect(activeNative()).toBeNull();
    expect(nativeStatus()).toEqual(off);

    expect(() => configureNative({ MGLLAVA_NATIVE: 'bogus' })).toThrow(/MGLLAVA_NATIVE='bogus'/);
    expect(() => configureNative({ MGLLAVA_NATIVE: 'on', MGLLAVA_NATIVE_THREADS: '0' })).toThrow(/MGLLAVA_NATIVE_THREADS/);
    expect(nativeStatus()).toEqual(off);
    expect(activeNative()).toBeNull();

    if (!usable) {
      // auto falls back to XNNPACK; on is an error
      expect(configureNative({}).active).toBe(false);
      expect(() => configureNative({ MGLLAVA_NATIVE: 'on' })).toThrow(/MGLLAVA_NATIVE=on/);
      return;
    }
    const auto = configureNative({});
    expect(auto.active).toBe(true);
    expect(auto.mode).toBe('auto');
    expect(auto.isa).toBe(probed.isa);
    expect(auto.threads).toBe(parseNativeThreads(undefined));
    expect(activeNative()).toBe(probed.addon);

    configureNative({ MGLLAVA_NATIVE: 'off' });
    const on = configureNative({ MGLLAVA_NATIVE: 'on', MGLLAVA_NATIVE_THREADS: '2' });
    expect(on.active).toBe(true);
    expect(on.mode).toBe('on');
    expect(on.threads).toBe(2);
    expect(probed.addon!.info().threads).toBe(2);
    expect(activeNative()).toBe(probed.addon);
  });

  it.runIf(usable)('setNativeActive returns the previous state; setNativeThreads updates the status', () => {
    expect(setNativeActive(false)).toBe(true);
    expect(nativeStatus().active).toBe(false);
    expect(nativeStatus().threads).toBe(0);
    expect(setNativeActive(false)).toBe(false);
    expect(setNativeActive(true)).toBe(false);
    expect(nativeStatus().active).toBe(true);
    expect(nativeStatus().isa).toBe(probed.isa);
    setNativeThreads(3);
    expect(nativeStatus().threads).toBe(3);
    expect(probed.addon!.info().threads).toBe(3);
    expect(() => setNativeThreads(0)).toThrow(/setThreads/);
  });
});

describe.runIf(usable && onWasm)('native BatchMatMul: no leaks', () => {
  it('leaves no tensors or backend buffers behind across repeated products (plain, transposed, broadcast)', () => {
    const a = tf.tensor(rand(2 * 37 * 300, 61), [2, 37, 300]);
    const b = tf.tensor(rand(300 * 65, 62), [300, 65]);
    const c = tf.tensor(rand(3 * 65 * 300, 63), [3, 1, 65, 300]);
    const backend = tf.backend() as unknown as { numDataIds(): number };
    // warm-up (lazy allocations of the pack, if any)
    tf.tidy(() => tf.matMul(a, b).dataSync());
    const before = tf.memory();
    const idsBefore = backend.numDataIds();
    for (let i = 0; i < 5; i++) {
      tf.tidy(() => {
        const y = tf.matMul(a, b); // [2,37,65]
        const z = tf.matMul(a, c, false, true); // [3,2,37,65] by broadcast
        const w = tf.matMul(y, b, false, true); // [2,37,300]
        const g = tf.grad((x: tf.Tensor) => tf.sum(tf.matMul(x, b)))(a);
        return tf.add(tf.sum(z), tf.add(tf.sum(w), tf.sum(g))).dataSync();
      });
    }
    const after = tf.memory();
    expect(after.numTensors).toBe(before.numTensors);
    expect(after.numDataBuffers).toBe(before.numDataBuffers);
    expect(after.numBytes).toBe(before.numBytes);
    expect(backend.numDataIds()).toBe(idsBefore);
    tf.dispose([a, b, c]);
  });

  it('the native path leaves exactly as many tensors as the XNNPACK path', () => {
    const a = tf.tensor(rand(13 * 300, 71), [13, 300]);
    const b = tf.tensor(rand(65 * 300, 72), [65, 300]);
    const counts: number[] = [];
    for (const on of [true, false]) {
      setNativeActive(on);
      const before = tf.memory().numTensors;
      const y = tf.matMul(a, b, false, true);
      y.dataSync();
      counts.push(tf.memory().numTensors - before);
      y.dispose();
      expect(tf.memory().numTensors).toBe(before);
    }
    setNativeActive(true);
    expect(counts).toEqual([1, 1]);
    tf.dispose([a, b]);
  });
});
