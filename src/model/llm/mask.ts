/**
 * The decoder's additive attention mask and default position ids, planned on the host from the
 * [B, T] attention mask of the new tokens (and the cache's past positions).
 *
 * A key is visible to a query when it is not in the query's future (causal) and it is real (mask 1).
 * Hidden keys get a large finite negative (not -inf, like HF's finfo.min): a query whose keys are all
 * hidden (a padding-only row) then gets a uniform softmax instead of NaN.
 */
import * as tf from '@tensorflow/tfjs';
import type { IntMatrix } from './int-matrix.js';
import type { KvCache } from './kv-cache.js';

/** Added to the scores of hidden keys. Twice this (causal + padding) is still finite in fp32. */
export const MASK_NEG = -1e9;

/**
 * Additive mask [B or 1, 1, T, S] for T new queries over S = past + T keys. Row-independent (shape
 * [1,1,T,S], no padding term) when every key is real.
 */
export function attentionBias(mask: IntMatrix, cache: KvCache | null): tf.Tensor4D {
  const [b, t] = mask.shape;
  const past = cache ? cache.length : 0;
  const s = past + t;
  const causal = new Float32Array(t * s);
  for (let q = 0; q < t; q++) causal.fill(MASK_NEG, q * s + past + q + 1, (q + 1) * s); // keys after the query
  const padding = new Float32Array(b * s);
  let anyPadding = false;
  for (let r = 0; r < b; r++) {
    for (let k = 0; k < s; k++) {
      const real = k < past ? cache!.keyIsReal(r, k) : mask.data[r * t + (k - past)] !== 0;
      if (!real) {
        padding[r * s + k] = MASK_NEG;
        anyPadding = true;
      }
    }
  }
  return tf.tidy(() => {
    const c = tf.tensor4d(causal, [1, 1, t, s]);
    return anyPadding ? (tf.add(c, tf.tensor4d(padding, [b, 1, 1, s])) as tf.Tensor4D) : c;
  });
}

/**
 * Default position ids [B, T]: each real token gets the number of real tokens before it in its row
 * (continuing from the cache), padding gets 0. Equals arange(T) for an unpadded row, and matches the
 * splice's convention (arange on real positions, 0 on right padding) and HF's cumsum convention for left
 * padding on every real token.
 */
export function defaultPositionIds(mask: IntMatrix, cache: KvCache | null): IntMatrix {
  const [b, t] = mask.shape;
  const data = new Int32Array(b * t);
  for (let r = 0; r < b; r++) {
    let next = cache ? cache.nextPosition(r) : 0;
    for (let i = 0; i < t; i++) {
      if (mask.data[r * t + i] !== 0) data[r * t + i] = next++;
    }
  }
  return { data, shape: [b, t] };
}
