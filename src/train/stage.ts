/**
 * The stage runner: `runStage(spec, options)` runs warm-up, pretrain and finetune alike. A stage is a
 * `StageSpec` (trainer.ts: `mgllavaStage`; warmup.ts: `warmupStage`) that says how to build its data and
 * model and how to make one optimizer step; everything else exists once, here and in loop.ts:
 *
 *   config (loadConfig, the config's stage = the spec's, spec.checkConfig, --max-steps checked)
 *   -> resume point            src/run/open.ts resumePoint: a checkpoint of the same config hash and stage, or none
 *   -> data, model             spec.buildData, spec.buildModel (fresh from the config, or the checkpoint's weights)
 *   -> run dir opened          src/run/open.ts openRunDir: config.yaml, metrics.jsonl cut back; base weights once
 *   -> trainable set           spec.trainable (MG-LLaVA: `trainableSet(model, config)` in src/model/factory.ts)
 *   -> AdamW (+ moments of the checkpoint), loader at the saved data cursor
 *   -> spec.stepper            the step function (and the feature cache, for MG-LLaVA)
 *   -> spec.heldOut            the held-out evaluator of train.eval_records, if any
 *   -> step loop (loop.ts)     schedule, steps, non-finite policy, divergence warnings, metrics, progress,
 *                              held-out evaluations, checkpoints, Ctrl-C
 *   -> spec.finish             what the stage adds to its result (the warm-up's accuracy table)
 *   -> cleanup, always         loader, data, optimizer, model; loss.svg from metrics.jsonl
 *
 * Where the extensions go: what trains is `spec.trainable` (adapters such as LoRA add their weights there, for
 * MG-LLaVA stages in `trainableSet`); which checkpoint a resume takes, its fallbacks, and locking the run
 * directory are src/run/open.ts. Training numerics live only in the spec's stepper: the runner adds nothing
 * that touches a weight, so a run resumed anywhere continues bit for bit.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import type * as tf from '@tensorflow/tfjs';
import { loadConfig } from '../config/load.js';
import { InterruptedError, UsageError } from '../errors.js';
import type { ExperimentConfig } from '../config/schema.js';
import type { LoaderState } from '../data/loader.js';
import { writeWeightsFile } from '../io/weights-io.js';
import { modelConfigOf } from '../model/factory.js';
import type { MGLLaVAConfig } from '../model/mgllava.js';
import { readOptimizerState, writeTextFile } from '../run/checkpoint.js';
import { BASE_FILE, LOSS_CURVE_FILE, METRICS_FILE, runDirOf, type TrainStage, type TrainState } from '../run/layout.js';
import { readMetricsRecords, type MetricsFile } from '../run/metrics.js';
import { claimRunDir, openRunDir, resumePoint, type ResumePoint } from '../run/open.js';
import type { RunLock } from '../run/lock.js';
import { AdamW } from './adamw.js';
import { totalStepsOf } from './build-data.js';
import { formatHeldOut, type HeldOutEvaluator, type HeldOutResult } from './held-out.js';
import { checkMaxSteps, progressFor, runSteps, TrainError, type LoopResult, type RunOptions, type StepOutcome } from './loop.js';
import { lossCurveSvg } from './loss-curve.js';
import type { Progress } from './progress.js';

/** What the runner needs of a stage's data. */
export interface StageData<B> {
  /** Micro-batches per epoch (the run length follows from it unless train.max_steps is set). */
  batchesPerEpoch: number;
  /** A loader at the start, or at a saved cursor. */
  loader(resume?: LoaderState): { next(): Promise<{ batch: B }>; state(): LoaderState; close(): Promise<void> };
  /** Stop image workers. */
  close(): Promise<void>;
}

/** One run of a stage as the spec's hooks see it. */
export interface StageRun<M, D> {
  config: ExperimentConfig;
  hash: string;
  /** The config file (for messages). */
  file: string;
  runDir: string;
  model: M;
  data: D;
  resumed: ResumePoint | null;
  totalSteps: number;
  /** The weights the optimizer updates (spec.trainable). */
  trainable: Map<string, tf.Variable>;
  log: Progress;
}

