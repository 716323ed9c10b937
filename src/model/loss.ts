/**
 * Causal-LM cross-entropy (REFERENCE (d)): `logits[:, t]` predicts `labels[:, t+1]`; targets equal to
 * IGNORE_INDEX (-100) do not count; the mean is over all supervised tokens of the batch (token-level,
 * not per sample).
 *
 * The shift is planned on the host (`shiftedTargets`): the rows of the flattened [B*T] positions that
 * have a supervised next token, and that token. Only those rows go through the softmax (a `gather`,
 * whose gradient is UnsortedSegmentSum), and the target log-probability is picked with a one-hot mask,
 * so no negative index is ever gathered. `LlamaForCausalLM.forward({ logitRows })` can skip the lm_head
 * for the other rows altogether (`causalLmLossOnRows`).
 *
 * No supervised token (count 0): the loss is exactly 0 (both reductions) and stays connected to the
 * logits, so gradients exist and are zero; HF/PyTorch would return NaN for the mean.
 */
import * as tf from '@tensorflow/tfjs';
import { IGNORE_INDEX } from '../data/constants.js';
import { toIntMatrix, type IntMatrixLike } from './llm/int-matrix.js';

export { IGNORE_INDEX };

export type LossReduction = 'mean' | 'sum';

/** The supervised positions of a batch after the next-token shift. */
export interface ShiftedTargets {
  /** Rows of the flattened [B*T] positions whose next label is supervised (ascending). */
  rows: Int32Array;
  /** The supervised next-token id for each row. */
  targets: Int32Array;
  /** Number of supervised tokens (= rows.length); gradient accumulation weights micro-batches by it. */
  count: number;
  /** B*T of the labels. */
  positions: number;
}

/**
 * Plan the shift: position (b, t) is supervised by labels[b, t+1] unless that is IGNORE_INDEX.
 * With `vocabSize`, every supervised label is checked to be in [0, V).
 */
export function shiftedTargets(labels: IntMatrixLike, vocabSize?: number): ShiftedTargets {
  const m = toIntMatrix(labels, 'labels');
  const [b, t] = m.shape;
  const rows: number[] = [];
  const targets: number[] = [];
  for (let r = 0; r < b; r++) {
    for (let i = 0; i + 1 < t; i++) {
      const y = m.data[r * t + i + 1]!;
      if (y === IGNORE_INDEX) continue;
      if (y < 0 || (vocabSize !== undefined && y >= vocabSize)) {
        throw new Error(`labels[${r},${i + 1}] = ${y} is neither ${IGNORE_INDEX} nor a token id in [0, ${vocabSize ?? 'V'})`);
      }
      rows.push(r * t + i);
      targets.push(y);
    }
  }
  return { rows: Int32Array.from(rows), targets: Int32Array.from(targets), count: rows.length, positions: b * t };
}

export interface CausalLmLoss {
  /** Mean (or sum) cross-entropy; 0 when nothing is supervised. */
  loss: tf.Scalar;
  /** Supervised tokens that went into it. */
  count: number;
}

/** Cross-entropy of logits [B,T,V] against labels [B,T] (shifted inside). */
export function causalLmLoss(logits: tf.Tensor, labels: IntMatrixLike, reduction: LossReduction = 'mean'): CausalLmLoss {
  if (logits.rank !== 3) throw new Error(`causalLmLoss: logits must be [B,T,V], got [${logits.shape}]`);
  const [b, t, v] = logits.shape as [number, number, number];
  const m = toIntMatrix(labels, 'labels');
  if (m.shape[0] !== b || m.shape[1] !== t) throw new Error(`causalLmLoss: labels [${m.shape}] do not match logits [${logits.shape}]`);
  const plan = shiftedTargets(m, v);
  // Every position keeps its row (a row gather is slow on wasm): unsupervised rows get target -1,
  // i.e. an all-zero one-hot row, and weight 0.
  const targets = new Int32Array(b * t).fill(-1);
  plan.rows.forEach((row, i) => (targets[row] = plan.targets[i]!));
  const loss = tf.tidy(() => reduce(crossEntropySum(logits.reshape([b * t, v]), targets), plan.count, reduction));
  return { loss, count: plan.count };
}

