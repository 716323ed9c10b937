/**
 * Stage 0, `mgllava warmup`: the encoder warm-up that stands in for pretrained CLIP/ConvNeXt weights.
 *
 * No pretrained encoder can be downloaded for the demo, and random frozen encoders carry colour and size but
 * little shape (DEMO-STUDY.md). So the tiny ViT and ConvNeXt train briefly — every encoder weight — on the
 * synthetic annotations through throw-away linear heads (warmup-heads.ts); afterwards a pretrain config
 * loads the encoders with `init.encoders_from` and freezes them, exactly as MG-LLaVA freezes pretrained
 * ones. With real weights (`model.vision.pretrained`, `model.vision_aux.pretrained`), skip this stage.
 *
 *   `warmupStage()`, a StageSpec for the stage runner (stage.ts), which does resume, run dir, optimizer, the
 *   step loop (schedule, clipping, AdamW, metrics, progress, checkpoints) and cleanup:
 *     data   annotated images (warmup-data.ts)
 *     model  WarmupModel (random init from Rng(seed), or the checkpoint's weights): encoders + heads
 *     step   `warmupStep` below
 *     finish per-head accuracies on held-out images, printed and appended to metrics.jsonl
 *
 * A step dir holds model.safetensors = every encoder weight (`visual_encoder.*`, `visual_encoder_aux.*`;
 * what init.encoders_from reads), optimizer.safetensors = AdamW moments of the encoders and heads, and
 * heads.safetensors = the heads (for resuming only). There is no base.safetensors: nothing of the model
 * lives outside the step dir.
 */
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import type { ExperimentConfig } from '../config/schema.js';
import { MgllavaError } from '../errors.js';
import { loadWeightsFile } from '../io/weights-io.js';
import { MODEL_FILE, type ResolvedCheckpoint } from '../run/layout.js';
import { Rng } from '../util/rng.js';
import type { AdamW } from './adamw.js';
import { formatCount } from './dry-run.js';
import { addGradients, applyGradients } from './grad-step.js';
import type { RunOptions, StepOutcome } from './loop.js';
import { runStage, type StageResult, type StageSpec } from './stage.js';
import { buildWarmupData, type WarmupBatch, type WarmupData } from './warmup-data.js';
import { HEADS_PREFIX, tallyBatch, WarmupModel, type Tally } from './warmup-heads.js';

/** The heads of a warm-up step dir (resume only; never used after the warm-up). */
export const HEADS_FILE = 'heads.safetensors';

export interface WarmupOptions extends RunOptions {
  /** Report per-head accuracies at the end (default true). */
  evaluate?: boolean;
}

export interface WarmupEvaluation {
  /** Metric -> accuracy in [0, 1] (see tallyBatch for the names). */
  accuracy: Record<string, number>;
  images: number;
  boxes: number;
  /** "held-out 'eval' images" or "training images". */
  label: string;
}

export type WarmupResult = StageResult<{
  /** Null when not evaluated (interrupted, or `evaluate: false`). */
  evaluation: WarmupEvaluation | null;
}>;

/** The config problems that make a warm-up run meaningless, as one error (runStage has checked the stage). */
export function checkWarmupConfig(config: ExperimentConfig, file: string): void {
  const problems: string[] = [];
  if (!config.warmup) problems.push("a warmup config needs a 'warmup:' section (annotations file, heads); see configs/tiny-shapes/warmup.yaml");
  const m = config.model;
  if (!m.vision_aux) problems.push('model.vision_aux: the warm-up trains both encoders; a model without the high-resolution encoder has nothing for the box heads');
  if (m.vision.pretrained || m.vision_aux?.pretrained) {
    problems.push('model.vision(.aux).pretrained: stage 0 stands in for pretrained encoder weights; with real weights skip it and pretrain directly');
  }
  if (config.init.from || config.init.encoders_from) problems.push('init.from / init.encoders_from: the warm-up starts from randomly initialised encoders; leave init unset');
  if (config.train.sampler !== 'shuffle') problems.push(`train.sampler: the warm-up shuffles images; '${config.train.sampler}' groups text lengths`);
  if (config.train.eval_records) problems.push('train.eval_records: the warm-up evaluates its heads on warmup.eval_split; held-out records are for pretrain/finetune');
  if (problems.length) throw new MgllavaError(`${file}: not a valid warm-up config:\n  ${problems.join('\n  ')}`, 'config');
}

