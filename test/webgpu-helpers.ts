/**
 * Shared by test/webgpu-*.test.ts: switch the test process to the webgpu backend (any adapter, lavapipe in CI),
 * and compare computations with the cpu backend reading everything asynchronously (webgpu cannot read
 * synchronously in Node).
 *
 * Without an adapter the webgpu tests skip with a visible message, unless MGLLAVA_REQUIRE_WEBGPU=1 (set by
 * .ci/run): then a missing adapter fails them.
 */
import * as tf from '@tensorflow/tfjs';
import { expect } from 'vitest';
import { selectBackend } from '../src/backend/select.js';
import type { Host } from './kernels-compare.js';

export const REQUIRE_WEBGPU = process.env.MGLLAVA_REQUIRE_WEBGPU === '1';

/** Select webgpu for this test file. Returns false (after saying why) when it cannot load and is not required. */
export async function useWebgpu(): Promise<boolean> {
  try {
    await selectBackend('webgpu');
    return true;
  } catch (e) {
    const why = (e as Error).message;
    if (REQUIRE_WEBGPU) throw new Error(`MGLLAVA_REQUIRE_WEBGPU=1 but the webgpu backend does not load: ${why}`);
    console.warn(`\n*** SKIPPING webgpu tests: ${why.split('\n').join(' ')}\n*** (install Mesa >= 25 lavapipe: scripts/install-lavapipe.sh; MGLLAVA_REQUIRE_WEBGPU=1 makes this a failure)\n`);
    return false;
  }
}

type Fn = (...xs: tf.Tensor[]) => tf.Tensor | tf.Tensor[];

export interface Out {
  shape: number[];
  data: Float32Array | Int32Array;
}

/** Run `f` on `backend` from host data, read every output asynchronously, and check nothing leaked. */
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

/** max |a - b| / max(1e-6, max |b|) (as kernels-compare.ts). */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < b.length; i++) {
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return Number.isNaN(diff) ? Infinity : diff / Math.max(1e-6, scale);
}

/** Relative error of each output of `f` on webgpu vs cpu (`fCpu` on cpu when given); ends on webgpu. */
export async function webgpuVsCpu(f: Fn, inputs: Host[], fCpu: Fn = f): Promise<number[]> {
  const gpu = await runOn('webgpu', f, inputs);
  const cpu = await runOn('cpu', fCpu, inputs);
  expect(await tf.setBackend('webgpu')).toBe(true);
  expect(gpu.length).toBe(cpu.length);
  return gpu.map((g, i) => {
    expect(g.shape).toEqual(cpu[i]!.shape);
    return relErr(g.data, cpu[i]!.data);
  });
}