/**
 * Cross-entropy when the logits were computed only for `plan.rows` (logits [M,V], row i <-> plan.rows[i]),
 * e.g. `forward({ logitRows: plan.rows })`.
 */
export function causalLmLossOnRows(logits: tf.Tensor, plan: ShiftedTargets, reduction: LossReduction = 'mean'): CausalLmLoss {
  if (logits.rank !== 2 || logits.shape[0] !== plan.count) {
    throw new Error(`causalLmLossOnRows: logits [${logits.shape}] must be [${plan.count}, V] (one row per supervised token)`);
  }
  const loss = tf.tidy(() =>
    plan.count === 0 ? (tf.mul(tf.sum(logits), 0) as tf.Scalar) : reduce(crossEntropySum(logits, plan.targets), plan.count, reduction),
  );
  return { loss, count: plan.count };
}

/**
 * sum_i -log softmax(logits[i])[targets[i]] for logits [M,V]; a target of -1 skips its row (any other
 * target must be in [0, V)).
 *
 * A custom gradient, (softmax - onehot) * dy, built on the backend's native Softmax kernel, which is
 * several times faster on wasm than logSoftmax (a composite with a slow Exp). Stable without a log of a
 * small probability: lse = max(x) - log(max(softmax(x))), and max(softmax) >= 1/V never underflows.
 */
export function crossEntropySum(logits: tf.Tensor, targets: Int32Array): tf.Scalar {
  return tf.tidy(() => {
    const [m, v] = logits.shape as [number, number];
    if (targets.length !== m) throw new Error(`crossEntropySum: ${targets.length} targets for ${m} rows`);
    let skipped = 0;
    for (let i = 0; i < m; i++) {
      const y = targets[i]!;
      if (y === -1) skipped++;
      else if (!(y >= 0 && y < v)) throw new Error(`crossEntropySum: target ${y} of row ${i} is outside [0, ${v})`);
    }
    const weights = skipped ? tf.tensor2d(Float32Array.from(targets, (y) => (y === -1 ? 0 : 1)), [m, 1]) : null; // [M,1]
    // int32 one-hot, then cast: the stock wasm OneHot kernel ignores a float32 dtype (writes int bits).
    // Rows with target -1 come out all zero.
    const oneHot = tf.cast(tf.oneHot(tf.tensor1d(targets, 'int32'), v), 'float32'); // [M,V]
    const ce = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
      const [x, save] = args as [tf.Tensor, tf.GradSaveFunc];
      const probs = tf.softmax(x, -1); // [M,V]
      const lse = tf.sub(tf.max(x, -1), tf.log(tf.max(probs, -1))); // [M]
      const weightedLse = weights ? tf.mul(lse, weights.reshape([m])) : lse;
      const picked = tf.sum(tf.mul(x, oneHot), -1); // [M]: the target logit (0 on skipped rows)
      save(weights ? [probs, oneHot, weights] : [probs, oneHot]);
      return {
        value: tf.sum(tf.sub(weightedLse, picked)),
        gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
          const [p, hot, w] = saved as [tf.Tensor, tf.Tensor, tf.Tensor | undefined];
          return tf.mul(tf.sub(w ? tf.mul(p, w) : p, hot), dy);
        },
      };
    });
    return ce(logits) as tf.Scalar;
  });
}

function reduce(sum: tf.Scalar, count: number, reduction: LossReduction): tf.Scalar {
  // count 0: sum is 0 (every row skipped) and stays connected to the logits; keep it 0 for 'mean' too.
  return reduction === 'sum' || count === 0 ? sum : (tf.div(sum, count) as tf.Scalar);
}
