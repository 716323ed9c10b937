/**
 * The two-stage trainer: `mgllava pretrain|finetune`.
 *
 *   config -> run dir (fresh, or resumed from a checkpoint with the same config hash)
 *          -> model (random init from Rng(seed) + pretrained dirs + init.from; or the checkpoint's weights)
 *          -> data (checked dataset, seeded sampler, prefetching loader at the saved cursor)
 *          -> steps: grad_accum micro-batches -> clipped AdamW at lrAt(step) -> metrics, progress, checkpoints
 *
 * Determinism: the init, the data order (a pure function of seed and epoch) and the cursor are all the
 * random state a run has (no dropout, no augmentation), so the same config gives the same losses, and a
 * resumed run continues exactly where the checkpoint was taken.
 */
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { dumpConfig, loadConfig } from '../config/load.js';
import type { ExperimentConfig } from '../config/schema.js';
import { memoryCeilingBytes } from '../backend/memory.js';
import type { MGLLaVA, Stage } from '../model/mgllava.js';
import { AdamW } from './adamw.js';
import { lrAt, type ScheduleConfig } from './schedule.js';
import { buildTrainData, totalStepsOf, type TrainData } from './build-data.js';
import { killPoint, readOptimizerState, removeIncompleteSaves, saveCheckpoint, writeTextFile } from './checkpoint.js';
import { countParameters } from './param-count.js';
import { estimateMemory, formatBytes, formatCount, formatDryRun } from './dry-run.js';
import { lossCurveSvg } from './loss-curve.js';
import { MetricsFile, MetricsWindow, readMetrics } from './metrics.js';
import { createProgress, formatDuration, type Progress, type ProgressMode } from './progress.js';
import {
  BASE_FILE,
  baseWeightNames,
  buildModel,
  checkpointModel,
  CONFIG_FILE,
  listCheckpoints,
  LOSS_CURVE_FILE,
  METRICS_FILE,
  modelConfigOf,
  readState,
  resolveCheckpoint,
  runDirOf,
  type ResolvedCheckpoint,
  type TrainState,
} from './run-dir.js';
import { trainStep } from './step.js';
import { writeWeightsFile } from './weights-io.js';

export class TrainError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TrainError';
  }
}

export interface TrainOptions {
  configFile: string;
  sets?: readonly string[];
  /** The command's stage; the config's `stage` must be the same. */
  stage: Stage;
  /** 'auto': the newest complete checkpoint of the run dir (a fresh start if none); else a step or run dir. */
  resume?: string | null;
  /** Stop after this optimizer step (the schedule still spans the whole run; a checkpoint is saved there). */
  maxSteps?: number | null;
  dryRun?: boolean;
  /** 'auto': a bar on a TTY, plain lines otherwise. */
  progress?: ProgressMode | 'auto';
  /** Override data.image_workers. */
  imageWorkers?: number;
  /** Called after every step (tests: losses, leak checks). */
  onStep?: (s: { step: number; loss: number; applied: boolean; numTensors: number }) => void;
  out?: NodeJS.WriteStream;
  err?: NodeJS.WriteStream;
}

export interface TrainResult {
  runDir: string;
  /** Last completed step. */
  step: number;
  totalSteps: number;
  /** Per-step losses of this invocation (NaN/Infinity for skipped steps). */
  losses: { step: number; loss: number; applied: boolean }[];
  stopped: 'end' | 'max-steps' | 'interrupted' | 'dry-run';
  /** Mean wall seconds per step of this invocation (data wait included), null without steps. */
  secondsPerStep: number | null;
}

function scheduleOf(config: ExperimentConfig, totalIters: number): ScheduleConfig {
  const t = config.train;
  return { baseLr: t.lr, totalIters, warmupRatio: t.warmup_ratio, startFactor: t.start_factor, etaMin: 0 };
}

/** Where training starts: a checkpoint of the same config, or nothing. */
async function resumePoint(opts: TrainOptions, runDir: string, hash: string, configFile: string, log: Progress): Promise<{ ck: ResolvedCheckpoint; state: TrainState } | null> {
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
  if (state.stage !== opts.stage) throw new TrainError(`cannot resume from ${ck.stepDir}: it is a ${state.stage} checkpoint`);
  const newer = (await listCheckpoints(runDir)).filter((c) => c.step > ck.step);
  if (newer.length) log.warn(`resuming from step ${ck.step}; the newer checkpoints (steps ${newer.map((c) => c.step).join(', ')}) will be replaced as the run passes them`);
  return { ck, state };
}

