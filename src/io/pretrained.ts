/**
 * Pretrained directories named by the model config (`model.vision.pretrained`, `model.vision_aux.pretrained`,
 * `model.llm.pretrained`): their config files (architecture) and their weights (loaded into MG-LLaVA).
 *
 *   CLIP ViT   HF dir: config.json (CLIPVisionConfig, or CLIPConfig with vision_config) + model.safetensors
 *   ConvNeXt   open_clip dir: open_clip_config.json (model_cfg.vision_cfg) + open_clip_model.safetensors
 *              (or open_clip_pytorch_model.safetensors); or a timm dir: config.json with `architecture`
 *   LLM        HF dir: config.json (model_type llama | phi3) + model.safetensors or sharded *.index.json
 * Without safetensors, the PyTorch pickles of the same layouts load the same way (read without executing them,
 * src/io/torch-reader.ts): pytorch_model.bin, sharded pytorch_model-*.bin + pytorch_model.bin.index.json,
 * open_clip_pytorch_model.bin. Safetensors win when a directory has both.
 *
 * Weights are read tensor by tensor (one shard open at a time, never a whole shard in memory), widened to
 * float32 by the reader, renamed by src/io/weight-maps.ts and assigned. Names and shapes are checked from
 * the headers before any data is read: missing, unexpected or mis-shaped weights are one error listing them.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import type { PretrainedConfigs } from '../config/build-model.js';
import type { ModelSection } from '../config/schema.js';
import type { MGLLaVA } from '../model/mgllava.js';
import { WeightLoadError } from '../nn/module.js';
import { ShardedReader, writeSafetensors, type HostTensor, type LazyTensor, type TensorReader } from './safetensors.js';
import { HF_BIN_INDEX, PICKLE_EXT, TorchStateReader } from './torch-reader.js';
import {
  PART_PREFIX,
  pretrainedWeightMap,
  type ConvNextLayout,
  type NamedShape,
  type PretrainedKind,
  type PretrainedWeightMap,
} from './weight-maps.js';
import type { LlamaConfig } from '../model/llm/config.js';
import { readAdapterConfig } from './peft.js';
import { LlamaForCausalLM } from '../model/llm/llama.js';
import { WeightsError } from '../errors.js';

export class PretrainedError extends WeightsError {
  constructor(message: string) {
    super(message);
    this.name = 'PretrainedError';
  }
}

const OPEN_CLIP_CONFIG = 'open_clip_config.json';
const HF_CONFIG = 'config.json';

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function checkDir(dir: string, what: string): void {
  if (!existsSync(dir)) throw new PretrainedError(`${what} ${dir}: no such directory`);
  if (!statSync(dir).isDirectory()) throw new PretrainedError(`${what} ${dir}: not a directory (name the folder holding config.json and the weights)`);
}

function readJson(file: string): Json {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new PretrainedError(`cannot read ${file}: ${(e as Error).message}`);
  }
  if (!isObject(json)) throw new PretrainedError(`${file}: expected a JSON object`);
  return json;
}

/** CLIP `config.json`: a CLIPVisionConfig or a CLIPConfig holding `vision_config` (returned as is). */
export function readClipConfig(dir: string): Json {
  checkDir(dir, 'model.vision.pretrained');
  const file = path.join(dir, HF_CONFIG);
  if (!existsSync(file)) throw new PretrainedError(`model.vision.pretrained ${dir}: no ${HF_CONFIG} (expected a Hugging Face CLIP directory)`);
  const json = readJson(file);
  const type = json.model_type;
  if (type !== 'clip_vision_model' && type !== 'clip' && !isObject(json.vision_config)) {
    throw new PretrainedError(`${file}: model_type ${JSON.stringify(type)} is not a CLIP config (expected clip or clip_vision_model)`);
  }
  if (type === 'clip' && !isObject(json.vision_config)) throw new PretrainedError(`${file}: a CLIPConfig without vision_config`);
  return json;
}

/** Which checkpoint layout a ConvNeXt directory holds: open_clip when it has open_clip_config.json. */
export function convNextLayoutOf(dir: string): ConvNextLayout {
  return existsSync(path.join(dir, OPEN_CLIP_CONFIG)) ? 'open_clip' : 'timm';
}

/**
 * ConvNeXt architecture keys for `convNextConfigFrom`: open_clip's `model_cfg` (it holds `vision_cfg` with
 * `timm_model_name`), or, for a timm dir, `{timm_model_name: architecture, ...model_args}`.
 */
