/**
 * Gradients of a golden loss w.r.t. named variables (checkpoint-named weights and input tensors made
 * variables), returned under the same names. Shared by the fusion and object-feature runners.
 */
import * as tf from '@tensorflow/tfjs';

/** d loss / d v for every named variable; the caller disposes the returned tensors. */
export function namedGrads(loss: () => tf.Scalar, vars: Map<string, tf.Variable>): Map<string, tf.Tensor> {
  const list = [...vars.values()];
  const { value, grads } = tf.variableGrads(loss, list);
  value.dispose();
  const out = new Map<string, tf.Tensor>();
  for (const [name, v] of vars) {
    const g = grads[v.name];
    if (!g) throw new Error(`no gradient for '${name}' (not reached by the loss)`);
    out.set(name, g);
  }
  return out;
}
