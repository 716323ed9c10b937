/**
 * The run directory: the contract between training, export and inference.
 *
 *   <output_dir>/<name>/
 *     config.yaml          resolved config (its hash is in every state.json)
 *     base.safetensors     weights neither trained by this stage nor loaded from a `pretrained` dir
 *     step-00000120/       one complete checkpoint (written as .tmp-step-... and renamed: checkpoint.ts):
 *       model.safetensors      the stage's trainable weights under reference names
 *       optimizer.safetensors  AdamW moments `<name>.exp_avg` / `<name>.exp_avg_sq`
 *       state.json             TrainState (written last: a step dir without it is incomplete)
 *     metrics.jsonl, loss.svg
 *     lora-from.adapter_config.json   a run started from `model.llm.lora.from`: that adapter's config, so the run
 *                          opens without the directory (its checkpoints hold the trained adapters)
 *
 * A model is recoverable from: `pretrained` dirs + base.safetensors + a step's model.safetensors
 * (src/model/factory.ts). This module only names, lists and reads; writing is checkpoint.ts and open.ts.
 */
import { existsSync } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import type { LoaderState } from '../data/loader.js';
import { configHash, readYaml, validateConfig } from '../config/load.js';
import { readSmallTextFile } from '../io/small-file.js';
import type { ExperimentConfig } from '../config/schema.js';
import type { Stage } from '../model/mgllava.js';
import { MgllavaError, type ErrorOptions } from '../errors.js';
import { validateState } from './verify.js';
import { runDirFor } from './guard.js';

export const CONFIG_FILE = 'config.yaml';
export const BASE_FILE = 'base.safetensors';
export const MODEL_FILE = 'model.safetensors';
export const OPTIMIZER_FILE = 'optimizer.safetensors';
export const STATE_FILE = 'state.json';
export const METRICS_FILE = 'metrics.jsonl';
export const LOSS_CURVE_FILE = 'loss.svg';
export const LORA_FROM_FILE = 'lora-from.adapter_config.json';

const STEP_DIR = /^step-(\d{8})$/;

/** A run or checkpoint directory that is missing, incomplete or of the wrong kind. */
export class RunDirError extends MgllavaError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, 'run', options);
    this.name = 'RunDirError';
  }
}

/** The stages that write checkpoints: the warm-up (stage 0) and the model's two stages. */
export type TrainStage = 'warmup' | Stage;

/** Trainer state saved with every checkpoint (state.json). */
export interface TrainState {
  format: 1;
  /** Completed optimizer steps (skipped non-finite steps count: they consumed their data). */
  step: number;
  totalSteps: number;
  stage: TrainStage;
  configHash: string;
  /** Model init seed (Rng(seed)) and data-order seed (sampler); the epoch order is a pure function of (seed, epoch). */
  seeds: { init: number; data: number };
  /** Data cursor: the next batch is the one after these samples. */
  loader: LoaderState;
  /** AdamW's own step count (skipped steps do not advance it). */
  optimizerStep: number;
  /** Consecutive non-finite steps so far. */
  badStreak: number;
  /** Lines of metrics.jsonl belonging to steps <= step (a resumed run truncates the file to this). */
  metricsLines: number;
  /** Training wall time so far, seconds (continues across resumes). */
  elapsedSeconds: number;
  /** The checkpoint this run was initialised from (init.from), if any. */
  initFrom: { runDir: string; step: number } | null;
  /** The warm-up checkpoint its encoders came from (init.encoders_from), if any. */
  encodersFrom?: { runDir: string; step: number } | null;
  /**
   * Where the arithmetic ran for the steps up to this save: the backend, and which code did the matrix products
   * (native addon or XNNPACK); results differ in the last bits between them. Absent in older checkpoints.
   */
  runtime?: { backend: string; matmul: string };
  /** ISO time of the save. */
  time: string;
}

export interface CheckpointRef {
  step: number;
  /** The step directory. */
  dir: string;
}

export function stepDirName(step: number): string {
  if (!Number.isInteger(step) || step < 0 || step > 99_999_999) throw new RangeError(`step ${step} out of range`);
  return `step-${String(step).padStart(8, '0')}`;
}

/** `<output_dir>/<name>` of a config (a name that is not one plain path component, e.g. '..', is refused: guard.ts). */
export function runDirOf(config: ExperimentConfig): string {
  return runDirFor(config.output_dir, config.name);
}

