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

/**
 * scaledDotProductAttention without materialising more than `maxScores` scores at once: the [B,H,T,S] score
 * tensor is computed in blocks of heads and, when a single head is still too big, of query rows (OWLv2-large:
 * 16 heads x 5185^2 tokens = 1.7 GB per layer). Heads and query rows are independent, so every block is the
 * same arithmetic as the unblocked call. maxScores undefined or large enough: exactly the unblocked call.
 */
export function blockedAttention(
  q: tf.Tensor4D,
  k: tf.Tensor4D,
  v: tf.Tensor4D,
  bias: tf.Tensor | null,
  scale = 1 / Math.sqrt(q.shape[3]),
  maxScores = Infinity,
): tf.Tensor4D {
  const [b, h, t, hd] = q.shape;
  const s = k.shape[2];
  if (b * h * t * s <= maxScores) return scaledDotProductAttention(q, k, v, bias, scale);
  if (!(maxScores >= 1)) throw new Error(`blockedAttention: maxScores must be >= 1, got ${maxScores}`);
  const headsPer = Math.max(1, Math.floor(maxScores / (b * t * s)));
  const rowsPer = headsPer > 1 ? t : Math.max(1, Math.min(t, Math.floor(maxScores / (b * s))));
  return tf.tidy(() => {
    const bias4 = bias ? bias.reshape([...Array<number>(4 - bias.rank).fill(1), ...bias.shape]) : null; // [b|1, h|1, t|1, s]
    const heads: tf.Tensor4D[] = [];
    for (let h0 = 0; h0 < h; h0 += headsPer) {
      const nh = Math.min(headsPer, h - h0);
      const kb = tf.slice(k, [0, h0, 0, 0], [b, nh, s, hd]);
      const vb = tf.slice(v, [0, h0, 0, 0], [b, nh, s, hd]);
      const rows: tf.Tensor4D[] = [];
      for (let r0 = 0; r0 < t; r0 += rowsPer) {
        const nr = Math.min(rowsPer, t - r0);
        // One tidy per block: its scores are freed before the next block is computed.
        rows.push(
          tf.tidy(() => {
            const qb = tf.slice(q, [0, h0, r0, 0], [b, nh, nr, hd]);
            let bb: tf.Tensor | null = null;
            if (bias4) {
              const [, bh, bt] = bias4.shape;
              bb = tf.slice(bias4, [0, bh === 1 ? 0 : h0, bt === 1 ? 0 : r0, 0], [-1, bh === 1 ? 1 : nh, bt === 1 ? 1 : nr, -1]);
            }
            return scaledDotProductAttention(qb, kb, vb, bb, scale); // [B,nh,nr,hd]
          }),
        );
      }
      heads.push(rows.length === 1 ? rows[0]! : (tf.concat(rows, 2) as tf.Tensor4D));
    }
    return (heads.length === 1 ? heads[0]! : tf.concat(heads, 1)) as tf.Tensor4D; // [B,H,T,hd]
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
