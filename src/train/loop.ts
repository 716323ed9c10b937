/**
 * The step loop every stage shares (run by `runStage`, stage.ts): lr from the schedule, `grad_accum`
 * micro-batches per optimizer step, the non-finite-step policy, divergence warnings, metrics, progress,
 * held-out evaluations, checkpoints and Ctrl-C handling. A stage brings one function that makes an optimizer
 * step from a list of micro-batches.
 */
import path from 'node:path';
import { constants as osConstants } from 'node:os';
import * as tf from '@tensorflow/tfjs';
import { matmulPath } from '../backend/native.js';
import type { ExperimentConfig } from '../config/schema.js';
import type { LoaderState } from '../data/loader.js';
import { MgllavaError, UsageError } from '../errors.js';
import { killPoint, saveCheckpoint, type OptimizerSnapshot } from '../run/checkpoint.js';
import type { TrainStage, TrainState } from '../run/layout.js';
import { MetricsWindow, type MetricsFile } from '../run/metrics.js';
import { DivergenceMonitor, formatDivergence, summarizeDivergence, type DivergenceWarning } from './divergence.js';
import { createProgress, formatDuration, type Progress, type ProgressMode } from './progress.js';
import { lrAt, type ScheduleConfig } from './schedule.js';
import { peakMemory, resetPeakMemory, type PeakMemory } from '../backend/peak-memory.js';

