/**
 * The machinery every training stage shares (warm-up, pretrain, finetune): where a run resumes, the run
 * directory's files, and the step loop with its schedule, non-finite-step policy, metrics, progress,
 * checkpoints and Ctrl-C handling. A stage brings its model, its data and one function that makes an
 * optimizer step from a list of micro-batches.
 */
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { dumpConfig } from '../config/load.js';
import type { ExperimentConfig } from '../config/schema.js';
import type { LoaderState } from '../data/loader.js';
import type { AdamW } from './adamw.js';
import { killPoint, removeIncompleteSaves, saveCheckpoint, writeTextFile } from './checkpoint.js';
import { lossCurveSvg } from './loss-curve.js';
import { MetricsFile, MetricsWindow, readMetrics } from './metrics.js';
import { createProgress, formatDuration, type Progress, type ProgressMode } from './progress.js';
import {
  CONFIG_FILE,
  listCheckpoints,
  LOSS_CURVE_FILE,
  METRICS_FILE,
  readState,
  resolveCheckpoint,
  type ResolvedCheckpoint,
  type TrainStage,
  type TrainState,
} from './run-dir.js';
import { lrAt, type ScheduleConfig } from './schedule.js';

export class TrainError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TrainError';
  }
}

/** Options every stage command takes. */
export interface RunOptions {
  configFile: string;
  sets?: readonly string[];
  /** 'auto': the newest complete checkpoint of the run dir (a fresh start if none); else a step or run dir. */
  resume?: string | null;
  /** Stop after this optimizer step (the schedule still spans the whole run; a checkpoint is saved there). */
  maxSteps?: number | null;
  /** 'auto': a bar on a TTY, plain lines otherwise. */
  progress?: ProgressMode | 'auto';
  /** Override data.image_workers. */
  imageWorkers?: number;
  /** Called after every step (tests: losses, leak checks). */
  onStep?: (s: { step: number; loss: number; applied: boolean; numTensors: number }) => void;
  out?: NodeJS.WriteStream;
  err?: NodeJS.WriteStream;
}

export function checkMaxSteps(maxSteps: number | null | undefined): void {
  if (maxSteps != null && !(Number.isInteger(maxSteps) && maxSteps > 0)) throw new TrainError(`--max-steps must be a positive integer, got ${maxSteps}`);
}

export function progressFor(opts: RunOptions): Progress {
  const out = opts.out ?? process.stdout;
  const mode = opts.progress && opts.progress !== 'auto' ? opts.progress : out.isTTY ? 'bar' : 'lines';
  return createProgress(mode, out, opts.err);
}

export function scheduleOf(config: ExperimentConfig, totalIters: number): ScheduleConfig {
  const t = config.train;
  return { baseLr: t.lr, totalIters, warmupRatio: t.warmup_ratio, startFactor: t.start_factor, etaMin: 0 };
}

/** Where training starts: a checkpoint of the same config and stage, or nothing. */
export async function resumePoint(
  opts: Pick<RunOptions, 'resume' | 'sets'>,
  stage: TrainStage,
  runDir: string,
  hash: string,
  configFile: string,
  log: Progress,
): Promise<{ ck: ResolvedCheckpoint; state: TrainState } | null> {
  let ck: ResolvedCheckpoint | null = null;
  if (opts.resume === 'auto') {
    const all = await listCheckpoints(runDir);
    if (all.length === 0) log.note(`resume auto: no complete checkpoint in ${runDir}; starting from scratch`);
    else ck = { runDir, stepDir: all[all.length - 1]!.dir, step: all[all.length - 1]!.step };
  } else if (opts.resume) {
    ck = await resolveCheckpoint(opts.resume);
  } else {
    const all = await listCheckpoints(runDir);
    if (all.length) {
      throw new TrainError(
        `${runDir} already holds checkpoints (newest: step ${all[all.length - 1]!.step}); continue it with --resume auto, ` +
          `or give the run another name (--set name=...) or remove the directory`,
      );
    }
  }
  if (!ck) return null;
  const state = await readState(ck.stepDir);
  if (state.configHash !== hash) {
    throw new TrainError(
      `cannot resume from ${ck.stepDir}: it was written with config hash ${state.configHash.slice(0, 12)} ` +
        `(${path.join(ck.runDir, CONFIG_FILE)}), but ${configFile}${opts.sets?.length ? ` with --set ${opts.sets.join(' ')}` : ''} ` +
        `has hash ${hash.slice(0, 12)}; resume with the same config, or start a new run`,
    );
  }
  if (state.stage !== stage) throw new TrainError(`cannot resume from ${ck.stepDir}: it is a ${state.stage} checkpoint`);
  const newer = (await listCheckpoints(runDir)).filter((c) => c.step > ck.step);
  if (newer.length) log.warn(`resuming from step ${ck.step}; the newer checkpoints (steps ${newer.map((c) => c.step).join(', ')}) will be replaced as the run passes them`);
  return { ck, state };
}