export function readConvNextConfig(dir: string): Json {
  checkDir(dir, 'model.vision_aux.pretrained');
  if (convNextLayoutOf(dir) === 'open_clip') {
    const file = path.join(dir, OPEN_CLIP_CONFIG);
    const json = readJson(file);
    const cfg = json.model_cfg;
    if (!isObject(cfg) || !isObject(cfg.vision_cfg)) throw new PretrainedError(`${file}: no model_cfg.vision_cfg object (not an open_clip config?)`);
    return cfg;
  }
  const file = path.join(dir, HF_CONFIG);
  if (!existsSync(file)) {
    throw new PretrainedError(`model.vision_aux.pretrained ${dir}: neither ${OPEN_CLIP_CONFIG} (open_clip) nor ${HF_CONFIG} (timm)`);
  }
  const json = readJson(file);
  if (typeof json.architecture !== 'string') throw new PretrainedError(`${file}: no 'architecture' (expected a timm config.json, e.g. "convnext_large")`);
  const args = isObject(json.model_args) ? json.model_args : {};
  return { timm_model_name: json.architecture, ...args };
}

/** LLaMA-family `config.json` (validated later by `fromHfConfig`). */
export function readLlmConfig(dir: string): Json {
  checkDir(dir, 'model.llm.pretrained');
  const file = path.join(dir, HF_CONFIG);
  if (!existsSync(file)) throw new PretrainedError(`model.llm.pretrained ${dir}: no ${HF_CONFIG} (expected a Hugging Face model directory)`);
  const json = readJson(file);
  if (typeof json.model_type !== 'string') throw new PretrainedError(`${file}: no model_type (expected llama or phi3)`);
  return json;
}