/** Training went wrong in a way the user must act on (non-finite steps, a resume that does not fit). */
export class TrainError extends MgllavaError {
  constructor(message: string) {
    super(message, 'training');
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
  if (maxSteps != null && !(Number.isInteger(maxSteps) && maxSteps > 0)) throw new UsageError(`--max-steps must be a positive integer, got ${maxSteps}`);
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

/** The backend and the code doing the matrix products now (recorded in every state.json and run summary). */
export function runtimeOf(): { backend: string; matmul: string } {
  const backend = tf.getBackend();
  return { backend, matmul: matmulPath(backend) };
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
  optimizer: OptimizerSnapshot;
  /** Written as every checkpoint's model.safetensors. */
  checkpointWeights: Map<string, tf.Tensor>;
  /** Further files of every checkpoint (file name -> weights), e.g. the warm-up heads. */
  extraFiles?: Record<string, Map<string, tf.Tensor>>;
  provenance: Pick<TrainState, 'initFrom' | 'encodersFrom'>;
  metrics: MetricsFile;
  log: Progress;
  /** One optimizer step over `grad_accum` micro-batches at learning rate `lr`. */
  runStep(batches: B[], lr: number): Promise<StepOutcome>;
  /** Sample ids of a batch (named in warnings). */
  idsOf(batch: B): string[];
  /** A held-out evaluation every `every` steps and after the last step (not after an interruption). */
  heldOut?: { every: number; run(step: number): Promise<void> } | null;
  onStep?: RunOptions['onStep'];
  /** Appended to the closing "N steps in ..." note. */
  summary?: () => string;
}

/** Signals that stop a stage cleanly (checkpoint saved). SIGHUP keeps its default: its terminal is gone. */
const STOP_SIGNALS = ['SIGINT', 'SIGTERM'] as const;

export interface LoopResult {
  /** Last completed step. */
  step: number;
  /** Per-step losses of this invocation (NaN/Infinity for skipped steps). */
  losses: { step: number; loss: number; applied: boolean }[];
  stopped: 'end' | 'max-steps' | 'interrupted';
  /** The signal that interrupted the run (after its checkpoint was saved), else null. */
  signal: NodeJS.Signals | null;
  /** Mean wall seconds per step of this invocation (data wait included), null without steps. */
  secondsPerStep: number | null;
  /** Divergence warnings of this invocation (also in metrics.jsonl and the closing note). */
  warnings: DivergenceWarning[];
  /** Where the arithmetic ran (backend, matrix products: native addon or XNNPACK). */
  runtime: { backend: string; matmul: string };
  /** Measured peak backend memory of this invocation's steps (model, optimizer and the steps' tensors); absent for a dry run. */
  peakMemory?: PeakMemory;
}

/**
 * Steps from the state's step (or 0) to `stopAt`: lr from the schedule, `grad_accum` micro-batches per
 * step, a checkpoint every `save_steps` and at the end, a metrics line every `log_steps`, a held-out
 * evaluation every `heldOut.every`. Ctrl-C finishes the current step and saves; a second Ctrl-C quits at once.
 */
export async function runSteps<B>(o: LoopInput<B>): Promise<LoopResult> {
  const { config, log, metrics, loader, optimizer } = o;
  const t = config.train;
  const schedule = scheduleOf(config, o.totalSteps);
  const runtime = runtimeOf();
  let step = o.state?.step ?? 0;
  let badStreak = o.state?.badStreak ?? 0;
  let lastSaved = step;
  const elapsed0 = o.state?.elapsedSeconds ?? 0;
  const t0 = performance.now();
  resetPeakMemory(); // from what is in use now (model, optimizer): the peak of the steps
  const window = new MetricsWindow();
  const divergence = new DivergenceMonitor();
  const recent: number[] = [];
  const losses: LoopResult['losses'] = [];
  const startStep = step;
  // Ctrl-C (SIGINT) and `kill` / a scheduler's preemption (SIGTERM) finish the step and save; the same signal again quits at once.
  let interrupted: NodeJS.Signals | null = null;
  const onSignal = (signal: NodeJS.Signals) => {
    if (interrupted) process.exit(128 + (osConstants.signals[signal] ?? 2));
    interrupted = signal;
    log.note(`interrupted (${signal}): finishing this step and saving a checkpoint (${signal === 'SIGINT' ? 'Ctrl-C' : signal} again to quit now)`);
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
      runtime,
      time: new Date().toISOString(),
    };
    const r = await saveCheckpoint({ runDir: o.runDir, state: s, trainable: o.checkpointWeights, extraFiles: o.extraFiles, optimizer, keep: t.save_total_limit });
    lastSaved = step;
    log.note(`saved ${r.dir}${r.removed.length ? ` (removed ${r.removed.map((d) => path.basename(d)).join(', ')})` : ''}`);
  };
  for (const signal of STOP_SIGNALS) process.on(signal, onSignal);
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
      const r = await o.runStep(batches, lr);
      const computeMs = performance.now() - c0;
      step++;
      const ids = () => batches.flatMap((b) => o.idsOf(b));
      if (r.applied) {
        badStreak = 0;
      } else {
        badStreak++;
        log.warn(`step ${step}: non-finite ${Number.isFinite(r.loss) ? 'gradient norm' : 'loss'} (loss ${r.loss}, grad norm ${r.gradNorm}); step skipped; records: ${ids().join(', ')}`);
        if (badStreak >= t.max_bad_steps) {
          throw new TrainError(`${badStreak} consecutive non-finite steps (train.max_bad_steps = ${t.max_bad_steps}), last at step ${step}; records of that step: ${ids().join(', ')}. Lower train.lr or check the data`);
        }
      }
      for (const w of divergence.observe({ step, loss: r.loss, gradNorm: r.gradNorm, applied: r.applied, lr, records: ids })) {
        log.warn(formatDivergence(w));
        const { kind, value, median, ratio, records } = w;
        metrics.append({ step, warning: { kind, value, median, ratio, lr, records } });
      }
      const numTensors = tf.memory().numTensors;
      losses.push({ step, loss: r.loss, applied: r.applied });
      window.add({ step, loss: r.loss, gradNorm: r.gradNorm, lr, applied: r.applied, positions: r.positions, computeMs, waitMs, parts: r.parts });
      o.onStep?.({ step, loss: r.loss, applied: r.applied, numTensors });
      killPoint('step', step);

      recent.push(computeMs + waitMs);
      if (recent.length > 20) recent.shift();
      const saveNow = step % t.save_steps === 0 || step === o.stopAt || interrupted !== null;
      const logNow = step % t.log_steps === 0 || saveNow;
      const logged = logNow ? window.flush(numTensors, elapsed0 + (performance.now() - t0) / 1000, peakMemory().bytes) : null;
      if (logged) metrics.append(logged);
      const perStep = recent.reduce((a, b) => a + b, 0) / recent.length / 1000;
      log.update(
        {
          step,
          total: o.totalSteps,
          loss: r.applied ? r.loss : null,
          ...(logged ? { window: { loss: logged.loss, steps: logged.steps } } : {}),
          lr,
          gradNorm: r.applied ? r.gradNorm : null,
          tokensPerS: (r.positions / computeMs) * 1000,
          dataWaitMs: waitMs,
          numTensors,
          etaS: (o.stopAt - step) * perStep,
        },
        logNow,
      );
      // Evaluate before saving: the checkpoint's metrics line count then includes the evaluation's line.
      if (o.heldOut && !interrupted && (step % o.heldOut.every === 0 || step === o.stopAt)) await o.heldOut.run(step);
      if (saveNow) await save();
    }
    if (window.size) metrics.append(window.flush(tf.memory().numTensors, elapsed0 + (performance.now() - t0) / 1000, peakMemory().bytes)); // interrupted mid-window
    if (step > lastSaved) await save();
  } finally {
    for (const signal of STOP_SIGNALS) process.off(signal, onSignal);
  }
  const wall = (performance.now() - t0) / 1000;
  const ran = step - startStep;
  if (ran > 0) {
    const peak = peakMemory();
    const extra = [o.summary?.(), `matmul ${runtime.matmul}`, `peak memory ${(peak.bytes / 2 ** 20).toFixed(1)} MiB (${peak.source})`].filter(Boolean).join('; ');
    log.note(`${ran} steps in ${formatDuration(wall)} (${(wall / ran).toFixed(2)} s/step) on ${runtime.backend}; ${extra}`);
  }
  const warned = summarizeDivergence(divergence.warnings);
  if (warned) log.warn(warned);
  return {
    step,
    losses,
    stopped: interrupted ? 'interrupted' : step >= o.totalSteps ? 'end' : 'max-steps',
    signal: interrupted,
    secondsPerStep: ran > 0 ? wall / ran : null,
    warnings: divergence.warnings,
    runtime,
    peakMemory: peakMemory(),
  };
}
