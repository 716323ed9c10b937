/** Scaled dot-product attention shared by the CLIP ViT and the LLaMA decoder. */
import * as tf from '@tensorflow/tfjs';

/**
 * softmax(q k^T * scale + bias) v.
 * q [B,H,T,hd], k/v [B,H,S,hd]; `bias` is additive, broadcastable to [B,H,T,S] (null: no mask).
 * Returns [B,H,T,hd]. Softmax runs in float32 (the only float dtype tfjs has).
 */
export function scaledDotProductAttention(
  q: tf.Tensor4D,
  k: tf.Tensor4D,
  v: tf.Tensor4D,
  bias: tf.Tensor | null,
  scale = 1 / Math.sqrt(q.shape[3]),
): tf.Tensor4D {
  return tf.tidy(() => {
    let scores = tf.matMul(tf.mul(q, scale), k, false, true); // [B,H,T,S]
    if (bias) scores = tf.add(scores, bias);
    return tf.matMul(tf.softmax(scores, -1), v) as tf.Tensor4D; // [B,H,T,hd]
  });
}

/** [B,T,H*hd] -> [B,H,T,hd] */
export function splitHeads(x: tf.Tensor, heads: number): tf.Tensor4D {
  const [b, t, d] = x.shape as [number, number, number];
  return tf.tidy(() => x.reshape([b, t, heads, d / heads]).transpose([0, 2, 1, 3]) as tf.Tensor4D);
}

/** [B,H,T,hd] -> [B,T,H*hd] */
export function mergeHeads(x: tf.Tensor4D): tf.Tensor3D {
  const [b, h, t, hd] = x.shape;
  return tf.tidy(() => x.transpose([0, 2, 1, 3]).reshape([b, t, h * hd]) as tf.Tensor3D);
}
