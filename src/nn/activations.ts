/** Activations, each the exact flavour the reference uses (REFERENCE.md pitfall 3). */
import * as tf from '@tensorflow/tfjs';

/** Exact GELU, x * Phi(x) with erf: fusion, projectors, gate, ConvNeXt (HF/torch `gelu`). */
export function geluErf(x: tf.Tensor): tf.Tensor {
  return tf.tidy(() => tf.mul(tf.mul(x, 0.5), tf.add(1, tf.erf(tf.mul(x, Math.SQRT1_2)))));
}

/** CLIP's quick_gelu: x * sigmoid(1.702 x). */
export function quickGelu(x: tf.Tensor): tf.Tensor {
  return tf.tidy(() => tf.mul(x, tf.sigmoid(tf.mul(x, 1.702))));
}

/** SiLU (LLaMA MLP): x * sigmoid(x). */
export function silu(x: tf.Tensor): tf.Tensor {
  return tf.tidy(() => tf.mul(x, tf.sigmoid(x)));
}
