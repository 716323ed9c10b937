/**
 * `MgllavaAdamW`: one AdamW update of a parameter in one pass (p, m, v, g -> p', m', v'; g optionally
 * scaled first, e.g. by the clip-by-global-norm coefficient), the same
 * float32 operations in the same order as the composite in `src/nn/adamw-update.ts` (hence as
 * `AdamW.apply`), so the results are bit-identical; ~10 tfjs kernels per parameter become one
 * (the composite costs ~30 ms per step for the 4.5 M parameters of the tiny sft benchmark, most of
 * it per-op overhead). The SIMD loop covers the elements in groups of 4, JavaScript the tail
 * (float32 rounding with Math.fround after every operation).
 */
import type { KernelFunc, TensorInfo } from '@tensorflow/tfjs';
import * as tf from '@tensorflow/tfjs';
import { f32, offsetOf, withScratch } from './heap.js';
import { simdLoops } from './simd.js';

export const ADAMW_KERNEL = 'MgllavaAdamW';

export interface AdamWKernelAttrs {
  /** [b1, 1-b1, b2, 1-b2, sqrt(1-b2^t), eps, lr/(1-b1^t), 1-lr*wd, gradient scale] */
  consts: number[];
}

export function packAdamW(args: Parameters<KernelFunc>[0]): TensorInfo[] {
  const { p, m, v, g } = args.inputs as Record<'p' | 'm' | 'v' | 'g', TensorInfo>;
  const { consts } = args.attrs as unknown as AdamWKernelAttrs;
  const n = tf.util.sizeFromShape(p.shape);
  for (const [name, t] of [['m', m], ['v', v], ['g', g]] as const) {
    if (t.dtype !== 'float32' || tf.util.sizeFromShape(t.shape) !== n) {
      throw new Error(`${ADAMW_KERNEL} (wasm kernel pack): ${name} must be float32 of ${n} elements like p [${p.shape}], got ${t.dtype} [${t.shape}]`);
    }
  }
  if (p.dtype !== 'float32') throw new Error(`${ADAMW_KERNEL} (wasm kernel pack): p must be float32, got ${p.dtype}`);
  if (consts.length !== 9) throw new Error(`${ADAMW_KERNEL} (wasm kernel pack): expected 9 constants, got ${consts.length}`);
  return withScratch(args.backend, (s, be) => {
    const outs = [s.alloc(p.shape), s.alloc(p.shape), s.alloc(p.shape)];
    const c = s.alloc([9]);
    f32(be, c).set(consts);
    const n4 = n & ~3;
    const [po, mo, vo] = outs.map((t) => offsetOf(be, t)) as [number, number, number];
    simdLoops(be).adamw(offsetOf(be, p), offsetOf(be, m), offsetOf(be, v), offsetOf(be, g), po, mo, vo, n4 * 4, offsetOf(be, c));
    if (n4 < n) {
      const [P, M, V, G, PO, MO, VO] = [p, m, v, g, ...outs].map((t) => f32(be, t));
      const k = Float32Array.from(consts);
      const r = Math.fround;
      for (let i = n4; i < n; i++) {
        const gi = r(G![i]! * k[8]!);
        const mi = r(r(M![i]! * k[0]!) + r(gi * k[1]!));
        const vi = r(r(V![i]! * k[2]!) + r(r(gi * gi) * k[3]!));
        const den = r(r(r(Math.sqrt(vi)) / k[4]!) + k[5]!);
        MO![i] = mi;
        VO![i] = vi;
        PO![i] = r(r(P![i]! * k[7]!) - r(r(mi / den) * k[6]!));
      }
    }
    return outs.map((t) => s.keep(t));
  });
}
