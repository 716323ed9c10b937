/**
 * AdamW (decoupled weight decay), written out to match torch.optim.AdamW in float32, and clipping by
 * the global L2 norm of the trainable set (torch.nn.utils.clip_grad_norm_).
 */
import * as tf from '@tensorflow/tfjs';
import { adamwUpdate } from '../nn/adamw-update.js';

export interface AdamWConfig {
  betas: [number, number];
  eps: number;
  weightDecay: number;
}

export const DEFAULT_ADAMW: AdamWConfig = { betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0 };

export class AdamW {
  /** Completed steps (torch's `state['step']`). */
  step = 0;
  private readonly m = new Map<string, tf.Variable>();
  private readonly v = new Map<string, tf.Variable>();

  constructor(
    readonly params: Map<string, tf.Variable>,
    readonly config: AdamWConfig = DEFAULT_ADAMW,
  ) {
    for (const [name, p] of params) {
      // Inside tidy: the zeros are freed, the variables (which hold their own reference) are not.
      tf.tidy(() => {
        this.m.set(name, tf.variable(tf.zerosLike(p), false));
        this.v.set(name, tf.variable(tf.zerosLike(p), false));
      });
    }
  }

  /** One update with learning rate `lr`. `grads` holds a gradient for every parameter (by name). */
  /** One step; every gradient is multiplied by `gradScale` first (the clip coefficient: no scaled copies). */
  apply(grads: Map<string, tf.Tensor>, lr: number, gradScale = 1): void {
    this.step += 1;
    const [b1, b2] = this.config.betas;
    const bc1 = 1 - b1 ** this.step;
    const bc2Sqrt = Math.sqrt(1 - b2 ** this.step);
    const stepSize = lr / bc1;
    const decay = 1 - lr * this.config.weightDecay;
    tf.tidy(() => {
      for (const [name, p] of this.params) {
        const g = grads.get(name);
        if (!g) throw new Error(`AdamW: no gradient for '${name}'`);
        const m = this.m.get(name)!;
        const v = this.v.get(name)!;
        // One fused kernel on wasm (the pack's MgllavaAdamW), the same float32 ops in the same order elsewhere.
        const next = adamwUpdate(p, m, v, g, { beta1: b1, beta2: b2, bc2Sqrt, eps: this.config.eps, stepSize, decay, gradScale });
        m.assign(next.m);
        v.assign(next.v);
        p.assign(next.p);
      }
    });
  }

  /** Moments under `<name>.exp_avg` / `<name>.exp_avg_sq`, for checkpoints. */
  stateTensors(): Map<string, tf.Tensor> {
    const out = new Map<string, tf.Tensor>();
    for (const [name] of this.params) {
      out.set(`${name}.exp_avg`, this.m.get(name)!);
      out.set(`${name}.exp_avg_sq`, this.v.get(name)!);
    }
    return out;
  }

  /** Restore moments and the step count saved by `stateTensors()`; every moment must be present. */
  loadState(step: number, tensors: Map<string, tf.Tensor | { shape: number[]; data: Float32Array | Int32Array }>): void {
    const missing: string[] = [];
    for (const [name, p] of this.params) {
      for (const [key, target] of [
        [`${name}.exp_avg`, this.m.get(name)!],
        [`${name}.exp_avg_sq`, this.v.get(name)!],
      ] as const) {
        const src = tensors.get(key);
        if (!src) {
          missing.push(key);
          continue;
        }
        if (src.shape.join(',') !== p.shape.join(',')) throw new Error(`optimizer state ${key}: shape [${src.shape}] != [${p.shape}]`);
        tf.tidy(() => target.assign(src instanceof tf.Tensor ? src : tf.tensor(src.data, src.shape, 'float32')));
      }
    }
    if (missing.length) throw new Error(`optimizer state is missing ${missing.length} tensors: ${missing.slice(0, 10).join(', ')}`);
    this.step = step;
  }

  dispose(): void {
    for (const t of [...this.m.values(), ...this.v.values()]) t.dispose();
  }
}

/** Global L2 norm of the gradients (sqrt of the sum of squared per-tensor norms). Returns a scalar. */
export function globalNorm(grads: Iterable<tf.Tensor>): tf.Scalar {
  return tf.tidy(() => {
    const sq = [...grads].map((g) => tf.sum(tf.square(g)));
    return tf.sqrt(sq.length ? tf.addN(sq) : tf.scalar(0)) as tf.Scalar;
  });
}

/** clip_grad_norm_'s factor: min(1, max_norm / (norm + 1e-6)), with the pre-clip global norm (read asynchronously: webgpu). */
export async function clipCoefficient(grads: Map<string, tf.Tensor>, maxNorm: number): Promise<{ coef: number; norm: number }> {
  const normT = globalNorm(grads.values());
  const norm = (await normT.data())[0]!;
  normT.dispose();
  return { coef: Math.min(1, maxNorm / (norm + 1e-6)), norm };
}

/**
 * clip_grad_norm_: scale every gradient by max_norm / (norm + 1e-6) when that is below 1.
 * Returns the clipped gradients (new tensors) and the pre-clip norm. (Training passes the
 * coefficient to AdamW.apply instead: the same float32 products, without the copies.)
 */
export async function clipByGlobalNorm(
  grads: Map<string, tf.Tensor>,
  maxNorm: number,
): Promise<{ grads: Map<string, tf.Tensor>; norm: number }> {
  const { coef, norm } = await clipCoefficient(grads, maxNorm);
  const out = new Map<string, tf.Tensor>();
  for (const [name, g] of grads) out.set(name, coef < 1 ? tf.mul(g, coef) : g.clone());
  return { grads: out, norm };
}
