import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { ROPE_KERNEL } from '../src/backend/kernels/rope.js';
import { applyRope, ropeKernelTables, rotateHalfMatrix, RopeTable, type RopeOperands } from '../src/model/llm/rope.js';

const onWasm = process.env.MGLLAVA_BACKEND == null || process.env.MGLLAVA_BACKEND === 'wasm';

/** Operands for n rows (positions 0..n-1, scaled like the decoder's queries), with and without the kernel tables. */
function operands(n: number, hd: number, scale: number): { composite: RopeOperands; kernel: RopeOperands } {
  const { cos, sin } = new RopeTable(hd, 10000).rows(Array.from({ length: n }, (_, i) => (i * 7) % 50));
  const c = cos.map((v) => v * scale);
  const s = sin.map((v) => v * scale);
  const composite = { cos: tf.tensor3d(c, [n, 1, hd]), sin: tf.tensor3d(s, [n, 1, hd]), rotate: rotateHalfMatrix(hd) };
  return { composite, kernel: { ...composite, kernelTables: ropeKernelTables(s, n, hd) } };
}

describe.runIf(onWasm)('wasm kernel pack: MgllavaRope', () => {
  it('is registered for wasm', () => {
    expect(tf.getKernel(ROPE_KERNEL, 'wasm')).toBeDefined();
  });

  for (const [n, heads, hd] of [[5, 3, 8], [12, 4, 64], [1, 1, 16]] as const) {
    it(`forward and gradient are bit-identical to the matmul composite ([${n},${heads},${hd}])`, () => {
      const before = tf.memory().numTensors;
      // Operands made in a scope that ends before the gradient is taken (as in the decoder).
      const ops = tf.tidy(() => {
        const o = operands(n, hd, 0.125);
        expect(o.kernel.kernelTables).toBeDefined();
        return o as unknown as tf.TensorContainer; // tidy keeps the tensors nested in it
      }) as unknown as ReturnType<typeof operands>;
      const x = tf.randomNormal([n, heads, hd], 0, 1, 'float32', 1) as tf.Tensor3D;
      const dy = tf.randomNormal([n, heads, hd], 0, 1, 'float32', 2);
      const run = (o: RopeOperands) => {
        const y = applyRope(x, o);
        const g = tf.grad((t: tf.Tensor) => tf.sum(tf.mul(applyRope(t as tf.Tensor3D, o), dy)))(x);
        return [y, g];
      };
      const [yk, gk] = run(ops.kernel);
      const [yc, gc] = run(ops.composite);
      expect(Array.from(yk!.dataSync())).toEqual(Array.from(yc!.dataSync()));
      expect(Array.from(gk!.dataSync())).toEqual(Array.from(gc!.dataSync()));
      tf.dispose([x, dy, yk!, gk!, yc!, gc!, ops.composite.cos, ops.composite.sin, ops.composite.rotate, ops.kernel.kernelTables!.signed, ops.kernel.kernelTables!.swapped]);
      expect(tf.memory().numTensors).toBe(before);
    });
  }

  it('has no kernel tables for a head size that is not a multiple of 8 (the composite runs)', () => {
    expect(ropeKernelTables(new Float32Array(12), 3, 4)).toBeUndefined();
  });
});
