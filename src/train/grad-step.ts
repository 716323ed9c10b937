/**
 * The model-independent half of an optimizer step, shared by the stages: gradients of micro-batches summed
 * by checkpoint name, then global-norm clipping and an AdamW update — skipped when the loss or the norm is
 * not finite (nothing is updated, the caller reports it).
 */
import * as tf from '@tensorflow/tfjs';
import { clipCoefficient, type AdamW } from './adamw.js';

/**
 * Add `grads` (tf.variableGrads' result, keyed by variable name) into `acc` (keyed by checkpoint name).
 * Takes ownership of the gradients.
 */
export function addGradients(acc: Map<string, tf.Tensor>, trainable: Map<string, tf.Variable>, grads: tf.NamedTensorMap): void {
  for (const [name, v] of trainable) {
    const g = grads[v.name];
    if (!g) continue;
    const prev = acc.get(name);
    if (prev) {
      acc.set(name, tf.add(prev, g));
      prev.dispose();
      g.dispose();
    } else {
      acc.set(name, g);
    }
  }
}

/** Clip the accumulated gradients and update, unless `loss` or their norm is not finite. Does not dispose `grads`. */
export async function applyGradients(grads: Map<string, tf.Tensor>, loss: number, optimizer: AdamW, lr: number, maxNorm: number): Promise<{ gradNorm: number; applied: boolean }> {
  const { coef, norm } = await clipCoefficient(grads, maxNorm);
  const applied = Number.isFinite(loss) && Number.isFinite(norm);
  if (applied) optimizer.apply(grads, lr, coef); // the clip scaling happens inside the update
  return { gradNorm: norm, applied };
}
