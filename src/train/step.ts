/**
 * One optimizer step over `grad_accum` micro-batches.
 *
 * Micro-batch i contributes its mean loss weighted by n_i / N (n_i its supervised tokens, N those of the
 * whole step), so the accumulated gradient is the gradient of the token-mean loss of the concatenated
 * batch: N micro-batches equal one big batch. Then: global-norm clipping over the trainable set, and an
 * AdamW update — unless the loss or the norm is not finite, in which case nothing is updated.
 *
 * Frozen encoders run outside the tape, one image at a time (feature-cache.ts: a row's features must not
 * depend on the rest of the batch), or come from the frozen-feature cache when the trainer passes one.
 */
import * as tf from '@tensorflow/tfjs';
import type { Batch } from '../data/collate.js';
import { shiftedTargets } from '../model/loss.js';
import { disposeFrozen, type FrozenFeatures, type MGLLaVA, type TextBatch } from '../model/mgllava.js';
import type { AdamW } from './adamw.js';
import { addGradients, applyGradients } from './grad-step.js';
import { encodeBatchPerImage } from './feature-cache.js';

export interface StepInput {
  model: MGLLaVA;
  /** The stage's trainable weights (= the optimizer's params). */
  trainable: Map<string, tf.Variable>;
  optimizer: AdamW;
  /** The step's micro-batches (host arrays). */
  batches: readonly Batch[];
  lr: number;
  maxNorm: number;
  /** LoRA dropout seed of micro-batch i of this step (absent: no dropout). */
  dropoutSeed?: (micro: number) => number;
  /** The frozen features of a micro-batch (default: `encodeBatchPerImage`; the trainer passes its feature cache). */
  frozen?: (b: Batch) => Promise<FrozenFeatures>;
}

export interface StepResult {
  /** Token-weighted mean loss of the step (the loss of the big batch). */
  loss: number;
  /** Global L2 norm of the gradient before clipping. */
  gradNorm: number;
  supervisedTokens: number;
  /** LLM positions (B x T summed over micro-batches), for tokens/s. */
  positions: number;
  /** False: non-finite loss or gradient, no update was made. */
  applied: boolean;
}

/**
 * Supervised next-token targets of a batch: the loss plan's count (model/loss.ts `shiftedTargets`: labels other
 * than IGNORE_INDEX at positions >= 1; padding is IGNORE_INDEX), what the model's loss will count after splicing.
 */
export function supervisedTokens(b: Batch): number {
  return shiftedTargets({ data: b.labels, shape: [b.size, b.seqLen] }).count;
}

export function textOf(b: Batch): TextBatch {
  const shape: [number, number] = [b.size, b.seqLen];
  return {
    inputIds: { data: b.inputIds, shape },
    labels: { data: b.labels, shape },
    attentionMask: { data: Int32Array.from(b.attentionMask), shape },
  };
}

/** Gradients of the weighted micro-batch loss, added into `acc`; returns the weighted loss (a scalar the caller owns). */
async function accumulate(input: Pick<StepInput, 'model' | 'trainable' | 'frozen'>, b: Batch, weight: number, expectedTokens: number, acc: Map<string, tf.Tensor>, dropoutSeed: number | null): Promise<{ loss: tf.Scalar; positions: number }> {
  const { model, trainable } = input;
  const frozen = input.frozen ? await input.frozen(b) : encodeBatchPerImage(model, b);
  try {
    const text = textOf(b);
    let positions = 0;
    let counted = 0;
    const vars = [...trainable.values()];
    const { value, grads } = tf.variableGrads(() => {
      const r = model.loss(frozen, text, { dropoutSeed });
      positions = r.positions;
      counted = r.supervisedTokens;
      return tf.mul(r.loss, weight) as tf.Scalar;
    }, vars);
    if (counted !== expectedTokens) {
      tf.dispose([value, ...Object.values(grads)]);
      throw new Error(`train step: the loss counted ${counted} supervised tokens in batch [${b.ids.join(', ')}], the step planned ${expectedTokens}`);
    }
    addGradients(acc, trainable, grads);
    return { loss: value, positions };
  } finally {
    disposeFrozen(frozen);
  }
}

export interface Accumulated {
  /** d(step loss)/d(weight) for every trainable weight; the caller disposes them. */
  grads: Map<string, tf.Tensor>;
  loss: number;
  supervisedTokens: number;
  positions: number;
}

/** The step's loss and its gradient, accumulated over the micro-batches (token-weighted). */
export async function accumulateGradients(input: Pick<StepInput, 'model' | 'trainable' | 'batches' | 'frozen' | 'dropoutSeed'>): Promise<Accumulated> {
  const counts = input.batches.map(supervisedTokens);
  const total = counts.reduce((a, b) => a + b, 0);
  if (input.batches.length === 0) throw new Error('train step: no micro-batch');
  if (total === 0) throw new Error(`train step: no supervised token in records ${input.batches.flatMap((b) => b.ids).join(', ')}`);
  const acc = new Map<string, tf.Tensor>();
  const losses: tf.Scalar[] = [];
  let positions = 0;
  try {
    for (const [i, b] of input.batches.entries()) {
      const r = await accumulate(input, b, counts[i]! / total, counts[i]!, acc, input.dropoutSeed?.(i) ?? null);
      losses.push(r.loss);
      positions += r.positions;
    }
    const missing = [...input.trainable.keys()].filter((n) => !acc.has(n));
    if (missing.length) throw new Error(`train step: no gradient reached ${missing.length} trainable weights: ${missing.slice(0, 8).join(', ')}`);
    const lossT = tf.addN(losses);
    const loss = (await lossT.data())[0]!; // asynchronous: webgpu cannot read synchronously
    lossT.dispose();
    return { grads: acc, loss, supervisedTokens: total, positions };
  } catch (e) {
    tf.dispose([...acc.values()]);
    throw e;
  } finally {
    tf.dispose(losses);
  }
}

export async function trainStep(input: StepInput): Promise<StepResult> {
  const a = await accumulateGradients(input);
  try {
    const { gradNorm, applied } = await applyGradients(a.grads, a.loss, input.optimizer, input.lr, input.maxNorm);
    return { loss: a.loss, gradNorm, supervisedTokens: a.supervisedTokens, positions: a.positions, applied };
  } finally {
    tf.dispose([...a.grads.values()]);
  }
}
