/**
 * One AdamW update of a parameter (torch.optim.AdamW, float32): the new parameter and moments.
 *
 *   g = gradScale g;  m' = b1 m + (1-b1) g;  v' = b2 v + (1-b2) g^2;  p' = p (1 - lr wd) - lr/bc1 * m' / (sqrt(v')/sqrt(bc2) + eps)
 *
 * On wasm this is one kernel of the pack (`MgllavaAdamW`, backend/kernels/adamw.ts); elsewhere the
 * composite below. Both run the same float32 operations in the same order: results are identical.
 */
import * as tf from '@tensorflow/tfjs';
import { ADAMW_KERNEL } from '../backend/kernels/adamw.js';

export interface AdamWStep {
  beta1: number;
  beta2: number;
  /** sqrt(1 - beta2^t) */
  bc2Sqrt: number;
  eps: number;
  /** lr / (1 - beta1^t) */
  stepSize: number;
  /** 1 - lr * weightDecay (1: no decay) */
  decay: number;
  /** g is multiplied by this first (the clip-by-global-norm coefficient; default 1). */
  gradScale?: number;
}

export interface AdamWUpdate {
  p: tf.Tensor;
  m: tf.Tensor;
  v: tf.Tensor;
}

/** New p, m, v (fresh tensors; the caller assigns them). g may be any float32 tensor of p's size. */
export function adamwUpdate(p: tf.Tensor, m: tf.Tensor, v: tf.Tensor, g: tf.Tensor, c: AdamWStep): AdamWUpdate {
  if (tf.getKernel(ADAMW_KERNEL, tf.getBackend())) {
    const consts = [c.beta1, 1 - c.beta1, c.beta2, 1 - c.beta2, c.bc2Sqrt, c.eps, c.stepSize, c.decay, c.gradScale ?? 1];
    const [np, nm, nv] = tf.engine().runKernel(ADAMW_KERNEL, { p, m, v, g }, { consts } as unknown as tf.NamedAttrMap) as tf.Tensor[];
    return { p: np!, m: nm!, v: nv! };
  }
  return adamwComposite(p, m, v, g, c);
}

/** The update as tfjs ops (any backend; the reference the kernel is tested against). */
export function adamwComposite(p: tf.Tensor, m: tf.Tensor, v: tf.Tensor, g: tf.Tensor, c: AdamWStep): AdamWUpdate {
  return tf.tidy(() => {
    const gs = (c.gradScale ?? 1) === 1 ? g : tf.mul(g, c.gradScale!);
    const nm = tf.add(tf.mul(m, c.beta1), tf.mul(gs, 1 - c.beta1));
    const nv = tf.add(tf.mul(v, c.beta2), tf.mul(tf.square(gs), 1 - c.beta2));
    const denom = tf.add(tf.div(tf.sqrt(nv), c.bc2Sqrt), c.eps);
    const decayed = c.decay === 1 ? p : tf.mul(p, c.decay);
    return { p: tf.sub(decayed, tf.mul(tf.div(nm, denom), c.stepSize)), m: nm, v: nv };
  });
}
