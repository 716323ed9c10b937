/**
 * The run directory: the contract between the trainer, export and inference.
 *
 *   <output_dir>/<name>/
 *     config.yaml          resolved config (its hash is in every state.json)
 *     base.safetensors     weights neither trained by this stage nor loaded from a `pretrained` dir
 *     step-00000120/       one complete checkpoint (written as .tmp-step-... and renamed):
 *       model.safetensors      the stage's trainable weights under reference names
 *       optimizer.safetensors  AdamW moments `<name>.exp_avg` / `<name>.exp_avg_sq`
 *       state.json             TrainState (written last: a step dir without it is incomplete)
 *     metrics.jsonl, loss.svg
 *
 * A model is recoverable from: `pretrained` dirs + base.safetensors + a step's model.safetensors.
 */
import { existsSync } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import yaml from 'js-yaml';
import type * as tf from '@tensorflow/tfjs';
import type { LoaderState } from '../data/loader.js';
import { loadTokenizer, type TextTokenizer } from '../data/tokenizer.js';
import { configHash, validateConfig } from '../config/load.js';
import { modelConfigFrom } from '../config/build-model.js';
import type { ExperimentConfig, ModelSection } from '../config/schema.js';
import { MGLLaVA, type MGLLaVAConfig, type Stage } from '../model/mgllava.js';
import { Rng } from '../util/rng.js';
import { loadPretrained, readPretrainedConfigs } from '../io/pretrained.js';
import { SafetensorsReader } from '../io/safetensors.js';
import { loadWeightsFile } from './weights-io.js';

export const CONFIG_FILE = 'config.yaml';
export const BASE_FILE = 'base.safetensors';
export const MODEL_FILE = 'model.safetensors';
export const OPTIMIZER_FILE = 'optimizer.safetensors';
export const STATE_FILE = 'state.json';
export const METRICS_FILE = 'metrics.jsonl';
export const LOSS_CURVE_FILE = 'loss.svg';

const STEP_DIR = /^step-(\d{8})$/;

export class RunDirError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RunDirError';
  }
}

/** The stages that write checkpoints: the warm-up (stage 0) and the model's two stages. */
export type TrainStage = 'warmup' | Stage;

/** Checkpoint-name prefixes of the encoders (what a warm-up checkpoint holds, what init.encoders_from loads). */
export const ENCODER_PREFIXES = ['visual_encoder.', 'visual_encoder_aux.'] as const;

export const isEncoderWeight = (name: string): boolean => ENCODER_PREFIXES.some((p) => name.startsWith(p));

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

