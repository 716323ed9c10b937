/**
 * Experiment config -> MG-LLaVA model, and back from a run directory.
 *
 *   buildModel(config)          random init from Rng(seed) + `pretrained` dirs + init.encoders_from + init.from
 *   checkpointModel(config, ck) `pretrained` dirs + the run's base.safetensors + the step's model.safetensors
 *   loadRunModel(dir)           checkpointModel of a run/step directory, with its config and tokenizer
 *
 * Which weights a stage trains is one function of config + model, `trainableSet`: the trainer optimises
 * exactly these, and base.safetensors holds the rest that no `pretrained` dir provides.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import type * as tf from '@tensorflow/tfjs';
import { modelConfigFrom } from '../config/build-model.js';
import type { ExperimentConfig, ModelSection } from '../config/schema.js';
import { loadTokenizer, type TextTokenizer } from '../data/tokenizer.js';
import { loadPretrained, readPretrainedConfigs } from '../io/pretrained.js';
import { SafetensorsReader } from '../io/safetensors.js';
import { loadWeightsFile } from '../io/weights-io.js';
import { BASE_FILE, MODEL_FILE, readRunConfig, readState, resolveCheckpoint, RunDirError, withCheckpoint, type ResolvedCheckpoint } from '../run/layout.js';
import { Rng } from '../util/rng.js';
import { MgllavaError } from '../errors.js';
import { MGLLaVA, type MGLLaVAConfig } from './mgllava.js';
import { LlamaForCausalLM } from './llm/llama.js';
import { loadAdapterWeights, runConfigForOpen } from '../io/peft.js';

/** Checkpoint-name prefixes of the encoders (what a warm-up checkpoint holds, what init.encoders_from loads). */
export const ENCODER_PREFIXES = ['visual_encoder.', 'visual_encoder_aux.'] as const;

export const isEncoderWeight = (name: string): boolean => ENCODER_PREFIXES.some((p) => name.startsWith(p));

/**
 * The weights a pretrain/finetune run trains, by checkpoint name: the stage's policy (`MGLLaVA.trainableWeights`:
 * fusion + projectors; + the LLM in finetune). The one place that decides it: the optimizer's parameters, each
 * checkpoint's model.safetensors, and (by complement) base.safetensors all follow from it.
 */
export function trainableSet(model: MGLLaVA, config: ExperimentConfig): Map<string, tf.Variable> {
  if (config.stage === 'warmup') throw new RunDirError('trainableSet: a warm-up config trains the encoders and heads of a WarmupModel, not an MG-LLaVA stage');
  return model.trainableWeights(config.stage);
}

/** Checkpoint-name prefixes of the parts loaded from `pretrained` directories. */
export function pretrainedPrefixes(m: ModelSection): string[] {
  const out: string[] = [];
  if (m.vision.pretrained) out.push('visual_encoder.');
  if (m.vision_aux?.pretrained) out.push('visual_encoder_aux.');
  if (m.llm.pretrained) out.push('llm.');
  return out;
}

/** Whether a weight comes from a pretrained directory: LoRA adapters from `model.llm.lora.from` only, never from the LLM's. */
export function fromPretrained(m: ModelSection): (name: string) => boolean {
  const prefixes = pretrainedPrefixes(m);
  const adapters = !!m.llm.lora?.from;
  return (name) => (LlamaForCausalLM.isLoraWeight(name) ? adapters : prefixes.some((p) => name.startsWith(p)));
}

/** Names that go into base.safetensors: not trained by the config's stage, not from a pretrained dir. */
export function baseWeightNames(model: MGLLaVA, config: ExperimentConfig): string[] {
  const trained = trainableSet(model, config);
  const pre = fromPretrained(config.model);
  return [...model.weightMap().keys()].filter((n) => !trained.has(n) && !pre(n));
}