/** A stage's optimizer step. */
export interface Stepper<B> {
  /** One optimizer step over `grad_accum` micro-batches at learning rate `lr`. */
  run(batches: B[], lr: number): Promise<StepOutcome>;
  /** Appended to the closing note (e.g. the feature cache's hit rate). */
  summary?(): string;
}

export interface StageSpec<M extends { dispose(): void }, D extends StageData<B>, B, X extends object = object> {
  readonly stage: TrainStage;
  /** Config problems that make this stage meaningless, as one error (that the config is of this stage, runStage checks). */
  checkConfig?(config: ExperimentConfig, file: string): void;
  buildData(config: ExperimentConfig, mcfg: MGLLaVAConfig, o: { imageWorkers?: number }): Promise<D>;
  /** The model: fresh from the config, or with the weights of the checkpoint resumed from. */
  buildModel(config: ExperimentConfig, mcfg: MGLLaVAConfig, data: D, resumed: ResumePoint | null, log: Progress): Promise<M>;
  /** The weights the optimizer updates, by checkpoint name. */
  trainable(model: M, config: ExperimentConfig): Map<string, tf.Variable>;
  /** Every checkpoint's model.safetensors, and further files of the step dir (file name -> weights). */
  checkpointFiles(model: M, trainable: Map<string, tf.Variable>): { model: Map<string, tf.Tensor>; extra?: Record<string, Map<string, tf.Tensor>> };
  /** Weights written once to base.safetensors (absent: the stage has no base file). */
  baseWeights?(model: M, config: ExperimentConfig): Map<string, tf.Tensor>;
  /** Where the initial weights came from (state.json). */
  provenance(config: ExperimentConfig, state: TrainState | null): Promise<Pick<TrainState, 'initFrom' | 'encodersFrom'>>;
  /** The opening note: what trains on what. */
  describe(run: StageRun<M, D>): string;
  stepper(run: StageRun<M, D>, optimizer: AdamW): Promise<Stepper<B>>;
  /** The held-out evaluator of `train.eval_records` (null: none). */
  heldOut?(run: StageRun<M, D>): Promise<HeldOutEvaluator | null>;
  /** Record ids of a batch (named in warnings). */
  idsOf(batch: B): string[];
  /** What the stage adds to the result after the loop (not called when the loop throws). */
  finish?(run: StageRun<M, D>, result: LoopResult, metrics: MetricsFile): Promise<X>;
}

export type StageResult<X extends object = object> = LoopResult &
  X & {
    runDir: string;
    totalSteps: number;
    /** The last held-out evaluation of this invocation, or null. */
    heldOut: HeldOutResult | null;
  };

/** A config runs as its own stage only: `mgllava pretrain` refuses a finetune config, and so on. */
export function checkConfigStage(config: ExperimentConfig, file: string, stage: TrainStage): void {
  if (config.stage !== stage) throw new UsageError(`${file} is a '${config.stage}' config; run it with 'mgllava ${config.stage}'`);
}