/** `<output_dir>/<name>` of a config. */
export function runDirOf(config: ExperimentConfig): string {
  return path.join(config.output_dir, config.name);
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

export async function readState(stepDir: string): Promise<TrainState> {
  const file = path.join(stepDir, STATE_FILE);
  let s: TrainState;
  try {
    s = JSON.parse(await readFile(file, 'utf8')) as TrainState;
  } catch (e) {
    throw new RunDirError(`cannot read ${file}: ${(e as Error).message}`);
  }
  if (s.format !== 1 || !Number.isInteger(s.step) || typeof s.configHash !== 'string' || !s.loader) {
    throw new RunDirError(`${file}: not a trainer state (format ${String(s.format)})`);
  }
  return s;
}

/** The resolved config a run was started with, and its hash. */
export async function readRunConfig(runDir: string): Promise<{ config: ExperimentConfig; hash: string; file: string }> {
  const file = path.join(runDir, CONFIG_FILE);
  let tree: unknown;
  try {
    tree = yaml.load(await readFile(file, 'utf8'), { filename: file });
  } catch (e) {
    throw new RunDirError(`cannot read run config ${file}: ${(e as Error).message}`);
  }
  const config = validateConfig(tree, file);
  return { config, hash: configHash(config), file };
}

/** Checkpoint-name prefixes of the parts loaded from `pretrained` directories. */
export function pretrainedPrefixes(m: ModelSection): string[] {
  const out: string[] = [];
  if (m.vision.pretrained) out.push('visual_encoder.');
  if (m.vision_aux?.pretrained) out.push('visual_encoder_aux.');
  if (m.llm.pretrained) out.push('llm.');
  return out;
}

export function fromPretrained(m: ModelSection): (name: string) => boolean {
  const prefixes = pretrainedPrefixes(m);
  return (name) => prefixes.some((p) => name.startsWith(p));
}

/** Names that go into base.safetensors: not trained by `stage`, not from a pretrained dir. */
export function baseWeightNames(model: MGLLaVA, config: ExperimentConfig): string[] {
  const trained = model.trainableWeights(config.stage as Stage);
  const pre = fromPretrained(config.model);
  return [...model.weightMap().keys()].filter((n) => !trained.has(n) && !pre(n));
}

async function loadPretrainedFor(model: MGLLaVA, m: ModelSection, log?: (message: string) => void): Promise<void> {
  for (const r of await loadPretrained(model, m)) {
    log?.(`pretrained ${r.kind}: ${r.loaded} weights from ${r.file}${r.ignored.length ? ` (${r.ignored.length} source tensors not used)` : ''}`);
  }
}

/** The MG-LLaVA module config of an experiment (architecture from the YAML or the pretrained dirs' config.json). */
export async function modelConfigOf(config: ExperimentConfig): Promise<MGLLaVAConfig> {
  return modelConfigFrom(config.model, readPretrainedConfigs(config.model));
}

/** The model skeleton of a config (random init from Rng(seed), or zeros with skipInit) + pretrained dirs. */
async function modelWithPretrained(config: ExperimentConfig, skipInit: boolean, log?: (message: string) => void): Promise<MGLLaVA> {
  const m = config.model;
  const pretrained = { vision: !!m.vision.pretrained, visionAux: !!m.vision_aux?.pretrained, llm: !!m.llm.pretrained };
  const model = new MGLLaVA(await modelConfigOf(config), { rng: new Rng(config.seed), skipInit, pretrained });
  try {
    await loadPretrainedFor(model, config.model, log);
  } catch (e) {
    model.dispose();
    throw e;
  }
  return model;
}

/**
 * Load a checkpoint's weights into `model` (strict on names it has, lenient on what it lacks): its run's
 * base.safetensors (which never holds pretrained-dir weights: one there is an error), then its
 * model.safetensors, whose trained weights win over the pretrained ones (a finetune run with
 * `llm.pretrained` stores its trained `llm.*` there). Returns the names loaded.
 */
export async function loadCheckpointWeights(model: MGLLaVA, config: ExperimentConfig, ck: ResolvedCheckpoint): Promise<Set<string>> {
  const target = model.weightMap();
  const pre = fromPretrained(config.model);
  const loaded = new Set<string>();
  const base = path.join(ck.runDir, BASE_FILE);
  if (existsSync(base)) for (const n of await loadWeightsFile(target, base, { allowMissing: true, only: (n) => !pre(n) })) loaded.add(n);
  for (const n of await loadWeightsFile(target, path.join(ck.stepDir, MODEL_FILE), { allowMissing: true })) loaded.add(n);
  return loaded;
}

export interface BuildModelOptions {
  /** Progress notes (e.g. where init.from weights came from). */
  log?: (message: string) => void;
}

/**
 * `init.encoders_from`: the encoders of a stage-0 warm-up checkpoint (a run dir -> its newest complete step,
 * or a step dir) — the stand-in for pretrained CLIP/ConvNeXt weights. Its model.safetensors must hold
 * encoder weights only (`visual_encoder.*`, `visual_encoder_aux.*`), and every encoder weight of the model,
 * shape for shape. A low-res-only model (no high-resolution encoder) leaves `visual_encoder_aux.*` unused.
 */
export async function loadEncodersFrom(model: MGLLaVA, source: string, log?: (message: string) => void): Promise<ResolvedCheckpoint> {
  const ck = await resolveCheckpoint(source);
  const state = await readState(ck.stepDir);
  if (state.stage !== 'warmup') {
    throw new RunDirError(`init.encoders_from ${source}: ${ck.stepDir} is a ${state.stage} checkpoint, not a stage-0 warm-up one (init.from takes a pretrain/finetune run)`);
  }
  const file = path.join(ck.stepDir, MODEL_FILE);
  const reader = await SafetensorsReader.open(file);
  let names: string[];
  try {
    names = reader.keys();
  } finally {
    await reader.close();
  }
  const other = names.filter((n) => !isEncoderWeight(n));
  if (other.length) {
    throw new RunDirError(
      `init.encoders_from ${source}: ${file} holds ${other.length} weights that are not encoder weights (${ENCODER_PREFIXES.join('*, ')}*): ` +
        `${other.slice(0, 8).join(', ')}${other.length > 8 ? ', ...' : ''}`,
    );
  }
  const target = new Map<string, tf.Variable>(model.vision.namedWeights('visual_encoder.'));
  if (model.visionAux) for (const [n, v] of model.visionAux.namedWeights('visual_encoder_aux.')) target.set(n, v);
  const noAux = (n: string) => !model.visionAux && n.startsWith('visual_encoder_aux.');
  const loaded = await loadWeightsFile(target, file, { skip: noAux });
  const unused = names.filter(noAux).length;
  log?.(`init.encoders_from: ${loaded.length} encoder weights from ${ck.stepDir}${unused ? ` (${unused} visual_encoder_aux.* weights unused: this model has no high-resolution encoder)` : ''}`);
  return ck;
}

/**
 * Config -> a ready-to-train MGLLaVA: random init from Rng(config.seed), pretrained dirs loaded, then
 * `init.encoders_from` (warm-up encoders) and `init.from` (a run dir -> its newest complete step, or a step
 * dir; whatever weights it has) applied.
 */
export async function buildModel(config: ExperimentConfig, o: BuildModelOptions = {}): Promise<MGLLaVA> {
  const enc = config.init.encoders_from;
  if (enc) {
    const clash = [config.model.vision.pretrained && 'model.vision.pretrained', config.model.vision_aux?.pretrained && 'model.vision_aux.pretrained', config.init.from && 'init.from'].filter(Boolean);
    if (clash.length) {
      throw new RunDirError(
        `init.encoders_from (${enc}) and ${clash.join(' and ')} would both set the encoder weights; ` +
          `use one (a run given to init.from already carries its encoders)`,
      );
    }
  }
  const model = await modelWithPretrained(config, false, o.log);
  try {
    if (enc) await loadEncodersFrom(model, enc, o.log);
    if (config.init.from) {
      const ck = await resolveCheckpoint(config.init.from);
      const loaded = await loadCheckpointWeights(model, config, ck);
      o.log?.(`init.from: ${loaded.size} weights from ${ck.stepDir} (+ ${BASE_FILE} of its run)`);
    }
  } catch (e) {
    model.dispose();
    throw e;
  }
  return model;
}

export interface RunModel {
  model: MGLLaVA;
  config: ExperimentConfig;
  tokenizer: TextTokenizer;
  step: number;
  runDir: string;
  stepDir: string;
}

/**
 * The model of `config` as saved in a checkpoint: pretrained dirs, then the run's base.safetensors, then the
 * step's model.safetensors. Every weight must come from one of them (an error lists those that do not).
 */
export async function checkpointModel(config: ExperimentConfig, ck: ResolvedCheckpoint): Promise<MGLLaVA> {
  if (config.stage === 'warmup') {
    throw new RunDirError(`run ${ck.runDir} is a stage-0 warm-up run: it holds encoder weights only; use it through init.encoders_from in a pretrain config`);
  }
  const model = await modelWithPretrained(config, true);
  try {
    const loaded = await loadCheckpointWeights(model, config, ck);
    const pre = fromPretrained(config.model);
    const absent = [...model.weightMap().keys()].filter((n) => !pre(n) && !loaded.has(n));
    if (absent.length) {
      throw new RunDirError(
        `run ${ck.runDir}: ${absent.length} weights are in neither ${BASE_FILE} nor ${path.join(path.basename(ck.stepDir), MODEL_FILE)} ` +
          `nor a pretrained dir: ${absent.slice(0, 12).join(', ')}${absent.length > 12 ? ', ...' : ''}`,
      );
    }
    return model;
  } catch (e) {
    model.dispose();
    throw e;
  }
}

/** A trained model from a run dir (newest complete step, or `step`) or a step dir, with its config and tokenizer. */
export async function loadRunModel(runDirOrStep: string, o: { step?: number } = {}): Promise<RunModel> {
  const ck = await resolveCheckpoint(runDirOrStep, o.step);
  const { config } = await readRunConfig(ck.runDir);
  const model = await checkpointModel(config, ck);
  try {
    const tokenizer = await loadTokenizer(config.data.tokenizer);
    return { model, config, tokenizer, step: ck.step, runDir: ck.runDir, stepDir: ck.stepDir };
  } catch (e) {
    model.dispose();
    throw e;
  }
}