async function loadPretrainedFor(model: MGLLaVA, m: ModelSection, log?: (message: string) => void): Promise<void> {
  for (const r of await loadPretrained(model, m)) {
    log?.(`pretrained ${r.kind}: ${r.loaded} weights from ${r.file}${r.ignored.length ? ` (${r.ignored.length} source tensors not used)` : ''}`);
  }
  const from = m.llm.lora?.from;
  if (from) {
    // Load outside the log call: `log?.(...)` would skip evaluating its argument when there is no logger.
    const loaded = await loadAdapterWeights(model.llm, from);
    log?.(`model.llm.lora.from: ${loaded} adapter weights from ${from}`);
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
  // The adapter named in lora.from (its LoRA weights and saved modules, e.g. lm_head) is not replaced by a base file's copy.
  const adapter = config.model.llm.lora?.from ? (n: string) => model.llm.isAdapterWeight(n, 'llm.') : () => false;
  const loaded = new Set<string>();
  const base = path.join(ck.runDir, BASE_FILE);
  if (existsSync(base)) for (const n of await loadWeightsFile(target, base, { allowMissing: true, only: (n) => !pre(n), skip: adapter })) loaded.add(n);
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
 * dir; whatever weights it has) applied. The caller disposes the model.
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
      const from = config.init.from;
      // Every failure here names the key: a wrong, missing or corrupt init.from is a config problem to fix there.
      const named = (e: unknown): unknown =>
        e instanceof MgllavaError ? new MgllavaError(`init.from: ${e.message.includes(from) ? '' : `${from}: `}${e.message}`, e.category, { hint: e.hint ?? 'init.from takes a pretrain/finetune run directory or one of its step-NNNNNNNN directories', cause: e }) : e;
      const ck = await resolveCheckpoint(from).catch((e: unknown) => {
        throw named(e);
      });
      const loaded = await loadCheckpointWeights(model, config, ck).catch((e: unknown) => {
        throw named(e);
      });
      o.log?.(`init.from: ${loaded.size} weights from ${ck.stepDir} (+ ${BASE_FILE} of its run)`);
    }
  } catch (e) {
    model.dispose();
    throw e;
  }
  return model;
}

/** A trained model with what generation needs: its config, tokenizer and where it came from. */
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

/**
 * A trained model from a run dir (newest complete step, or `step`) or a step dir, with its config and tokenizer.
 * The caller disposes `model`.
 */
export async function loadRunModel(runDirOrStep: string, o: { step?: number } = {}): Promise<RunModel> {
  return withCheckpoint(runDirOrStep, o.step, (ck) => loadCheckpointRun(ck)); // a run still training may rotate the step away
}

async function loadCheckpointRun(ck: ResolvedCheckpoint): Promise<RunModel> {
  const config = runConfigForOpen((await readRunConfig(ck.runDir)).config, ck.runDir);
  const model = await checkpointModel(config, ck);
  try {
    let tokenizer: TextTokenizer;
    try {
      tokenizer = await loadTokenizer(config.data.tokenizer);
    } catch (e) {
      // The run names its tokenizer by path (config.yaml): moved or deleted since training.
      throw new RunDirError(`run ${ck.runDir}: its tokenizer (data.tokenizer in ${path.join(ck.runDir, 'config.yaml')}) cannot be loaded: ${(e as Error).message}`, {
        hint: `put the tokenizer back where the run's config.yaml says, or edit data.tokenizer.path there`,
      });
    }
    // A tokenizer replaced since training: its ids past the embedding would reach the model (training refuses this too).
    if (tokenizer.vocabSize > model.config.llm.vocabSize) {
      const t = config.data.tokenizer;
      const where = t.type === 'hf' ? t.path : t.type;
      throw new RunDirError(`run ${ck.runDir}: its tokenizer ${where} has ${tokenizer.vocabSize} ids but the LLM vocabulary (model.llm.vocab_size) has ${model.config.llm.vocabSize}`, {
        hint: 'the tokenizer file was replaced since training: put back the one the run was trained with',
      });
    }
    return { model, config, tokenizer, step: ck.step, runDir: ck.runDir, stepDir: ck.stepDir };
  } catch (e) {
    model.dispose();
    throw e;
  }
}

/** Shorthand for `loadRunModel` (the public API's name). */
export const loadRun = loadRunModel;
