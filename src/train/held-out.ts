/**
 * Held-out evaluation during training (`train.eval_records` every `train.eval_steps` and after the last step):
 *
 *   loss      the token-weighted mean cross-entropy over the held-out records' supervised tokens (every
 *             turn, as training counts them; no gradient), through the same frozen features as training
 *             (the feature cache when the run has one: exact either way)
 *   accuracy  normalised exact match of greedy answers to each record's first question, with `mgllava
 *             eval`'s rules (infer/eval.ts); predictions in RUN/heldout-predictions.jsonl (the latest)
 *
 * Nothing here touches a weight or the optimizer: a run with and without evaluations trains to the same bits.
 */
import path from 'node:path';
import type { ExperimentConfig } from '../config/schema.js';
import type { Batch } from '../data/collate.js';
import type { MgDataset } from '../data/dataset.js';
import { imageOptionsOf } from '../data/image.js';
import { getTemplate } from '../data/templates.js';
import type { TextTokenizer } from '../data/tokenizer.js';
import { checkInputs as checkEvalInputs, runEval, type EvalOptions } from '../infer/eval.js';
import { disposeFrozen, type FrozenFeatures, type MGLLaVA } from '../model/mgllava.js';
import { buildHeldOutData, type HeldOutData } from './build-data.js';
import { encodeBatchPerImage } from './feature-cache.js';
import { textOf } from './step.js';

/** The predictions of the latest held-out evaluation, in the run directory. */
export const HELD_OUT_PREDICTIONS_FILE = 'heldout-predictions.jsonl';

export interface HeldOutResult {
  step: number;
  loss: number;
  /** Supervised tokens the loss averages over. */
  tokens: number;
  accuracy: number;
  correct: number;
  questions: number;
  byCategory: Record<string, number>;
}

export interface HeldOutEvaluator {
  /** Records in the held-out set. */
  readonly size: number;
  readonly source: HeldOutData['source'];
  evaluate(step: number): Promise<HeldOutResult>;
}

/**
 * The evaluator of a run, or null without `train.eval_records`. The held-out records are checked up front
 * (a bad record stops the run before its first step).
 */
export async function heldOutEvaluator(o: {
  config: ExperimentConfig;
  model: MGLLaVA;
  tokenizer: TextTokenizer;
  runDir: string;
  /** The frozen features of the held-out set's batches (the run's feature cache); default one image at a time. */
  frozenFor?: (dataset: MgDataset) => (b: Batch) => Promise<FrozenFeatures>;
}): Promise<HeldOutEvaluator | null> {
  const { config, model, tokenizer } = o;
  const data = await buildHeldOutData(config, model.config, tokenizer);
  if (!data) return null;
  const frozenOf = o.frozenFor ? o.frozenFor(data.dataset) : async (b: Batch) => encodeBatchPerImage(model, b);
  const evalOptions: EvalOptions = {
    model,
    tokenizer,
    template: getTemplate(config.data.template),
    records: data.source.records,
    images: data.source.images,
    boxes: data.source.boxes,
    out: path.join(o.runDir, HELD_OUT_PREDICTIONS_FILE),
    batchSize: config.train.batch_size,
    maxNewTokens: config.train.eval_max_new_tokens,
    image: imageOptionsOf(config.data),
  };
  // What eval alone refuses (an answer empty once normalised) stops the run now, not at its first evaluation.
  await checkEvalInputs(evalOptions);
  return {
    size: data.dataset.size,
    source: data.source,
    async evaluate(step) {
      let sum = 0;
      let tokens = 0;
      for await (const b of data.batches()) {
        const f = await frozenOf(b);
        try {
          const r = model.loss(f, textOf(b));
          const value = (await r.loss.data())[0]!;
          r.loss.dispose();
          // A batch without supervised tokens has loss 0 and weight 0.
          sum += value * r.supervisedTokens;
          tokens += r.supervisedTokens;
        } finally {
          disposeFrozen(f);
        }
      }
      const s = await runEval(evalOptions);
      return {
        step,
        loss: tokens > 0 ? sum / tokens : NaN,
        tokens,
        accuracy: s.accuracy,
        correct: s.correct,
        questions: s.count,
        byCategory: Object.fromEntries(Object.entries(s.byCategory).map(([k, c]) => [k, c.accuracy])),
      };
    },
  };
}

/** "held-out at step 40: loss 1.2345 (812 tokens), accuracy 45.0 % (9/20)" */
export function formatHeldOut(r: HeldOutResult): string {
  return `held-out at step ${r.step}: loss ${r.loss.toFixed(4)} (${r.tokens} tokens), accuracy ${(100 * r.accuracy).toFixed(1)} % (${r.correct}/${r.questions})`;
}