/** Longest text, most boxes and longest supervised part of the checked data (for the memory estimate). */
function dataShape(data: TrainData): { maxText: number; maxBoxes: number; maxSupervised: number } {
  let maxText = 1;
  let maxBoxes = 1;
  let maxSupervised = 1;
  for (const it of data.dataset.items) {
    maxText = Math.max(maxText, it.inputIds.length);
    maxBoxes = Math.max(maxBoxes, it.boxes?.boxes.length ?? 1);
    maxSupervised = Math.max(maxSupervised, it.labels.filter((l) => l !== -100).length);
  }
  return { maxText, maxBoxes, maxSupervised };
}

async function dryRun(config: ExperimentConfig, opts: TrainOptions, out: NodeJS.WriteStream): Promise<TrainResult> {
  const mcfg = await modelConfigOf(config);
  const data = await buildTrainData(config, mcfg, { imageWorkers: 0 });
  try {
    const counts = countParameters(mcfg, opts.stage);
    const mem = estimateMemory(mcfg, counts, { batch: config.train.batch_size, gradAccum: config.train.grad_accum, ...dataShape(data) });
    const ceiling = memoryCeilingBytes();
    const total = totalStepsOf(config, data.batchesPerEpoch);
    out.write(
      `data: ${data.dataset.size} records (${data.report.bad.length} problems), ${data.batchesPerEpoch} micro-batches of ${data.batchSize} per epoch, ` +
        `${total} optimizer steps (grad_accum ${config.train.grad_accum})\n`,
    );
    out.write(formatDryRun(counts, mem, ceiling));
    if (ceiling !== null && mem.total > ceiling) {
      throw new TrainError(
        `refusing: the estimated ${formatBytes(mem.total)} exceed the wasm ceiling of ${formatBytes(ceiling)}; ` +
          `use --backend tensorflow, or reduce train.batch_size / data.max_length (raise the ceiling with MGLLAVA_WASM_CEILING_MB at your own risk)`,
      );
    }
    const model = await buildModel(config, { log: (m) => out.write(`${m}\n`) });
    try {
      const built = new Map<string, number>();
      for (const [n, v] of model.weightMap()) {
        const top = n.split('.')[0]!;
        built.set(top, (built.get(top) ?? 0) + v.size);
      }
      const differs = counts.filter((c) => built.get(c.module) !== c.params);
      if (differs.length) throw new TrainError(`internal: parameter count formula differs from the built model for ${differs.map((c) => `${c.module} (${c.params} vs ${built.get(c.module)})`).join(', ')}`);
      out.write(`model built: ${formatCount(model.numParameters())} parameters; dry run only, nothing trained\n`);
    } finally {
      model.dispose();
    }
    return { runDir: path.resolve(runDirOf(config)), step: 0, totalSteps: total, losses: [], stopped: 'dry-run', secondsPerStep: null };
  } finally {
    await data.close();
  }
}