/** Complete checkpoints of a run directory (step dir with state.json), ascending; [] if there is none. */
export async function listCheckpoints(runDir: string): Promise<CheckpointRef[]> {
  let names: string[];
  try {
    names = await readdir(runDir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  const out: CheckpointRef[] = [];
  for (const n of names) {
    const m = STEP_DIR.exec(n);
    if (m && existsSync(path.join(runDir, n, STATE_FILE))) out.push({ step: Number(m[1]), dir: path.join(runDir, n) });
  }
  return out.sort((a, b) => a.step - b.step);
}

export interface ResolvedCheckpoint {
  runDir: string;
  stepDir: string;
  step: number;
}

/**
 * A run dir (its newest complete step, or `step` if given) or a step dir -> the checkpoint. Errors name
 * the path and what is wrong with it.
 */
export async function resolveCheckpoint(runOrStepPath: string, step?: number): Promise<ResolvedCheckpoint> {
  const p = path.resolve(runOrStepPath);
  if (!existsSync(p)) throw new RunDirError(`checkpoint ${runOrStepPath}: no such file or directory`);
  if (!(await stat(p)).isDirectory()) throw new RunDirError(`checkpoint ${runOrStepPath}: not a directory (expected a run dir or a step-NNNNNNNN dir)`);
  const m = STEP_DIR.exec(path.basename(p));
  if (m) {
    if (!existsSync(path.join(p, STATE_FILE))) throw new RunDirError(`checkpoint ${runOrStepPath} is incomplete (no ${STATE_FILE}: the save was interrupted)`);
    const s = Number(m[1]);
    if (step !== undefined && step !== s) throw new RunDirError(`checkpoint ${runOrStepPath} is step ${s}, not step ${step}`);
    return { runDir: path.dirname(p), stepDir: p, step: s };
  }
  if (!existsSync(path.join(p, CONFIG_FILE))) {
    throw new RunDirError(`checkpoint ${runOrStepPath}: neither a run directory (no ${CONFIG_FILE}) nor a step-NNNNNNNN directory`);
  }
  const all = await listCheckpoints(p);
  if (all.length === 0) throw new RunDirError(`run ${runOrStepPath} has no complete checkpoint yet`);
  if (step === undefined) {
    const last = all[all.length - 1]!;
    return { runDir: p, stepDir: last.dir, step: last.step };
  }
  const hit = all.find((c) => c.step === step);
  if (!hit) throw new RunDirError(`run ${runOrStepPath} has no complete checkpoint for step ${step} (has: ${all.map((c) => c.step).join(', ')})`);
  return { runDir: p, stepDir: hit.dir, step };
}

/**
 * Run `use` on the checkpoint `resolveCheckpoint(runOrStepPath, step)` names. A trainer rotating checkpoints
 * (train.save_total_limit) may remove that step while a reader loads it: without an explicit step, a vanished
 * step is resolved again to the newest one (a few times) instead of failing half-way.
 */
export async function withCheckpoint<T>(runOrStepPath: string, step: number | undefined, use: (ck: ResolvedCheckpoint) => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    const ck = await resolveCheckpoint(runOrStepPath, step);
    try {
      return await use(ck);
    } catch (e) {
      const rotated = step === undefined && ck.stepDir !== path.resolve(runOrStepPath) && !existsSync(path.join(ck.stepDir, STATE_FILE));
      if (!rotated) throw e;
      if (attempt >= 5) {
        throw new RunDirError(`run ${runOrStepPath}: its newest checkpoint was replaced ${attempt} times while it was being read (the run saves faster than it can be loaded)`, {
          hint: 'wait for the run to finish, or copy a step-NNNNNNNN directory elsewhere and read that',
        });
      }
    }
  }
}

export async function readState(stepDir: string): Promise<TrainState> {
  const file = path.join(stepDir, STATE_FILE);
  let s: TrainState;
  try {
    s = JSON.parse(await readSmallTextFile(file, 'the checkpoint state', 1 << 20)) as TrainState; // a device or FIFO there must not hang
  } catch (e) {
    throw new RunDirError(`cannot read ${file}: ${(e as Error).message}`);
  }
  const m = STEP_DIR.exec(path.basename(stepDir));
  return validateState(s, file, m ? Number(m[1]) : undefined);
}

/** The resolved config a run was started with, and its hash. */
export async function readRunConfig(runDir: string): Promise<{ config: ExperimentConfig; hash: string; file: string }> {
  const file = path.join(runDir, CONFIG_FILE);
  let tree: unknown;
  try {
    tree = readYaml(file); // bounded like any config: a run's config.yaml may have been edited (or be hostile)
  } catch (e) {
    throw new RunDirError(`cannot read run config: ${(e as Error).message}`);
  }
  const config = validateConfig(tree, file);
  return { config, hash: configHash(config), file };
}
