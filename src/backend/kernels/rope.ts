/**
 * `MgllavaRope`: rotary embedding in one pass, out = x * c + swapHalves(x) * s for x [N, heads, hd]
 * and tables c, s [N, 1, hd] (shared by the heads of a row), swapHalves exchanging the two halves
 * of each head. With s = sin with its first half negated this is x*cos + rotate_half(x)*sin (the
 * forward pass); with s = that table's halves swapped it is the gradient (model/llm/rope.ts). The
 * composite it replaces (a [N*heads, hd] x [hd, hd] matmul with the signed permutation, two
 * multiplies, an add, and their gradients) cost ~1 ms per call at the decoder benchmark's size.
 * Same float32 operations as the composite: bit-identical.
 */
import * as tf from '@tensorflow/tfjs';
import type { KernelFunc, TensorInfo } from '@tensorflow/tfjs';
import { offsetOf, withScratch } from './heap.js';
import { simdLoops } from './simd.js';

export const ROPE_KERNEL = 'MgllavaRope';

/** Whether the kernel handles head size `hd` (halves of a multiple of 4 floats). */
export const ropeKernelFits = (hd: number) => hd % 8 === 0;

export function packRope(args: Parameters<KernelFunc>[0]): TensorInfo {
  const { x, c, s } = args.inputs as Record<'x' | 'c' | 's', TensorInfo>;
  const [n, heads, hd] = x.shape as [number, number, number];
  const table = [n, 1, hd].join(',');
  if (x.shape.length !== 3 || c.shape.join(',') !== table || s.shape.join(',') !== table || !ropeKernelFits(hd)) {
    throw new Error(`${ROPE_KERNEL} (wasm kernel pack): expected x [N,heads,hd] with hd a multiple of 8 and tables [N,1,hd], got [${x.shape}], [${c.shape}], [${s.shape}]`);
  }
  for (const t of [x, c, s]) if (t.dtype !== 'float32') throw new Error(`${ROPE_KERNEL} (wasm kernel pack): float32 only, got ${t.dtype}`);
  return withScratch(args.backend, (sc, be) => {
    const out = sc.alloc(x.shape);
    if (n * heads > 0) simdLoops(be).rope(offsetOf(be, x), offsetOf(be, c), offsetOf(be, s), offsetOf(be, out), n, heads, hd * 2);
    return sc.keep(out);
  });
}

/** The kernel through the engine (wasm only: callers check `tf.getKernel(ROPE_KERNEL, ...)`). */
export function runRope(x: tf.Tensor, c: tf.Tensor, s: tf.Tensor): tf.Tensor {
  return tf.engine().runKernel(ROPE_KERNEL, { x, c, s }, {}) as tf.Tensor;
}
