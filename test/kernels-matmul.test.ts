import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PACK_KERNELS, wasmKernelPackRegistered } from '../src/backend/kernels/index.js';
import { broadcastBatchIndex } from '../src/backend/kernels/matmul.js';
import { nativeStatus, setNativeActive } from '../src/backend/native.js';
import { expectSameOnCpu, rand } from './kernels-compare.js';

const onWasm = process.env.MGLLAVA_BACKEND == null || process.env.MGLLAVA_BACKEND === 'wasm';
const FLAGS: [boolean, boolean][] = [
  [false, false],
  [false, true],
  [true, false],
  [true, true],
];

/** Stored shapes of a and b for op(a)·op(b) with a batch prefix. */
function operands(batchA: number[], batchB: number[], M: number, K: number, N: number, tA: boolean, tB: boolean) {
  return [rand([...batchA, ...(tA ? [K, M] : [M, K])], 11), rand([...batchB, ...(tB ? [N, K] : [K, N])], 23)];
}

// Every case runs on both product paths: the native addon (when active; CI requires it) and XNNPACK.
const PATHS = onWasm ? (nativeStatus().active ? ['native', 'xnnpack'] : ['xnnpack']) : [];

describe.each(PATHS)('wasm kernel pack: BatchMatMul on %s', (path) => {
  let wasNative = false;
  beforeAll(() => {
    wasNative = setNativeActive(path === 'native');
  });
  afterAll(() => {
    setNativeActive(wasNative);
  });

  it('is the registered wasm kernel', () => {
    expect(wasmKernelPackRegistered()).toBe(true);
    expect(tf.getKernel(tf.BatchMatMul, 'wasm')?.kernelFunc).toBe(PACK_KERNELS[tf.BatchMatMul]);
  });

  // [M, K, N]; the skewed ones make matMul2D take the "transpose the result" route.
  const sizes2D: [number, number, number][] = [
    [1, 1, 1],
    [5, 7, 3],
    [17, 33, 9],
    [64, 48, 32],
    [2, 64, 300],
    [300, 64, 2],
    [1, 40, 1],
  ];
  for (const [M, K, N] of sizes2D) {
    for (const [tA, tB] of FLAGS) {
      it(`2-D ${M}x${K}x${N} transposeA=${tA} transposeB=${tB}`, async () => {
        await expectSameOnCpu((a, b) => tf.matMul(a!, b!, tA, tB), operands([], [], M, K, N, tA, tB));
      });
    }
  }

  const batched: [number[], number[], number, number, number][] = [
    [[3], [3], 5, 7, 4],
    [[1], [1], 6, 5, 3], // rank 3, batch 1
    [[3], [], 5, 7, 4], // B broadcast: folded into one product
    [[], [3], 5, 7, 4], // A broadcast
    [[1], [4], 5, 7, 6],
    [[2, 3], [2, 3], 1, 9, 1],
  ];
  for (const [bA, bB, M, K, N] of batched) {
    for (const [tA, tB] of FLAGS) {
      it(`batched [${bA}]x[${bB}] ${M}x${K}x${N} transposeA=${tA} transposeB=${tB}`, async () => {
        await expectSameOnCpu((a, b) => tf.matMul(a!, b!, tA, tB), operands(bA, bB, M, K, N, tA, tB));
      });
    }
  }

  it('broadcasts batch dims on both sides (cpu reference: explicit tiles, its own kernel gets this wrong)', async () => {
    for (const [tA, tB] of FLAGS) {
      await expectSameOnCpu(
        (a, b) => tf.matMul(a!, b!, tA, tB),
        operands([2, 1], [1, 3], 5, 7, 4, tA, tB),
        1e-5,
        (a, b) => tf.matMul(tf.tile(a!, [1, 3, 1, 1]), tf.tile(b!, [2, 1, 1, 1]), tA, tB),
      );
    }
  });

  it('empty inner dimension gives zeros, empty outer gives an empty tensor', async () => {
    await expectSameOnCpu((a, b) => tf.matMul(a!, b!, false, true), [rand([3, 0]), rand([4, 0])]);
    await expectSameOnCpu((a, b) => tf.matMul(a!, b!, true, false), [rand([2, 0, 3]), rand([2, 0, 4])]);
    await expectSameOnCpu((a, b) => tf.matMul(a!, b!), [rand([0, 5]), rand([5, 4])]);
  });

  it('gradients of batched and transposed products agree with cpu', async () => {
    for (const [tA, tB] of FLAGS) {
      await expectSameOnCpu(
        (a, b, r) => tf.grads((x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.mul(tf.matMul(x, y, tA, tB), r!)))([a!, b!]),
        [...operands([4], [4], 6, 5, 7, tA, tB), rand([4, 6, 7], 5)],
      );
    }
  });

  it('a tensor reused as B under another shape gets no stale XNNPACK operator', async () => {
    // Stock tfjs 4.22 caches the packed B per tensor id: the second product reads [64,256]-packed
    // weights as [128,128] (wrong values or a memory access out of bounds).
    await expectSameOnCpu(
      (w, a, a2) => {
        const first = tf.matMul(a!, w!);
        const second = tf.matMul(a2!, tf.reshape(w!, [128, 128]));
        return [first, second];
      },
      [rand([64, 256], 3), rand([4, 64], 4), rand([4, 128], 5)],
    );
  });

  it('maps broadcast batch indices as tfjs defines them', () => {
    expect(Array.from(broadcastBatchIndex([2, 3], [1, 3]))).toEqual([0, 1, 2, 0, 1, 2]);
    expect(Array.from(broadcastBatchIndex([2, 3], [2, 1]))).toEqual([0, 0, 0, 1, 1, 1]);
    expect(Array.from(broadcastBatchIndex([2, 3], [3]))).toEqual([0, 1, 2, 0, 1, 2]);
    expect(Array.from(broadcastBatchIndex([2, 3], []))).toEqual([0, 0, 0, 0, 0, 0]);
  });

  it('rejects mismatched inner dimensions like tfjs', () => {
    expect(() => tf.tidy(() => tf.matMul(tf.ones([2, 3, 4]), tf.ones([2, 5, 6])))).toThrow(/inner shapes/);
  });
});