/** A resumed run's weights: the encoders from model.safetensors, the heads from heads.safetensors (both complete). */
async function loadWarmupCheckpoint(model: WarmupModel, ck: ResolvedCheckpoint): Promise<void> {
  await loadWeightsFile(model.encoderWeights(), path.join(ck.stepDir, MODEL_FILE));
  await loadWeightsFile(model.headWeights(), path.join(ck.stepDir, HEADS_FILE));
}

/**
 * One optimizer step over the micro-batches: each part is a sum over the micro-batch divided by the whole
 * step's counts, so the accumulated gradient is the big batch's.
 */
export async function warmupStep(model: WarmupModel, trainable: Map<string, tf.Variable>, optimizer: AdamW, batches: readonly WarmupBatch[], lr: number, config: ExperimentConfig): Promise<StepOutcome> {
  const w = config.warmup!;
  const norm = { boxes: batches.reduce((n, b) => n + b.numBoxes, 0), images: batches.reduce((n, b) => n + b.size, 0) };
  const vars = [...trainable.values()];
  const acc = new Map<string, tf.Tensor>();
  const parts: Record<string, number> = {};
  let loss = 0;
  try {
    for (const b of batches) {
      let bParts = new Map<string, tf.Scalar>();
      const { value, grads } = tf.variableGrads(() => {
        const r = model.loss(b, norm, { box: w.box_weight, presence: w.presence_weight });
        bParts = r.parts;
        return r.total;
      }, vars);
      loss += (await value.data())[0]!; // asynchronous reads: webgpu cannot read synchronously
      value.dispose();
      for (const [k, p] of bParts) parts[k] = (parts[k] ?? 0) + (await p.data())[0]!;
      tf.dispose([...bParts.values()]);
      addGradients(acc, trainable, grads);
    }
    const missing = [...trainable.keys()].filter((n) => !acc.has(n));
    // A step without any box gives the box heads no gradient: zero, not an error.
    const boxHead = (n: string) => n.startsWith(`${HEADS_PREFIX}box.`);
    if (norm.boxes === 0) for (const n of missing.filter(boxHead)) acc.set(n, tf.zerosLike(trainable.get(n)!));
    const absent = [...trainable.keys()].filter((n) => !acc.has(n));
    if (absent.length) throw new Error(`warm-up step: no gradient reached ${absent.length} trainable weights: ${absent.slice(0, 8).join(', ')}`);
    const { gradNorm, applied } = await applyGradients(acc, loss, optimizer, lr, config.train.max_norm);
    return { loss, gradNorm, applied, positions: norm.images, parts };
  } finally {
    tf.dispose([...acc.values()]);
  }
}

/** Per-head accuracies on the evaluation images (forward only). */
export async function evaluateWarmup(model: WarmupModel, data: WarmupData): Promise<WarmupEvaluation> {
  const n = data.evaluation.images.size;
  const loader = data.evalLoader();
  const tally: Tally = new Map();
  let boxes = 0;
  try {
    for (let seen = 0; seen < n; ) {
      const { batch } = await loader.next();
      await tallyBatch(model, batch, tally);
      seen += batch.size;
      boxes += batch.numBoxes;
    }
  } finally {
    await loader.close();
  }
  const accuracy: Record<string, number> = {};
  for (const [k, c] of tally) if (!k.startsWith('present_rate_')) accuracy[k] = c.correct / c.total;
  // The presence baseline: always answering each class's majority (present / absent) over these cells.
  for (const path of ['aux', 'vit']) {
    for (const h of data.spec.presence) {
      const per = h.classes.map((c) => tally.get(`present_rate_${path}_${h.attr}.${c}`)).filter((r) => r !== undefined);
      if (per.length) accuracy[`present_baseline_${path}_${h.attr}`] = per.reduce((a, r) => a + Math.max(r.correct, r.total - r.correct) / r.total, 0) / per.length;
    }
  }
  return { accuracy, images: n, boxes, label: data.evaluation.label };
}

const pct = (x: number | undefined) => (x === undefined ? '     -' : `${(100 * x).toFixed(1).padStart(5)} %`);