/** Create the run dir, drop incomplete saves, write config.yaml, and open metrics.jsonl cut back to the checkpoint. */
export async function openRunDir(runDir: string, config: ExperimentConfig, state: TrainState | null, log: Progress): Promise<MetricsFile> {
  await mkdir(runDir, { recursive: true });
  const stale = await removeIncompleteSaves(runDir);
  if (stale.length) log.note(`removed ${stale.length} incomplete save(s) of an interrupted run: ${stale.join(', ')}`);
  await writeTextFile(path.join(runDir, CONFIG_FILE), dumpConfig(config));
  return new MetricsFile(path.join(runDir, METRICS_FILE), state?.metricsLines ?? 0);
}

/** loss.svg from metrics.jsonl (a warning, never an error: the run itself is saved). */
export async function writeLossCurve(runDir: string, config: ExperimentConfig, log: Progress): Promise<void> {
  const mfile = path.join(runDir, METRICS_FILE);
  if (!existsSync(mfile)) return;
  try {
    await writeTextFile(path.join(runDir, LOSS_CURVE_FILE), lossCurveSvg(readMetrics(mfile), `${config.name} (${config.stage})`));
  } catch (e) {
    log.warn(`could not write ${LOSS_CURVE_FILE}: ${(e as Error).message}`);
  }
}

/** What a stage's step function reports. */
export interface StepOutcome {
  /** The step's loss (NaN/Infinity: skipped). */
  loss: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
  /** False: non-finite loss or norm, nothing was updated. */
  applied: boolean;
  /** Work units of the step for the throughput column (LLM positions; images in the warm-up). */
  positions: number;
  /** Named loss parts (warm-up heads), logged as window means. */
  parts?: Record<string, number>;
}

export interface LoopInput<B> {
  config: ExperimentConfig;
  stage: TrainStage;
  hash: string;
  runDir: string;
  totalSteps: number;
  /** Stop after this step (--max-steps), <= totalSteps. */
  stopAt: number;
  /** The checkpoint resumed from, or null for a fresh start. */
  state: TrainState | null;
  loader: { next(): Promise<{ batch: B }>; state(): LoaderState };
  optimizer: AdamW;
  /** Written as every checkpoint's model.safetensors. */
  checkpointWeights: Map<string, tf.Tensor>;
  /** Further files of every checkpoint (file name -> weights), e.g. the warm-up heads. */
  extraFiles?: Record<string, Map<string, tf.Tensor>>;
  provenance: Pick<TrainState, 'initFrom' | 'encodersFrom'>;
  metrics: MetricsFile;
  log: Progress;
  /** One optimizer step over `grad_accum` micro-batches at learning rate `lr`. */
  runStep(batches: B[], lr: number): StepOutcome;
  /** Sample ids of a batch (named in warnings about non-finite steps). */
  idsOf(batch: B): string[];
  onStep?: RunOptions['onStep'];
  /** Appended to the closing "N steps in ..." note. */
  summary?: () => string;
}

export interface LoopResult {
  /** Last completed step. */
  step: number;
  /** Per-step losses of this invocation (NaN/Infinity for skipped steps). */
  losses: { step: number; loss: number; applied: boolean }[];
  stopped: 'end' | 'max-steps' | 'interrupted';
  /** Mean wall seconds per step of this invocation (data wait included), null without steps. */
  secondsPerStep: number | null;
}

/**
 * Steps from the state's step (or 0) to `stopAt`: lr from the schedule, `grad_accum` micro-batches per
 * step, a checkpoint every `save_steps` and at the end, a metrics line every `log_steps`. Ctrl-C finishes
 * the current step and saves; a second Ctrl-C quits at once.
 */