export async function train(opts: TrainOptions): Promise<TrainResult> {
  const out = opts.out ?? process.stdout;
  const { config, hash, file } = loadConfig(opts.configFile, opts.sets ?? []);
  if (config.stage !== opts.stage) {
    throw new TrainError(`${file} is a '${config.stage}' config; run it with 'mgllava ${config.stage}'${config.stage === 'warmup' ? ' (issue 6)' : ''}`);
  }
  if (opts.maxSteps != null && !(Number.isInteger(opts.maxSteps) && opts.maxSteps > 0)) throw new TrainError(`--max-steps must be a positive integer, got ${opts.maxSteps}`);
  if (opts.dryRun) return dryRun(config, opts, out);

  const mode = opts.progress && opts.progress !== 'auto' ? opts.progress : out.isTTY ? 'bar' : 'lines';
  const log = createProgress(mode, out, opts.err);
  const runDir = path.resolve(runDirOf(config));
  if (config.train.feature_cache === 'on') log.note('train.feature_cache=on: the feature cache is not implemented yet; frozen features are recomputed every step');
  const resumed = await resumePoint(opts, runDir, hash, file, log);

  let model: MGLLaVA | null = null;
  let data: TrainData | null = null;
  let optimizer: AdamW | null = null;
  let loader: ReturnType<TrainData['loader']> | null = null;
  let interrupted = false;
  const onSigint = () => {
    if (interrupted) process.exit(130);
    interrupted = true;
    log.note('interrupted: finishing this step and saving a checkpoint (Ctrl-C again to quit now)');
  };
  try {
    model = resumed ? await checkpointModel(config, resumed.ck) : await buildModel(config, { log: (m) => log.note(m) });
    data = await buildTrainData(config, model.config, { imageWorkers: opts.imageWorkers });
    const totalSteps = totalStepsOf(config, data.batchesPerEpoch);
    const state = resumed?.state ?? null;
    if (state && state.totalSteps !== totalSteps) throw new TrainError(`cannot resume: the checkpoint's run has ${state.totalSteps} steps, this data gives ${totalSteps}`);
    const stopAt = Math.min(totalSteps, opts.maxSteps ?? totalSteps);

    // Run dir: config, base weights (once), metrics cut back to the checkpoint.
    await mkdir(runDir, { recursive: true });
    const stale = await removeIncompleteSaves(runDir);
    if (stale.length) log.note(`removed ${stale.length} incomplete save(s) of an interrupted run: ${stale.join(', ')}`);
    await writeTextFile(path.join(runDir, CONFIG_FILE), dumpConfig(config));
    if (!state || !existsSync(path.join(runDir, BASE_FILE))) {
      const all = model.weightMap();
      await writeWeightsFile(path.join(runDir, BASE_FILE), new Map(baseWeightNames(model, config).map((n) => [n, all.get(n)!])), { config_hash: hash });
    }
    const metrics = new MetricsFile(path.join(runDir, METRICS_FILE), state?.metricsLines ?? 0);

    const stage = opts.stage;
    const trainable = model.trainableWeights(stage);
    const t = config.train;
    optimizer = new AdamW(trainable, { betas: t.betas, eps: t.eps, weightDecay: t.weight_decay });
    if (resumed) optimizer.loadState(resumed.state.optimizerStep, await readOptimizerState(resumed.ck.stepDir));
    loader = data.loader(state?.loader);
    const initFrom = state ? state.initFrom : config.init.from ? await resolveCheckpoint(config.init.from).then((c) => ({ runDir: c.runDir, step: c.step })) : null;

    const nTrain = [...trainable.values()].reduce((n, v) => n + v.size, 0);
    log.note(
      `${stage} ${config.name}: ${data.dataset.size} records, ${data.batchesPerEpoch} micro-batches/epoch, ` +
        `${totalSteps} steps of ${t.batch_size}x${t.grad_accum}, ${formatCount(nTrain)} trainable of ${formatCount(model.numParameters())} parameters; ` +
        `${state ? `resuming at step ${state.step} from ${resumed!.ck.stepDir}` : 'fresh start'}; run dir ${runDir}`,
    );

    const schedule = scheduleOf(config, totalSteps);
    let step = state?.step ?? 0;
    let badStreak = state?.badStreak ?? 0;
    let lastSaved = step;
    const elapsed0 = state?.elapsedSeconds ?? 0;
    const t0 = performance.now();
    const window = new MetricsWindow();
    const recent: number[] = [];
    const losses: TrainResult['losses'] = [];
    const startStep = step;
    process.on('SIGINT', onSigint);

    const save = async () => {
      const s: TrainState = {
        format: 1,
        step,
        totalSteps,
        stage,
        configHash: hash,
        seeds: { init: config.seed, data: config.seed },
        loader: loader!.state(),
        optimizerStep: optimizer!.step,
        badStreak,
        metricsLines: metrics.lines,
        elapsedSeconds: elapsed0 + (performance.now() - t0) / 1000,
        initFrom,
        time: new Date().toISOString(),
      };
      const r = await saveCheckpoint({ runDir, state: s, trainable, optimizer: optimizer!, keep: t.save_total_limit });
      lastSaved = step;
      log.note(`saved ${r.dir}${r.removed.length ? ` (removed ${r.removed.map((d) => path.basename(d)).join(', ')})` : ''}`);
    };

    if (step >= stopAt) log.note(`already at step ${step} of ${totalSteps}${stopAt < totalSteps ? ` (--max-steps ${stopAt})` : ''}: nothing to train`);
    while (step < stopAt && !interrupted) {
      // A prefetched batch resolves through microtasks alone, which never lets the event loop poll: yield once
      // per step so image-loading callbacks, worker replies and signals (Ctrl-C) are handled between steps.
      const w0 = performance.now(); // data wait: the yield (main-thread image work runs there) + waiting for batches
      await new Promise((resolve) => setImmediate(resolve));
      if (interrupted) break;
      const lr = lrAt(step, schedule);
      const batches = [];
      for (let k = 0; k < t.grad_accum; k++) batches.push((await loader.next()).batch);
      const waitMs = performance.now() - w0;
      const c0 = performance.now();
      const r = trainStep({ model, trainable, optimizer, batches, lr, maxNorm: t.max_norm });
      const computeMs = performance.now() - c0;
      step++;
      if (r.applied) {
        badStreak = 0;
      } else {
        badStreak++;
        const ids = batches.flatMap((b) => b.ids);
        log.warn(`step ${step}: non-finite ${Number.isFinite(r.loss) ? 'gradient norm' : 'loss'} (loss ${r.loss}, grad norm ${r.gradNorm}); step skipped; records: ${ids.join(', ')}`);
        if (badStreak >= t.max_bad_steps) {
          throw new TrainError(`${badStreak} consecutive non-finite steps (train.max_bad_steps = ${t.max_bad_steps}), last at step ${step}; records of that step: ${ids.join(', ')}. Lower train.lr or check the data`);
        }
      }
      const numTensors = tf.memory().numTensors;
      losses.push({ step, loss: r.loss, applied: r.applied });
      window.add({ step, loss: r.loss, gradNorm: r.gradNorm, lr, applied: r.applied, positions: r.positions, computeMs, waitMs });
      opts.onStep?.({ step, loss: r.loss, applied: r.applied, numTensors });
      killPoint('step', step);

      recent.push(computeMs + waitMs);
      if (recent.length > 20) recent.shift();
      const saveNow = step % t.save_steps === 0 || step === stopAt || interrupted;
      const logNow = step % t.log_steps === 0 || saveNow;
      if (logNow) metrics.append(window.flush(numTensors, elapsed0 + (performance.now() - t0) / 1000));
      const perStep = recent.reduce((a, b) => a + b, 0) / recent.length / 1000;
      log.update(
        {
          step,
          total: totalSteps,
          loss: r.applied ? r.loss : null,
          lr,
          gradNorm: r.applied ? r.gradNorm : null,
          tokensPerS: (r.positions / computeMs) * 1000,
          dataWaitMs: waitMs,
          numTensors,
          etaS: (stopAt - step) * perStep,
        },
        logNow,
      );
      if (saveNow) await save();
    }
    if (window.size) metrics.append(window.flush(tf.memory().numTensors, elapsed0 + (performance.now() - t0) / 1000)); // interrupted mid-window
    if (step > lastSaved) await save();
    const wall = (performance.now() - t0) / 1000;
    const ran = step - startStep;
    if (ran > 0) log.note(`${ran} steps in ${formatDuration(wall)} (${(wall / ran).toFixed(2)} s/step)`);
    return {
      runDir,
      step,
      totalSteps,
      losses,
      stopped: interrupted ? 'interrupted' : step >= totalSteps ? 'end' : 'max-steps',
      secondsPerStep: ran > 0 ? wall / ran : null,
    };
  } finally {
    process.off('SIGINT', onSigint);
    await loader?.close();
    await data?.close();
    optimizer?.dispose();
    model?.dispose();
    const mfile = path.join(runDir, METRICS_FILE);
    if (existsSync(mfile)) {
      try {
        await writeTextFile(path.join(runDir, LOSS_CURVE_FILE), lossCurveSvg(readMetrics(mfile), `${config.name} (${config.stage})`));
      } catch (e) {
        log.warn(`could not write ${LOSS_CURVE_FILE}: ${(e as Error).message}`);
      }
    }
    log.stop();
  }
}
