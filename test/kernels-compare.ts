/**
 * Shared by the kernels-*.test.ts and webgpu-*.test.ts files: run the same computation on wasm (with the kernel
 * pack) or webgpu and on cpu from the same host data, and compare.
 *
 * Error measure: for each output, max|wasm - cpu| / max(1e-6, max|cpu|), i.e. the largest absolute
 * difference relative to the output's largest magnitude (an elementwise relative error would blow up
 * on the near-zero entries of sums with cancellation).
 */
import * as tf from '@tensorflow/tfjs';
import { expect } from 'vitest';

export interface Host {
  shape: number[];
  dtype: 'float32' | 'int32';
  data: Float32Array | Int32Array;
}

/** Deterministic pseudo-random floats in [-1, 1). */
export function rand(shape: number[], seed = 1): Host {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  let s = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    data[i] = s / 2 ** 31 - 1;
  }
  return { shape, dtype: 'float32', data };
}

export function ints(shape: number[], values: number[]): Host {
  return { shape, dtype: 'int32', data: Int32Array.from(values) };
}

export type Fn = (...xs: tf.Tensor[]) => tf.Tensor | tf.Tensor[];

export interface Out {
  shape: number[];
  data: Float32Array | Int32Array;
}

/**
 * Run `f` on `backend` from host data, read every output asynchronously (webgpu cannot read synchronously in
 * Node), and check that every kernel on the way freed its temporaries.
 */
export async function runOn(backend: string, f: Fn, inputs: Host[]): Promise<Out[]> {
  expect(await tf.setBackend(backend)).toBe(true);
  const before = tf.memory().numTensors;
  const outs = tf.tidy(() => {
    const xs = inputs.map((h) => tf.tensor(h.data, h.shape, h.dtype));
    const r = f(...xs);
    return Array.isArray(r) ? r : [r];
  });
  const read = await Promise.all(outs.map(async (t) => ({ shape: t.shape, data: (await t.data()) as Float32Array | Int32Array })));
  tf.dispose(outs);
  expect(tf.memory().numTensors).toBe(before);
  return read;
}

/**
 * Relative error (see the file comment) of each output of `f` on `backend` vs cpu (`fCpu` on cpu when given:
 * a reference computed another way); asserts shapes match. Ends on `backend`.
 */
export async function backendVsCpu(backend: string, f: Fn, inputs: Host[], fCpu: Fn = f): Promise<number[]> {
  const got = await runOn(backend, f, inputs);
  const cpu = await runOn('cpu', fCpu, inputs);
  expect(await tf.setBackend(backend)).toBe(true);
  expect(got.length).toBe(cpu.length);
  return got.map((g, i) => {
    const c = cpu[i]!;
    expect(g.shape).toEqual(c.shape);
    return relErr(g.data, c.data);
  });
}

/** backendVsCpu on wasm (with the kernel pack). */
export function wasmVsCpu(f: Fn, inputs: Host[], fCpu: Fn = f): Promise<number[]> {
  return backendVsCpu('wasm', f, inputs, fCpu);
}

export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < b.length; i++) {
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  if (Number.isNaN(diff)) return Infinity;
  return diff / Math.max(1e-6, scale);
}

/** Assert every output of `f` agrees between wasm and cpu to `tol` (default 1e-5). */
export async function expectSameOnCpu(f: Fn, inputs: Host[], tol = 1e-5, fCpu: Fn = f): Promise<void> {
  const errs = await wasmVsCpu(f, inputs, fCpu);
  for (const e of errs) expect(e).toBeLessThanOrEqual(tol);
}
