/**
 * Rotary position embedding in the HF "rotate_half" layout (REFERENCE (d)):
 *   inv_freq[j] = theta^(-2j/hd) (j < hd/2), angle = pos * inv_freq (fp32), emb = cat(angle, angle),
 *   x' = x * cos(emb) + rotate_half(x) * sin(emb),   rotate_half(x) = cat(-x[hd/2:], x[:hd/2]).
 *
 * The cos/sin values are computed on the host, once per position, and cached (a table that grows on
 * demand); a forward pass copies the rows of its position ids. rotate_half is a matmul with a constant
 * signed permutation matrix: one plain 2-D matmul (fast on wasm, exact: one non-zero per column) instead
 * of slicing the activations in two halves.
 */
import * as tf from '@tensorflow/tfjs';
import { ROPE_KERNEL, ropeKernelFits, runRope } from '../../backend/kernels/rope.js';

export class RopeTable {
  /** fp32 inverse frequencies, computed the way HF does in float32. */
  private readonly invFreq: Float32Array;
  private cosTable = new Float32Array(0);
  private sinTable = new Float32Array(0);
  private positions = 0;

  constructor(
    readonly headDim: number,
    readonly theta: number,
  ) {
    if (headDim % 2 !== 0) throw new Error(`RoPE: head dim ${headDim} must be even`);
    const half = headDim / 2;
    this.invFreq = new Float32Array(half);
    for (let j = 0; j < half; j++) {
      const exponent = Math.fround((2 * j) / headDim);
      this.invFreq[j] = Math.fround(1 / Math.fround(Math.pow(theta, exponent)));
    }
  }

  /** Make the table cover positions [0, n). */
  private ensure(n: number): void {
    if (n <= this.positions) return;
    const size = Math.max(n, 2 * this.positions, 64);
    const hd = this.headDim;
    const half = hd / 2;
    const cos = new Float32Array(size * hd);
    const sin = new Float32Array(size * hd);
    cos.set(this.cosTable);
    sin.set(this.sinTable);
    for (let p = this.positions; p < size; p++) {
      for (let j = 0; j < half; j++) {
        const angle = Math.fround(p * this.invFreq[j]!); // fp32 product, as HF
        const c = Math.cos(angle);
        const s = Math.sin(angle);
        cos[p * hd + j] = c;
        cos[p * hd + j + half] = c;
        sin[p * hd + j] = s;
        sin[p * hd + j + half] = s;
      }
    }
    this.cosTable = cos;
    this.sinTable = sin;
    this.positions = size;
  }

  /** cos/sin rows for each position id, each a Float32Array `[positions.length, hd]`. */
  rows(positions: ArrayLike<number>): { cos: Float32Array; sin: Float32Array } {
    let max = -1;
    for (let i = 0; i < positions.length; i++) {
      const p = positions[i]!;
      if (!Number.isInteger(p) || p < 0) throw new Error(`RoPE: position id ${p} at index ${i} is not a non-negative integer`);
      if (p > max) max = p;
    }
    this.ensure(max + 1);
    const hd = this.headDim;
    const cos = new Float32Array(positions.length * hd);
    const sin = new Float32Array(positions.length * hd);
    for (let i = 0; i < positions.length; i++) {
      const p = positions[i]!;
      cos.set(this.cosTable.subarray(p * hd, p * hd + hd), i * hd);
      sin.set(this.sinTable.subarray(p * hd, p * hd + hd), i * hd);
    }
    return { cos, sin };
  }
}

/** R [hd, hd] with x @ R = rotate_half(x) = cat(-x[hd/2:], x[:hd/2]). */
export function rotateHalfMatrix(headDim: number): tf.Tensor2D {
  const half = headDim / 2;
  const r = new Float32Array(headDim * headDim);
  for (let i = 0; i < half; i++) {
    r[(i + half) * headDim + i] = -1; // out[i] = -x[i + half]
    r[i * headDim + i + half] = 1; // out[i + half] = x[i]
  }
  return tf.tensor2d(r, [headDim, headDim]);
}

/** The per-forward RoPE operands: cos/sin broadcastable over heads, and the rotate_half matrix. */
export interface RopeOperands {
  cos: tf.Tensor3D; // [N,1,hd]
  sin: tf.Tensor3D; // [N,1,hd]
  rotate: tf.Tensor2D; // [hd,hd]
  /**
   * For the one-pass kernel (wasm): `sin` with its first half negated (rotate_half's sign folded in)
   * and that table with its halves swapped (the gradient's). Without them `applyRope` uses the matmul.
   */
  kernelTables?: { signed: tf.Tensor3D; swapped: tf.Tensor3D }; // [N,1,hd] each
}

/** The kernel tables for sin rows [N*hd] (`RopeOperands.kernelTables`), or undefined when the kernel cannot run. */
export function ropeKernelTables(sin: Float32Array, n: number, hd: number): RopeOperands['kernelTables'] {
  if (!tf.getKernel(ROPE_KERNEL, tf.getBackend()) || !ropeKernelFits(hd)) return undefined;
  const half = hd / 2;
  const signed = new Float32Array(n * hd);
  const swapped = new Float32Array(n * hd);
  for (let r = 0; r < n; r++) {
    for (let j = 0; j < half; j++) {
      const lo = r * hd + j;
      signed[lo] = -sin[lo]!;
      signed[lo + half] = sin[lo + half]!;
      swapped[lo] = sin[lo + half]!;
      swapped[lo + half] = -sin[lo]!;
    }
  }
  return { signed: tf.tensor3d(signed, [n, 1, hd]), swapped: tf.tensor3d(swapped, [n, 1, hd]) };
}

/** x [N, heads, hd] -> x * cos + rotate_half(x) * sin, same shape. */
export function applyRope(x: tf.Tensor3D, rope: RopeOperands): tf.Tensor3D {
  const k = rope.kernelTables;
  if (k) {
    // out = x*cos + swapHalves(x)*signed; its gradient is the same map with the swapped table.
    // The tables the gradient needs are saved: they belong to the forward's scope, which ends first.
    const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
      (args[1] as tf.GradSaveFunc)([rope.cos, k.swapped]);
      return {
        value: runRope(args[0] as tf.Tensor, rope.cos, k.signed),
        gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => runRope(dy, saved[0]!, saved[1]!),
      };
    });
    return op(x) as tf.Tensor3D;
  }
  return tf.tidy(() => {
    const [n, h, hd] = x.shape;
    const rotated = tf.matMul(x.reshape([n * h, hd]), rope.rotate).reshape([n, h, hd]); // [N,h,hd]
    return tf.add(tf.mul(x, rope.cos), tf.mul(rotated, rope.sin)) as tf.Tensor3D;
  });
}