export async function runSteps<B>(o: LoopInput<B>): Promise<LoopResult> {
  const { config, log, metrics, loader, optimizer } = o;
  const t = config.train;
  const schedule = scheduleOf(config, o.totalSteps);
  let step = o.state?.step ?? 0;
  let badStreak = o.state?.badStreak ?? 0;
  let lastSaved = step;
  const elapsed0 = o.state?.elapsedSeconds ?? 0;
  const t0 = performance.now();
  const window = new MetricsWindow();
  const recent: number[] = [];
  const losses: LoopResult['losses'] = [];
  const startStep = step;
  let interrupted = false;
  const onSigint = () => {
    if (interrupted) process.exit(130);
    interrupted = true;
    log.note('interrupted: finishing this step and saving a checkpoint (Ctrl-C again to quit now)');
  };

  const save = async () => {
    const s: TrainState = {
      format: 1,
      step,
      totalSteps: o.totalSteps,
      stage: o.stage,
      configHash: o.hash,
      seeds: { init: config.seed, data: config.seed },
      loader: loader.state(),
      optimizerStep: optimizer.step,
      badStreak,
      metricsLines: metrics.lines,
      elapsedSeconds: elapsed0 + (performance.now() - t0) / 1000,
      ...o.provenance,
      time: new Date().toISOString(),
    };
    const r = await saveCheckpoint({ runDir: o.runDir, state: s, trainable: o.checkpointWeights, extraFiles: o.extraFiles, optimizer, keep: t.save_total_limit });
    lastSaved = step;
    log.note(`saved ${r.dir}${r.removed.length ? ` (removed ${r.removed.map((d) => path.basename(d)).join(', ')})` : ''}`);
  };

  process.on('SIGINT', onSigint);
  try {
    if (step >= o.stopAt) log.note(`already at step ${step} of ${o.totalSteps}${o.stopAt < o.totalSteps ? ` (--max-steps ${o.stopAt})` : ''}: nothing to train`);
    while (step < o.stopAt && !interrupted) {
      // A prefetched batch resolves through microtasks alone, which never lets the event loop poll: yield once
      // per step so image-loading callbacks, worker replies and signals (Ctrl-C) are handled between steps.
      const w0 = performance.now(); // data wait: the yield (main-thread image work runs there) + waiting for batches
      await new Promise((resolve) => setImmediate(resolve));
      if (interrupted) break;
      const lr = lrAt(step, schedule);
      const batches: B[] = [];
      for (let k = 0; k < t.grad_accum; k++) batches.push((await loader.next()).batch);
      const waitMs = performance.now() - w0;
      const c0 = performance.now();
      const r = o.runStep(batches, lr);
      const computeMs = performance.now() - c0;
      step++;
      if (r.applied) {
        badStreak = 0;
      } else {
        badStreak++;
        const ids = batches.flatMap((b) => o.idsOf(b));
        log.warn(`step ${step}: non-finite ${Number.isFinite(r.loss) ? 'gradient norm' : 'loss'} (loss ${r.loss}, grad norm ${r.gradNorm}); step skipped; records: ${ids.join(', ')}`);
        if (badStreak >= t.max_bad_steps) {
          throw new TrainError(`${badStreak} consecutive non-finite steps (train.max_bad_steps = ${t.max_bad_steps}), last at step ${step}; records of that step: ${ids.join(', ')}. Lower train.lr or check the data`);
        }
      }
      const numTensors = tf.memory().numTensors;
      losses.push({ step, loss: r.loss, applied: r.applied });
      window.add({ step, loss: r.loss, gradNorm: r.gradNorm, lr, applied: r.applied, positions: r.positions, computeMs, waitMs, parts: r.parts });
      o.onStep?.({ step, loss: r.loss, applied: r.applied, numTensors });
      killPoint('step', step);

      recent.push(computeMs + waitMs);
      if (recent.length > 20) recent.shift();
      const saveNow = step % t.save_steps === 0 || step === o.stopAt || interrupted;
      const logNow = step % t.log_steps === 0 || saveNow;
      if (logNow) metrics.append(window.flush(numTensors, elapsed0 + (performance.now() - t0) / 1000));
      const perStep = recent.reduce((a, b) => a + b, 0) / recent.length / 1000;
      log.update(
        {
          step,
          total: o.totalSteps,
          loss: r.applied ? r.loss : null,
          lr,
          gradNorm: r.applied ? r.gradNorm : null,
          tokensPerS: (r.positions / computeMs) * 1000,
          dataWaitMs: waitMs,
          numTensors,
          etaS: (o.stopAt - step) * perStep,
        },
        logNow,
      );
      if (saveNow) await save();
    }
    if (window.size) metrics.append(window.flush(tf.memory().numTensors, elapsed0 + (performance.now() - t0) / 1000)); // interrupted mid-window
    if (step > lastSaved) await save();
  } finally {
    process.off('SIGINT', onSigint);
  }
  const wall = (performance.now() - t0) / 1000;
  const ran = step - startStep;
  if (ran > 0) log.note(`${ran} steps in ${formatDuration(wall)} (${(wall / ran).toFixed(2)} s/step)${o.summary ? `; ${o.summary()}` : ''}`);
  return {
    step,
    losses,
    stopped: interrupted ? 'interrupted' : step >= o.totalSteps ? 'end' : 'max-steps',
    secondsPerStep: ran > 0 ? wall / ran : null,
  };
}