/** The config files of every `pretrained` directory of the model section (for `modelConfigFrom`). */
export function readPretrainedConfigs(model: ModelSection): PretrainedConfigs {
  const out: PretrainedConfigs = {};
  if (model.vision.pretrained) out.vision = readClipConfig(model.vision.pretrained);
  if (model.vision_aux?.pretrained) out.visionAux = readConvNextConfig(model.vision_aux.pretrained);
  if (model.llm.pretrained) out.llm = readLlmConfig(model.llm.pretrained);
  if (model.llm.lora?.from) out.loraAdapter = readAdapterConfig(model.llm.lora.from);
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Weights.

/** Weight files each kind looks for first, in the layouts' own names. */
const PREFERRED: Record<PretrainedKind | 'open_clip', string[]> = {
  clip: ['model.safetensors.index.json', 'model.safetensors'],
  convnext: ['model.safetensors.index.json', 'model.safetensors'],
  open_clip: ['open_clip_model.safetensors', 'open_clip_pytorch_model.safetensors'],
  llm: ['model.safetensors.index.json', 'model.safetensors'],
};

/** The PyTorch pickle names of the same layouts, used when a directory has no safetensors. */
const PICKLE_PREFERRED: Record<PretrainedKind | 'open_clip', string[]> = {
  clip: [HF_BIN_INDEX, 'pytorch_model.bin'],
  convnext: [HF_BIN_INDEX, 'pytorch_model.bin'],
  open_clip: ['open_clip_pytorch_model.bin'],
  llm: [HF_BIN_INDEX, 'pytorch_model.bin'],
};

/** A weights file that is a PyTorch pickle (or an index of pickle shards), read by TorchStateReader. */
const isPickleWeights = (file: string): boolean => PICKLE_EXT.test(file) || file.endsWith('.bin.index.json');

/** A weights file (single or index) as a TensorReader: PyTorch pickles through TorchStateReader, else safetensors. */
export async function openWeightsFile(file: string): Promise<TensorReader> {
  return isPickleWeights(file) ? TorchStateReader.open(file) : ShardedReader.open(file);
}

/**
 * The file (single or index) holding a directory's weights: the layout's usual safetensors name, else the only
 * `*.safetensors.index.json`, else the only `*.safetensors`; without safetensors the same for PyTorch pickles
 * (the layout's `.bin` names, the only `*.bin.index.json`, the only .bin/.pth/.pt). Ambiguity is an error.
 */
export function findWeightsFile(dir: string, kind: PretrainedKind): string {
  checkDir(dir, 'pretrained');
  const files = readdirSync(dir).filter((f) => statSync(path.join(dir, f)).isFile());
  const layout = kind === 'convnext' && convNextLayoutOf(dir) === 'open_clip' ? 'open_clip' : kind;
  const preferred = PREFERRED[layout].filter((f) => files.includes(f));
  const pick = (candidates: string[], what: string): string | null => {
    if (candidates.length > 1) throw new PretrainedError(`${dir}: several ${what} (${candidates.join(', ')}); keep one`);
    return candidates.length === 1 ? path.join(dir, candidates[0]!) : null;
  };
  const found =
    pick(preferred, 'weight files') ??
    pick(files.filter((f) => f.endsWith('.safetensors.index.json')), 'safetensors indexes') ??
    pick(files.filter((f) => f.endsWith('.safetensors')), 'safetensors files (shards without an index?)');
  if (found) return found;
  const pickled =
    pick(PICKLE_PREFERRED[layout].filter((f) => files.includes(f)), 'PyTorch weight files') ??
    pick(files.filter((f) => f.endsWith('.bin.index.json')), '.bin indexes') ??
    pick(files.filter((f) => PICKLE_EXT.test(f)), 'PyTorch checkpoint files (shards without an index?)');
  if (pickled) return pickled;
  throw new PretrainedError(`${dir}: no weights found (expected ${[...PREFERRED[layout], ...PICKLE_PREFERRED[layout]].join(', ')}, or any *.safetensors / .bin)`);
}

/** Opened pretrained weights with their plan: every source tensor and what it becomes. */
export interface PretrainedSource {
  dir: string;
  file: string;
  map: PretrainedWeightMap;
  reader: TensorReader;
  entries: PlannedSource[];
}

export interface PlannedSource {
  source: string;
  dtype: string;
  shape: number[];
  plan: ReturnType<PretrainedWeightMap['plan']>;
}

/** Open a directory's weights and plan the mapping of every tensor (headers only). Close `reader` after use. */
export async function openPretrained(dir: string, kind: PretrainedKind, llm?: LlamaConfig): Promise<PretrainedSource> {
  const file = findWeightsFile(dir, kind);
  const map = pretrainedWeightMap(kind, { llm, convnextLayout: kind === 'convnext' ? convNextLayoutOf(dir) : undefined });
  const reader = await openWeightsFile(file);
  try {
    const entries = reader.keys().map((source) => {
      const info = reader.info(source);
      return { source, dtype: info.dtype, shape: info.shape, plan: map.plan(source, info.shape) };
    });
    return { dir, file, map, reader, entries };
  } catch (e) {
    await reader.close();
    throw e;
  }
}

/** Mapped targets of a plan; a target produced twice is an error. */
export function plannedTargets(src: PretrainedSource): Map<string, { source: string; shape: number[] }> {
  const out = new Map<string, { source: string; shape: number[] }>();
  for (const e of src.entries) {
    if (e.plan.action !== 'map') continue;
    for (const t of e.plan.targets) {
      const prev = out.get(t.name);
      if (prev) throw new PretrainedError(`${src.file}: ${t.name} would come from both ${prev.source} and ${e.source}`);
      out.set(t.name, { source: e.source, shape: t.shape });
    }
  }
  return out;
}

/** Source names the map does not know (neither mapped nor skipped on purpose). */
export function unknownSources(src: PretrainedSource): string[] {
  return src.entries.filter((e) => e.plan.action === 'unknown').map((e) => e.source);
}

/**
 * Check a plan against the weights it must fill (`expected`: our name -> shape). Throws one WeightLoadError
 * listing every missing, unexpected and mis-shaped name.
 */
export function checkPlan(src: PretrainedSource, expected: readonly NamedShape[]): void {
  const targets = plannedTargets(src);
  const want = new Map(expected.map((w) => [w.name, w.shape]));
  const missing = [...want.keys()].filter((n) => !targets.has(n));
  const unexpected = [
    ...unknownSources(src),
    ...[...targets].filter(([n]) => !want.has(n)).map(([n, t]) => `${t.source} (-> ${n})`),
  ];
  const mismatched: string[] = [];
  for (const [n, t] of targets) {
    const shape = want.get(n);
    if (shape && (shape.length !== t.shape.length || shape.some((d, i) => d !== t.shape[i]))) {
      mismatched.push(`${t.source}${t.source === n ? '' : ` (-> ${n})`}: checkpoint has [${t.shape}], model expects [${shape}]`);
    }
  }
  const problems: string[] = [];
  if (missing.length) problems.push(`missing ${missing.length}: ${missing.join(', ')}`);
  if (unexpected.length) problems.push(`unexpected ${unexpected.length}: ${unexpected.join(', ')}`);
  if (mismatched.length) problems.push(`shape mismatch ${mismatched.length}: ${mismatched.join('; ')}`);
  if (problems.length) {
    throw new WeightLoadError(`cannot load ${src.map.label} weights from ${src.file}:\n  ${problems.join('\n  ')}`, missing, unexpected);
  }
}

/**
 * Every mapped tensor of an opened source, converted to our names, one source tensor at a time (in file
 * order, so shards are visited once each). Fused sources yield several tensors.
 */
export async function* convertedTensors(src: PretrainedSource): AsyncGenerator<[string, HostTensor]> {
  for (const e of src.entries) {
    if (e.plan.action !== 'map') continue;
    yield* src.map.convert(e.source, await src.reader.read(e.source));
  }
}

export interface PretrainedLoadReport {
  kind: PretrainedKind;
  dir: string;
  file: string;
  loaded: number;
  ignored: { source: string; reason: string }[];
}

/** Load one pretrained dir into the `kind` part of `model` (all of its weights, strictly). */
export async function loadPretrainedPart(model: MGLLaVA, kind: PretrainedKind, dir: string): Promise<PretrainedLoadReport> {
  const prefix = PART_PREFIX[kind];
  const part = kind === 'clip' ? model.vision : kind === 'convnext' ? model.visionAux : model.llm;
  if (!part) throw new PretrainedError(`model.vision_aux.pretrained = ${dir}, but the model has no high-resolution encoder`);
  // LoRA adapters are never in a pretrained LLM directory (they start fresh or from model.llm.lora.from).
  const target = new Map([...part.weightMap(prefix)].filter(([n]) => !LlamaForCausalLM.isLoraWeight(n)));
  const src = await openPretrained(dir, kind, model.config.llm);
  try {
    checkPlan(
      src,
      [...target].map(([name, v]) => ({ name, shape: v.shape })),
    );
    let loaded = 0;
    for await (const [name, t] of convertedTensors(src)) {
      const v = target.get(name)!;
      tf.tidy(() => v.assign(tf.tensor(t.data, t.shape, 'float32')));
      loaded++;
    }
    const ignored = src.entries.flatMap((e) => (e.plan.action === 'ignore' ? [{ source: e.source, reason: e.plan.reason }] : []));
    return { kind, dir, file: src.file, loaded, ignored };
  } finally {
    await src.reader.close();
  }
}

/** Load every `pretrained` directory of the model section into `model` (CLIP, ConvNeXt, LLM). */
export async function loadPretrained(model: MGLLaVA, section: ModelSection): Promise<PretrainedLoadReport[]> {
  const parts: [PretrainedKind, string | null | undefined][] = [
    ['clip', section.vision.pretrained],
    ['convnext', section.vision_aux?.pretrained],
    ['llm', section.llm.pretrained],
  ];
  const reports: PretrainedLoadReport[] = [];
  for (const [kind, dir] of parts) if (dir) reports.push(await loadPretrainedPart(model, kind, dir));
  return reports;
}

/**
 * On-demand reads of an opened source's tensors by *our* names. A split (fused) source tensor is read once:
 * its other outputs wait until they are asked for (each exactly once), so memory stays at one source tensor.
 */
export function convertedReader(src: PretrainedSource): (name: string) => Promise<HostTensor> {
  const targets = plannedTargets(src);
  const pending = new Map<string, HostTensor>();
  return async (name) => {
    const t = targets.get(name);
    if (!t) throw new PretrainedError(`${src.file}: no tensor maps to ${name}`);
    if (!pending.has(name)) for (const [n, h] of src.map.convert(t.source, await src.reader.read(t.source))) pending.set(n, h);
    const h = pending.get(name)!;
    pending.delete(name);
    return h.dtype === 'float32' ? h : { dtype: 'float32', shape: h.shape, data: Float32Array.from(h.data) };
  };
}

/**
 * Write every mapped tensor of an opened source into one safetensors file under our checkpoint names, one
 * tensor at a time. Unknown source names are an error; completeness is checked when the file is loaded
 * into a model (no model exists here).
 */
export async function writeConverted(src: PretrainedSource, out: string, metadata: Record<string, string> = {}): Promise<number> {
  const unknown = unknownSources(src);
  if (unknown.length) {
    throw new WeightLoadError(`${src.file}: ${unknown.length} tensors are not ${src.map.label} weights: ${unknown.join(', ')}`, [], unknown);
  }
  const read = convertedReader(src);
  const lazy = new Map<string, LazyTensor>();
  for (const [name, t] of plannedTargets(src)) lazy.set(name, { dtype: 'float32', shape: t.shape, load: () => read(name) });
  await writeSafetensors(out, lazy, { format: 'pt', source: src.file, kind: src.map.kind, ...metadata });
  return lazy.size;
}
