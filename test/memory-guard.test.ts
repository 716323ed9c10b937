import * as tf from '@tensorflow/tfjs';
import { afterEach, describe, expect, it } from 'vitest';
import { nativeStatus, setNativeActive } from '../src/backend/native.js';
import {
  DEFAULT_CEILING_BYTES,
  MemoryCeilingError,
  WASM_HEAP_MAX_BYTES,
  ceilingFromEnv,
  memoryCeilingBytes,
  setMemoryCeiling,
  wasmBytesInUse,
} from '../src/backend/memory.js';

const onWasm = process.env.MGLLAVA_BACKEND == null || process.env.MGLLAVA_BACKEND === 'wasm';
const MiB = 2 ** 20;
const GiB = 2 ** 30;

/** Allocate `elems`-element tensors filled with 1, 2, 3... until the guard refuses one. */
function fillUntilRefused(elems: number, into: tf.Tensor[]): MemoryCeilingError {
  for (;;) {
    try {
      into.push(tf.fill([elems], into.length + 1));
    } catch (e) {
      if (e instanceof MemoryCeilingError) return e;
      throw e;
    }
  }
}

/** Every tensor still holds its fill value (min and max are exact, unlike a float32 sum). */
function expectIntact(ts: tf.Tensor[]): void {
  ts.forEach((t, i) => {
    const [lo, hi] = tf.tidy(() => [tf.min(t).dataSync()[0], tf.max(t).dataSync()[0]]);
    expect([lo, hi]).toEqual([i + 1, i + 1]);
  });
}

describe.runIf(onWasm)('wasm memory guard', () => {
  afterEach(() => setMemoryCeiling(null));

  it('reports the ceiling in force on wasm and none on other backends', async () => {
    expect(memoryCeilingBytes()).toBe(ceilingFromEnv());
    expect(await tf.setBackend('cpu')).toBe(true);
    expect(memoryCeilingBytes()).toBeNull();
    expect(wasmBytesInUse()).toBeNull();
    expect(await tf.setBackend('wasm')).toBe(true);
    expect(memoryCeilingBytes()).not.toBeNull();
  });

  it('reads MGLLAVA_WASM_CEILING_MB and rejects nonsense', () => {
    expect(ceilingFromEnv({})).toBe(DEFAULT_CEILING_BYTES);
    expect(ceilingFromEnv({ MGLLAVA_WASM_CEILING_MB: '1500' })).toBe(1500 * MiB);
    for (const bad of ['0', '-5', 'lots', '5000']) {
      expect(() => ceilingFromEnv({ MGLLAVA_WASM_CEILING_MB: bad })).toThrow(/MGLLAVA_WASM_CEILING_MB/);
    }
    expect(DEFAULT_CEILING_BYTES).toBeLessThan(WASM_HEAP_MAX_BYTES);
  });

  it('refuses before the ceiling with a clear error and corrupts nothing', () => {
    const start = wasmBytesInUse()!;
    const numTensors = tf.memory().numTensors;
    setMemoryCeiling(start + 10 * MiB);
    const ts: tf.Tensor[] = [];
    const err = fillUntilRefused(MiB / 4, ts); // 1 MiB each
    expect(ts.length).toBe(10);
    expect(err.detail).toMatchObject({
      what: `float32[${MiB / 4}]`,
      kernel: 'Fill',
      bytesNeeded: MiB,
      bytesInUse: start + 10 * MiB,
      ceilingBytes: start + 10 * MiB,
      cause: 'ceiling',
    });
    expect(err.message).toMatch(/cannot allocate float32\[262144\] \(1\.0 MiB\) in kernel Fill/);
    expect(err.message).toMatch(/--backend tensorflow/);
    expect(err.message).toMatch(/MGLLAVA_WASM_CEILING_MB/);
    setMemoryCeiling(null); // room for the checks' scalars
    expectIntact(ts);
    tf.dispose(ts);
    expect(wasmBytesInUse()).toBe(start);
    expect(tf.memory().numTensors).toBe(numTensors);
  });

  it('names the kernel, and a refused kernel frees its temporaries (both product paths)', () => {
    const a = tf.randomNormal([256, 256]);
    const b = tf.randomNormal([256, 256]);
    const start = wasmBytesInUse()!;
    const numTensors = tf.memory().numTensors;
    const wasNative = nativeStatus().active;
    try {
      // XNNPACK: room for one 256 KiB transposed operand, not for the second one nor the output.
      setNativeActive(false);
      setMemoryCeiling(start + 300 * 1024);
      expect(() => tf.matMul(a, b, true, true)).toThrow(/in kernel BatchMatMul/);
      expect(wasmBytesInUse()).toBe(start);
      if (wasNative) {
        // Native: no temporaries on the heap; the 256 KiB output alone is refused.
        setNativeActive(true);
        setMemoryCeiling(start + 200 * 1024);
        expect(() => tf.matMul(a, b, true, true)).toThrow(/in kernel BatchMatMul/);
        expect(wasmBytesInUse()).toBe(start);
      }
    } finally {
      setNativeActive(wasNative);
      setMemoryCeiling(null);
    }
    expect(tf.memory().numTensors).toBe(numTensors);
    tf.dispose([a, b]);
  });

  it('names tensors made from host data without a kernel', () => {
    setMemoryCeiling(wasmBytesInUse()! + 1024);
    expect(() => tf.tensor(new Float32Array(1024))).toThrow(/cannot allocate float32\[1024\] \(4096 B\): /);
  });

  it("counts XNNPACK's packed copy of a matmul's B operand until that tensor is freed", () => {
    const a = tf.ones([8, 64]);
    const w = tf.ones([64, 128]);
    const start = wasmBytesInUse()!;
    const wasNative = setNativeActive(false); // the native path packs outside the heap, per call
    let y: tf.Tensor;
    try {
      y = tf.matMul(a, w);
    } finally {
      setNativeActive(wasNative);
    }
    const withPacked = wasmBytesInUse()! - start;
    expect(withPacked).toBeGreaterThan(8 * 128 * 4 + 64 * 128 * 4); // output + packed weights
    w.dispose();
    y.dispose();
    expect(wasmBytesInUse()).toBe(start - 64 * 128 * 4);
    a.dispose();
  });

  it('near the real heap limit: the default ceiling refuses first, malloc failure is caught past it', () => {
    const start = wasmBytesInUse()!;
    const ts: tf.Tensor[] = [];
    try {
      setMemoryCeiling(DEFAULT_CEILING_BYTES);
      const byCeiling = fillUntilRefused(64 * MiB, ts); // 256 MiB each
      expect(byCeiling.detail.cause).toBe('ceiling');
      expect(start + ts.length * 256 * MiB).toBeLessThanOrEqual(DEFAULT_CEILING_BYTES);
      // Without a ceiling below the heap limit, malloc itself fails: without the guard the tensor
      // would land at offset 0 over the others.
      setMemoryCeiling(8 * GiB);
      const byHeap = fillUntilRefused(64 * MiB, ts);
      expect(byHeap.detail.cause).toBe('heap');
      expect(byHeap.message).toMatch(/wasm heap exhausted: malloc of float32\[67108864\] \(256\.0 MiB\) in kernel Fill failed/);
      expect(ts.length * 256 * MiB).toBeGreaterThan(3.5 * GiB);
      expectIntact(ts);
    } finally {
      tf.dispose(ts);
    }
    expect(wasmBytesInUse()).toBe(start);
  });
});