/** The accuracy table, one line per head. */
export function formatWarmupEvaluation(e: WarmupEvaluation, data: Pick<WarmupData, 'spec' | 'annotations'>): string[] {
  const a = e.accuracy;
  const groups = data.annotations.attributes.size ?? [];
  const lines = [`warm-up accuracy on ${e.images} ${e.label} (${e.boxes} boxes):`];
  if (data.spec.box.length) {
    lines.push(`  per box, from its RoI mean of the ConvNeXt concat map:   all    ${groups.map((g) => g.padStart(7)).join(' ')}`);
    for (const h of data.spec.box) lines.push(`    ${h.attr.padEnd(12)}${' '.repeat(40)}${pct(a[`box_${h.attr}`])} ${groups.map((g) => pct(a[`box_${h.attr}@${g}`])).join(' ')}`);
  }
  if (data.spec.presence.length) {
    lines.push('  present (multi-label, per class; majority baseline):   ConvNeXt last-map cells   ViT tokens');
    for (const h of data.spec.presence) {
      const col = (path: string) => `${pct(a[`present_${path}_${h.attr}`])} (${pct(a[`present_baseline_${path}_${h.attr}`]).trim()})`;
      lines.push(`    ${`${h.attr} (per ${h.at})`.padEnd(24)}${' '.repeat(32)}${col('aux')}        ${col('vit')}`);
    }
  }
  return lines;
}

/** The StageSpec of the encoder warm-up for `runStage` (`evaluate`: the per-head accuracy table at the end, default on). */
export function warmupStage(o: { evaluate?: boolean } = {}): StageSpec<WarmupModel, WarmupData, WarmupBatch, { evaluation: WarmupEvaluation | null }> {
  return {
    stage: 'warmup',
    checkConfig: checkWarmupConfig,
    buildData: (config, mcfg, b) => buildWarmupData(config, mcfg, b),
    async buildModel(config, mcfg, data, resumed) {
      const model = new WarmupModel(mcfg, data.spec, { rng: new Rng(config.seed), skipInit: resumed !== null });
      try {
        if (resumed) await loadWarmupCheckpoint(model, resumed.ck);
      } catch (e) {
        model.dispose();
        throw e;
      }
      return model;
    },
    trainable: (model) => model.trainableWeights(),
    // model.safetensors holds every encoder weight (what init.encoders_from reads); the heads go beside it.
    checkpointFiles: (model) => ({ model: model.encoderWeights(), extra: { [HEADS_FILE]: model.headWeights() } }),
    provenance: async () => ({ initFrom: null }),
    describe({ config, model, data, totalSteps, trainable, resumed, runDir }) {
      const t = config.train;
      const encoders = model.encoderWeights();
      const size = (ws: Iterable<[string, tf.Variable]>, keep: (n: string) => boolean) => [...ws].reduce((n, [k, v]) => n + (keep(k) ? v.size : 0), 0);
      const nEnc = size(encoders, () => true);
      const nTrainEnc = size(trainable, (n) => encoders.has(n));
      const nHeads = size(trainable, (n) => !encoders.has(n));
      return (
        `warmup ${config.name}: ${data.train.size} images, ${data.batchesPerEpoch} batches/epoch, ${totalSteps} steps of ${t.batch_size}x${t.grad_accum}; ` +
        `trains ${formatCount(nTrainEnc)} of the encoders' ${formatCount(nEnc)} parameters (the rest lie past the selected ViT layer) and ${formatCount(nHeads)} in throw-away heads; ` +
        `${resumed ? `resuming at step ${resumed.state.step} from ${resumed.ck.stepDir}` : 'fresh start'}; run dir ${runDir}`
      );
    },
    stepper: async ({ config, model, trainable }, optimizer) => ({ run: (batches, lr) => warmupStep(model, trainable, optimizer, batches, lr, config) }),
    idsOf: (b) => b.ids,
    async finish({ model, data, log }, r, metrics) {
      if (r.stopped === 'interrupted' || o.evaluate === false) return { evaluation: null };
      const evaluation = await evaluateWarmup(model, data);
      for (const line of formatWarmupEvaluation(evaluation, data)) log.note(line);
      metrics.append({ step: r.step, eval: { images: evaluation.images, boxes: evaluation.boxes, on: evaluation.label, accuracy: evaluation.accuracy } });
      return { evaluation };
    },
  };
}

/** `mgllava warmup`: run stage 0. */
export function warmup(opts: WarmupOptions): Promise<WarmupResult> {
  return runStage(warmupStage({ evaluate: opts.evaluate }), opts);
}