/** Run a training stage (see the top of this file). The caller's `spec` is used for this one run. */
export async function runStage<M extends { dispose(): void }, D extends StageData<B>, B, X extends object>(spec: StageSpec<M, D, B, X>, opts: RunOptions): Promise<StageResult<X>> {
  const { config, hash, file } = loadConfig(opts.configFile, opts.sets ?? []);
  checkConfigStage(config, file, spec.stage);
  spec.checkConfig?.(config, file);
  checkMaxSteps(opts.maxSteps);
  const log = progressFor(opts);
  const runDir = path.resolve(runDirOf(config));
  let model: M | null = null;
  let data: D | null = null;
  let optimizer: AdamW | null = null;
  let loader: ReturnType<D['loader']> | null = null;
  let opened = false;
  let lock: RunLock | null = null;
  try {
    lock = await claimRunDir(runDir, opts, hash, log); // one writer per run dir, never a foreign folder
    const resumed = await resumePoint(opts, spec.stage, runDir, hash, file, log);
    const mcfg = await modelConfigOf(config);
    data = await spec.buildData(config, mcfg, { imageWorkers: opts.imageWorkers });
    model = await spec.buildModel(config, mcfg, data, resumed, log);
    const totalSteps = totalStepsOf(config, data.batchesPerEpoch);
    const state = resumed?.state ?? null;
    if (state && state.totalSteps !== totalSteps) throw new TrainError(`cannot resume: the checkpoint's run has ${state.totalSteps} steps, this data gives ${totalSteps}`);
    const stopAt = Math.min(totalSteps, opts.maxSteps ?? totalSteps);

    const metrics = await openRunDir(runDir, config, state, log);
    opened = true;
    if (spec.baseWeights && (!state || !existsSync(path.join(runDir, BASE_FILE)))) {
      await writeWeightsFile(path.join(runDir, BASE_FILE), spec.baseWeights(model, config), { config_hash: hash });
    }

    const trainable = spec.trainable(model, config);
    const t = config.train;
    optimizer = new AdamW(trainable, { betas: t.betas, eps: t.eps, weightDecay: t.weight_decay });
    if (resumed) optimizer.loadState(resumed.state.optimizerStep, await readOptimizerState(resumed.ck.stepDir));
    loader = data.loader(state?.loader) as ReturnType<D['loader']>;
    const provenance = await spec.provenance(config, state);
    const run: StageRun<M, D> = { config, hash, file, runDir, model, data, resumed, totalSteps, trainable, log };
    const stepper = await spec.stepper(run, optimizer);
    const evaluator = spec.heldOut ? await spec.heldOut(run) : null;
    log.note(spec.describe(run));
    if (evaluator) log.note(`held-out: ${evaluator.size} records of ${evaluator.source.records}, evaluated ${t.eval_steps ? `every ${t.eval_steps} steps and ` : ''}after the last step`);

    let heldOut: HeldOutResult | null = null;
    const { model: checkpointWeights, extra } = spec.checkpointFiles(model, trainable);
    const r = await runSteps<B>({
      config,
      stage: spec.stage,
      hash,
      runDir,
      totalSteps,
      stopAt,
      state,
      loader,
      optimizer,
      checkpointWeights,
      extraFiles: extra,
      provenance,
      metrics,
      log,
      runStep: (batches, lr) => stepper.run(batches, lr),
      idsOf: (b) => spec.idsOf(b),
      heldOut: evaluator
        ? {
            every: t.eval_steps ?? Infinity,
            run: async (step) => {
              heldOut = await evaluator.evaluate(step);
              log.note(formatHeldOut(heldOut));
              const { loss, tokens, accuracy, correct, questions, byCategory } = heldOut;
              metrics.append({ step, heldout: { loss, tokens, accuracy, correct, questions, ...(Object.keys(byCategory).length ? { byCategory } : {}) } });
            },
          }
        : null,
      onStep: opts.onStep,
      summary: stepper.summary ? () => stepper.summary!() : undefined,
    });
    const extraResult = spec.finish ? await spec.finish(run, r, metrics) : ({} as X);
    if (r.signal) {
      // Saved and resumable, but not done: the caller (a script, the demo's next stage) must not go on.
      throw new InterruptedError(`${spec.stage} ${config.name} stopped by ${r.signal} at step ${r.step} of ${totalSteps}; its checkpoint is saved in ${runDir}`, r.signal, {
        hint: 'continue it with --resume auto',
      });
    }
    return { ...r, ...extraResult, runDir, totalSteps, heldOut };
  } finally {
    await loader?.close();
    await data?.close();
    optimizer?.dispose();
    model?.dispose();
    if (opened) await writeLossCurve(runDir, config, log);
    await lock?.release();
    log.stop();
  }
}

/** loss.svg from metrics.jsonl: training window means and held-out losses (a warning, never an error). */
export async function writeLossCurve(runDir: string, config: ExperimentConfig, log: Pick<Progress, 'warn'>): Promise<void> {
  const mfile = path.join(runDir, METRICS_FILE);
  if (!existsSync(mfile)) return;
  try {
    const records = readMetricsRecords(mfile);
    const training = records.flatMap((r) => ('loss' in r ? [{ step: r.step, loss: r.loss }] : []));
    const heldOut = records.flatMap((r) => ('heldout' in r ? [{ step: r.step, loss: r.heldout.loss }] : []));
    await writeTextFile(path.join(runDir, LOSS_CURVE_FILE), lossCurveSvg(training, `${config.name} (${config.stage})`, heldOut));
  } catch (e) {
    log.warn(`could not write ${LOSS_CURVE_FILE}: ${(e as Error).message}`);
  }
}
