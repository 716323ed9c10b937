/**
 * LoRA adapters in and out, in Hugging Face PEFT's directory format, and merged weights:
 *
 *   adapter_config.json        {peft_type: "LORA", r, lora_alpha, lora_dropout, target_modules, use_rslora,
 *                               base_model_name_or_path, task_type: "CAUSAL_LM", bias: "none", ...}
 *   adapter_model.safetensors  base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight [r, in]
 *                              base_model.model.model.layers.N.self_attn.q_proj.lora_B.weight [out, r] ...
 *
 * PEFT's key of an adapter weight is 'base_model.model.' + its name in the causal LM (ours are the same
 * names under `llm.`), without the adapter name ('default'), which PEFT drops when saving and which is
 * accepted here on reading. Phi-3's fused modules are adapted as one linear each (qkv_proj, gate_up_proj).
 *
 * Merging (`mergeLora`): W' = W + scaling * B A per adapted linear, what `merge_and_unload()` gives, so a
 * merged checkpoint loads in PyTorch without PEFT. Computed with tfjs one linear at a time.
 */
import { existsSync, statSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { MgllavaError, UsageError, WeightsError } from '../errors.js';
import type { ExperimentConfig } from '../config/schema.js';
import { modelConfigFrom } from '../config/build-model.js';
import { readPretrainedConfigs } from './pretrained.js';
import type { ExportResult } from './export.js';
import { LlamaForCausalLM } from '../model/llm/llama.js';
import {
  loraMembers,
  loraScaling,
  resolveLoraTargets,
  LLAMA_LORA_TARGETS,
  LORA_SAVED_MODULES,
  PHI3_LORA_TARGETS,
  SAVED_MODULE_WEIGHT,
  type LoraConfig,
  type LoraSavedModule,
  type LoraTarget,
} from '../model/llm/lora.js';
import { SafetensorsReader, writeSafetensors, type HostTensor, type LazyTensor } from './safetensors.js';
import { readSmallTextFileSync } from './small-file.js';
import { LORA_FROM_FILE } from '../run/layout.js';
import { checkFinite } from './weights-io.js';

export const ADAPTER_CONFIG_FILE = 'adapter_config.json';
export const ADAPTER_WEIGHTS_FILE = 'adapter_model.safetensors';
/** PEFT's prefix of a causal LM's weight names (PeftModelForCausalLM.base_model.model). */
export const PEFT_PREFIX = 'base_model.model.';
/** Our prefix of the LLM's weights inside MG-LLaVA. */
const LLM_PREFIX = 'llm.';

/** Defaults of unset `model.llm.lora` keys: PEFT's LoraConfig (r 8, alpha 8, dropout 0), every linear (xtuner). */
export const LORA_DEFAULTS: LoraConfig = { r: 8, alpha: 8, dropout: 0, targets: 'all-linear', rslora: false };

/** `model.llm.lora` as the YAML gives it (every key optional). */
export interface LoraSection {
  r?: number;
  alpha?: number;
  dropout?: number;
  targets?: LoraConfig['targets'];
  rslora?: boolean;
  modules_to_save?: LoraSavedModule[];
  from?: string | null;
}

const SAVED_WEIGHTS = new Set(Object.values(SAVED_MODULE_WEIGHT));

/** Our checkpoint name (`llm.model.layers...lora_A.weight`, or a saved module's `llm.lm_head.weight`) -> PEFT's key. */
export function peftKey(ours: string): string {
  const name = ours.slice(LLM_PREFIX.length);
  if (!ours.startsWith(LLM_PREFIX) || !(LlamaForCausalLM.isLoraWeight(ours) || SAVED_WEIGHTS.has(name))) throw new Error(`'${ours}' is not an adapter weight of the LLM`);
  return PEFT_PREFIX + name;
}

/**
 * A PEFT key -> our checkpoint name, or null when it is neither a LoRA weight of a decoder linear nor a saved
 * module's weight. PEFT saves without the adapter name (`lm_head.weight`); in-memory state dicts carry it
 * (`lora_A.default.weight`, `lm_head.modules_to_save.default.weight`): both are read.
 */
export function oursFromPeftKey(key: string): string | null {
  if (!key.startsWith(PEFT_PREFIX)) return null;
  const name = key
    .slice(PEFT_PREFIX.length)
    .replace(/\.(lora_[AB])\.default\.weight$/, '.$1.weight')
    .replace(/\.modules_to_save\.default\.weight$/, '.weight');
  if (SAVED_WEIGHTS.has(name)) return LLM_PREFIX + name;
  return /^model\.layers\.\d+\.(self_attn|mlp)\.[a-z_]+\.lora_[AB]\.weight$/.test(name) ? LLM_PREFIX + name : null;
}

/** The adapter_config.json of an adapter (the fields PEFT's LoraConfig reads; targets resolved to module names). */
export function adapterConfigJson(c: LoraConfig, baseModel: string | null): Record<string, unknown> {
  if (c.targets === 'all-linear') throw new Error('adapterConfigJson: resolve the targets to module names first');
  return {
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    base_model_name_or_path: baseModel,
    r: c.r,
    lora_alpha: c.alpha,
    lora_dropout: c.dropout,
    target_modules: [...c.targets],
    use_rslora: c.rslora,
    bias: 'none',
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    modules_to_save: c.modulesToSave?.length ? [...c.modulesToSave] : null,
    layers_to_transform: null,
    layers_pattern: null,
    rank_pattern: {},
    alpha_pattern: {},
    use_dora: false,
    revision: null,
  };
}

type Json = Record<string, unknown>;

/** `modulesToSave` of a LoraConfig: absent when empty (the plain-LoRA config stays as it was), duplicates dropped. */
function savedModules(list: readonly LoraSavedModule[]): Pick<LoraConfig, 'modulesToSave'> {
  return list.length ? { modulesToSave: [...new Set(list)] } : {};
}

/** What an adapter_config.json says, checked: a plain LoRA this decoder computes the same way. */
export function parseAdapterConfig(json: unknown, file: string): LoraConfig {
  const bad = (why: string, hint?: string) => new WeightsError(`${file}: ${why}`, hint ? { hint } : {});
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw bad('expected a JSON object');
  const j = json as Json;
  if (j.peft_type !== 'LORA') throw bad(`peft_type ${JSON.stringify(j.peft_type)} is not "LORA"`);
  if (j.task_type != null && j.task_type !== 'CAUSAL_LM') throw bad(`task_type ${JSON.stringify(j.task_type)} is not "CAUSAL_LM"`);
  const num = (k: string, ok: (v: number) => boolean, fallback?: number): number => {
    const v = j[k] ?? fallback;
    if (typeof v !== 'number' || !ok(v)) throw bad(`'${k}' = ${JSON.stringify(j[k])} is not valid`);
    return v;
  };
  const r = num('r', (v) => Number.isInteger(v) && v > 0);
  const alpha = num('lora_alpha', (v) => v > 0, 8);
  const dropout = num('lora_dropout', (v) => v >= 0 && v < 1, 0);
  // Variants computed differently are refused, never ignored.
  const unsupported: [string, boolean][] = [
    ['use_dora', j.use_dora === true],
    ['fan_in_fan_out', j.fan_in_fan_out === true],
    [`bias ${JSON.stringify(j.bias)}`, j.bias != null && j.bias !== 'none'],
    ['rank_pattern', typeof j.rank_pattern === 'object' && j.rank_pattern !== null && Object.keys(j.rank_pattern).length > 0],
    ['alpha_pattern', typeof j.alpha_pattern === 'object' && j.alpha_pattern !== null && Object.keys(j.alpha_pattern).length > 0],
    ['layers_to_transform', j.layers_to_transform != null],
    ['use_qalora', j.use_qalora === true],
  ];
  const used = unsupported.filter(([, on]) => on).map(([k]) => k);
  if (used.length) throw bad(`uses ${used.join(', ')}, which mgllava does not implement (plain LoRA on the decoder linears only)`);
  const known = new Set<string>([...LLAMA_LORA_TARGETS, ...PHI3_LORA_TARGETS]);
  let targets: LoraConfig['targets'];
  const t = j.target_modules;
  if (t === 'all-linear') targets = 'all-linear';
  else if (Array.isArray(t) && t.length > 0 && t.every((x) => typeof x === 'string')) {
    const unknown = t.filter((x) => !known.has(x));
    if (unknown.length) throw bad(`target_modules ${JSON.stringify(unknown)} are not LLaMA/Phi-3 decoder linears (${[...known].join(', ')})`);
    targets = t as LoraTarget[];
  } else throw bad(`target_modules ${JSON.stringify(t)}: expected a list of module names or "all-linear" (regular expressions are not supported)`);
  const rslora = j.use_rslora ?? false;
  if (typeof rslora !== 'boolean') throw bad(`'use_rslora' = ${JSON.stringify(rslora)} is not a boolean`);
  const saved = j.modules_to_save ?? [];
  if (!Array.isArray(saved) || !saved.every((m) => (LORA_SAVED_MODULES as readonly unknown[]).includes(m))) {
    throw bad(`modules_to_save ${JSON.stringify(j.modules_to_save)}: mgllava saves ${LORA_SAVED_MODULES.join(' and ')} only`);
  }
  return { r, alpha, dropout, targets, rslora, ...savedModules(saved as LoraSavedModule[]) };
}

/** Read and check `DIR/adapter_config.json`. */
export function readAdapterConfig(dir: string): LoraConfig {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) {
    throw new WeightsError(`model.llm.lora.from ${dir}: not a directory`, { hint: 'name a PEFT adapter directory (adapter_config.json + adapter_model.safetensors)' });
  }
  const file = path.join(dir, ADAPTER_CONFIG_FILE);
  if (!existsSync(file)) throw new WeightsError(`model.llm.lora.from ${dir}: no ${ADAPTER_CONFIG_FILE} (not a PEFT adapter directory)`);
  return readAdapterConfigFile(file);
}

/** Read and check one adapter_config.json (bounded, regular file, UTF-8). */
function readAdapterConfigFile(file: string): LoraConfig {
  let json: unknown;
  try {
    // A FIFO or a link to /dev/zero hung here, a huge file filled memory, bad bytes became U+FFFD silently.
    json = JSON.parse(readSmallTextFileSync(file, 'the adapter config', 4 << 20));
  } catch (e) {
    throw new WeightsError(e instanceof MgllavaError ? e.message : `${file}: ${(e as Error).message}`, { hint: e instanceof MgllavaError ? e.hint : undefined });
  }
  return parseAdapterConfig(json, file);
}

/**
 * The LoRA config of a `model.llm.lora` section: its keys, else the adapter's (`from`), else the defaults.
 * A key that disagrees with the adapter's weights' shape-determining config (r, targets) or its scaling
 * (alpha, rslora) is an error; dropout may differ (it is not in the weights).
 */
export function resolveLoraConfig(section: LoraSection, adapter: LoraConfig | null): LoraConfig {
  const out: LoraConfig = {
    r: section.r ?? adapter?.r ?? LORA_DEFAULTS.r,
    alpha: section.alpha ?? adapter?.alpha ?? LORA_DEFAULTS.alpha,
    dropout: section.dropout ?? adapter?.dropout ?? LORA_DEFAULTS.dropout,
    targets: section.targets ?? adapter?.targets ?? LORA_DEFAULTS.targets,
    rslora: section.rslora ?? adapter?.rslora ?? LORA_DEFAULTS.rslora,
    ...savedModules(section.modules_to_save ?? adapter?.modulesToSave ?? []),
  };
  if (adapter) {
    const clash: string[] = [];
    if (out.r !== adapter.r) clash.push(`r ${out.r} (adapter: ${adapter.r})`);
    if (loraScaling(out) !== loraScaling(adapter)) clash.push(`scaling ${loraScaling(out)} from alpha ${out.alpha}, rslora ${out.rslora} (adapter: alpha ${adapter.alpha}, rslora ${adapter.rslora})`);
    const norm = (t: LoraConfig['targets']) => (t === 'all-linear' ? t : [...t].sort().join(','));
    if (section.targets !== undefined && norm(out.targets) !== norm(adapter.targets)) clash.push(`targets ${JSON.stringify(out.targets)} (adapter: ${JSON.stringify(adapter.targets)})`);
    const saved = (m: readonly string[] | undefined) => [...(m ?? [])].sort().join(',');
    if (section.modules_to_save !== undefined && saved(out.modulesToSave) !== saved(adapter.modulesToSave)) {
      clash.push(`modules_to_save ${JSON.stringify(out.modulesToSave ?? [])} (adapter: ${JSON.stringify(adapter.modulesToSave ?? [])})`);
    }
    if (clash.length) {
      throw new WeightsError(`model.llm.lora disagrees with the adapter in model.llm.lora.from (${section.from}): ${clash.join('; ')}`, {
        hint: 'leave those keys out to take the adapter\'s',
      });
    }
  }
  return out;
}

/**
 * The adapter weights of a PEFT directory under our names (`llm.model.layers...lora_A.weight`). Keys that are
 * neither LoRA weights of decoder linears nor a saved module's weight (lm_head, embed_tokens) are an error listing them.
 */
export async function readAdapterWeights(dir: string): Promise<Map<string, HostTensor>> {
  const file = path.join(dir, ADAPTER_WEIGHTS_FILE);
  if (!existsSync(file)) {
    const bin = existsSync(path.join(dir, 'adapter_model.bin'));
    throw new WeightsError(`model.llm.lora.from ${dir}: no ${ADAPTER_WEIGHTS_FILE}${bin ? ' (only adapter_model.bin, a pickle)' : ''}`, {
      hint: bin ? 'convert it: mgllava convert, or in Python save_file(torch.load(...), "adapter_model.safetensors")' : undefined,
    });
  }
  const reader = await SafetensorsReader.open(file);
  try {
    const out = new Map<string, HostTensor>();
    const other: string[] = [];
    for (const key of reader.keys()) {
      const ours = oursFromPeftKey(key);
      if (!ours) {
        other.push(key);
        continue;
      }
      if (out.has(ours)) throw new WeightsError(`${file}: ${key} and another key both give ${ours}`);
      const h = await reader.read(key);
      // F16/BF16/F64 are widened to float32 by the reader; an integer tensor is no weight (it loaded as numbers).
      if (h.dtype !== 'float32') throw new WeightsError(`${file}: ${key} is ${reader.info(key).dtype}, an adapter weight must be a float type (F32, F16, BF16)`);
      checkFinite(file, key, h.data); // a NaN/Inf adapter loaded and trained on silently
      out.set(ours, h);
    }
    if (other.length) {
      throw new WeightsError(`${file}: ${other.length} tensors are neither LoRA weights of decoder linears nor lm_head / embed_tokens: ${other.slice(0, 6).join(', ')}${other.length > 6 ? ', ...' : ''}`);
    }
    return out;
  } finally {
    await reader.close();
  }
}

/** Assign a PEFT adapter's weights to `llm`'s adapters (every one, shape for shape); returns how many. */
export async function loadAdapterWeights(llm: LlamaForCausalLM, dir: string): Promise<number> {
  const source = await readAdapterWeights(dir);
  const target = new Map([...llm.namedWeights(LLM_PREFIX)].filter(([n]) => llm.isAdapterWeight(n, LLM_PREFIX)));
  const missing = [...target.keys()].filter((n) => !source.has(n));
  const unexpected = [...source.keys()].filter((n) => !target.has(n));
  const shape = [...target].filter(([n, v]) => source.has(n) && source.get(n)!.shape.join() !== v.shape.join()).map(([n, v]) => `${n}: adapter [${source.get(n)!.shape}], model [${v.shape}]`);
  const problems = [
    missing.length ? `missing ${missing.length}: ${missing.slice(0, 4).join(', ')}${missing.length > 4 ? ', ...' : ''}` : '',
    unexpected.length ? `unexpected ${unexpected.length}: ${unexpected.slice(0, 4).join(', ')}${unexpected.length > 4 ? ', ...' : ''}` : '',
    shape.length ? `shape mismatch: ${shape.slice(0, 4).join('; ')}` : '',
  ].filter(Boolean);
  if (problems.length) throw new WeightsError(`cannot load the adapter ${dir} into this LLM: ${problems.join('; ')}`);
  for (const [n, v] of target) {
    const h = source.get(n)!;
    tf.tidy(() => v.assign(tf.tensor(h.data, h.shape, 'float32')));
  }
  return target.size;
}

/** Write a PEFT adapter directory (plus any further files, e.g. the projectors): the files written, relative to `out`. */
export async function writePeftAdapter(
  out: string,
  o: { config: LoraConfig; baseModel: string | null; adapters: Map<string, LazyTensor | HostTensor>; metadata?: Record<string, string> },
): Promise<string[]> {
  const keyed = new Map([...o.adapters].map(([n, t]) => [peftKey(n), t] as const));
  await writeSafetensors(path.join(out, ADAPTER_WEIGHTS_FILE), keyed, { format: 'pt', ...o.metadata });
  await writeFile(path.join(out, ADAPTER_CONFIG_FILE), `${JSON.stringify(adapterConfigJson(o.config, o.baseModel), null, 2)}\n`);
  return [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE];
}

/**
 * Merge the adapters into `weights` (our names; lazily loaded): every adapted linear's `weight` becomes
 * W + scaling * B_member A, the lora_A / lora_B tensors are dropped. Each merged tensor is computed when loaded.
 */
export function mergeLora(weights: Map<string, LazyTensor>, config: LoraConfig): Map<string, LazyTensor> {
  const scaling = loraScaling(config);
  const out = new Map<string, LazyTensor>();
  const merges = new Map<string, { a: string; b: string; row: number; rows: number }>();
  for (const name of weights.keys()) {
    const m = /^(.*\.)([a-z_]+)\.lora_A\.weight$/.exec(name);
    if (!m) continue;
    const [, block, module] = m as unknown as [string, string, LoraTarget];
    const b = `${block}${module}.lora_B.weight`;
    if (!weights.has(b)) throw new Error(`merge: ${name} has no ${b}`);
    let row = 0;
    const members = loraMembers(module);
    const rowsTotal = weights.get(b)!.shape[0]!;
    for (const member of members) {
      const w = `${block}${member}.weight`;
      const base = weights.get(w);
      if (!base) throw new Error(`merge: the adapter ${block}${module} has no base weight ${w}`);
      merges.set(w, { a: name, b, row, rows: base.shape[0]! });
      row += base.shape[0]!;
    }
    if (row !== rowsTotal) throw new Error(`merge: ${b} has ${rowsTotal} rows, its base weights ${members.join(' + ')} have ${row}`);
  }
  for (const [name, t] of weights) {
    if (LlamaForCausalLM.isLoraWeight(name)) continue;
    const m = merges.get(name);
    if (!m) {
      out.set(name, t);
      continue;
    }
    out.set(name, {
      dtype: 'float32',
      shape: t.shape,
      load: async () => {
        const [w, a, b] = await Promise.all([t.load(), weights.get(m.a)!.load(), weights.get(m.b)!.load()]);
        const merged = tf.tidy(() => {
          const bm = tf.tensor2d(b.data as Float32Array, b.shape as [number, number]).slice([m.row, 0], [m.rows, -1]); // [out, r]
          const delta = tf.mul(tf.matMul(bm, tf.tensor2d(a.data as Float32Array, a.shape as [number, number])), scaling); // [out, in]
          return tf.add(tf.tensor2d(w.data as Float32Array, w.shape as [number, number]), delta);
        });
        const data = (await merged.data()) as Float32Array;
        merged.dispose();
        return { dtype: 'float32', shape: [...t.shape], data };
      },
    });
  }
  return out;
}

/**
 * The config to open a run with (chat, eval, export): when its `model.llm.lora.from` directory is gone (moved,
 * deleted, or relative to another working directory), the run's copy of that adapter's config (LORA_FROM_FILE,
 * written when the stage started) gives the LoRA keys and `from` is dropped: the step's checkpoint holds the trained
 * adapters, so nothing else was read from there. A run without the copy (or whose directory is there) is unchanged.
 */
export function runConfigForOpen(config: ExperimentConfig, runDir: string): ExperimentConfig {
  const lora = config.model.llm.lora;
  const copy = path.join(runDir, LORA_FROM_FILE);
  if (!lora?.from || existsSync(path.join(lora.from, ADAPTER_CONFIG_FILE)) || !existsSync(copy)) return config;
  const a = readAdapterConfigFile(copy);
  type Section = NonNullable<ExperimentConfig['model']['llm']['lora']>;
  const targets = (a.targets === 'all-linear' ? a.targets : [...a.targets]) as Section['targets'];
  const fromAdapter: Section = { r: a.r, alpha: a.alpha, dropout: a.dropout, targets, rslora: a.rslora, modules_to_save: a.modulesToSave ? [...a.modulesToSave] : undefined };
  // The run's own keys win, as resolveLoraConfig does (the training run checked that they agree with the adapter).
  const own = Object.fromEntries(Object.entries(lora).filter(([k, v]) => v !== undefined && k !== 'from'));
  return { ...config, model: { ...config.model, llm: { ...config.model.llm, lora: { ...fromAdapter, ...own, from: null } } } };
}

/** The LoRA config a run was trained with, null when it has no adapters. */
export function runLora(config: ExperimentConfig): LoraConfig | null {
  const section = config.model.llm.lora;
  if (!section) return null;
  return resolveLoraConfig(section, section.from ? readAdapterConfig(section.from) : null);
}

/**
 * The adapters to merge into a full-weight export (`--format xtuner|hf --merge`), or null. A LoRA run's
 * LLM weights exist only as base + adapters, so a full-weight export of one needs --merge (or --format peft);
 * --merge on a run without adapters is refused rather than ignored.
 */
export function exportMerge(config: ExperimentConfig, format: string, merge: boolean): LoraConfig | null {
  const lora = runLora(config);
  if (merge && !lora) throw new UsageError(`--merge: run '${config.name}' has no LoRA adapters (model.llm.lora is not set); export it without --merge`);
  if (lora && !merge && config.stage === 'finetune') {
    throw new UsageError(`run '${config.name}' trained LoRA adapters: export --format ${format} --merge (W + scaling * B A), or --format peft for the adapters alone`);
  }
  return merge ? lora : null;
}

/** A run checkpoint as the exporter sees it. */
export interface PeftRunInfo {
  runDir: string;
  stepDir: string;
  step: number;
  state: { stage: string; configHash: string };
  config: ExperimentConfig;
}

/** The MG-LLaVA modules written beside the adapter (the reference's key names). */
const MM_PREFIXES = ['fuse_module.', 'projector.', 'bbox_projector.', 'multi_level_linear.'];
export const PEFT_MM_FILE = 'mm_modules.safetensors';

/**
 * `mgllava export RUN --format peft`: the step's adapters as a PEFT directory (adapter_config.json +
 * adapter_model.safetensors), the projectors and fusion it trained beside them (mm_modules.safetensors), and
 * mgllava.json describing both.
 */
export async function exportPeft(r: PeftRunInfo, out: string): Promise<ExportResult> {
  const lora = runLora(r.config);
  if (!lora) throw new UsageError(`--format peft: run '${r.config.name}' has no LoRA adapters (model.llm.lora is not set); use --format xtuner or hf`);
  const llm = modelConfigFrom(r.config.model, readPretrainedConfigs(r.config.model)).llm;
  const config = { ...lora, targets: resolveLoraTargets(lora, llm.weightFormat ?? 'llama') };
  const file = path.join(r.stepDir, 'model.safetensors');
  const reader = await SafetensorsReader.open(file);
  try {
    const lazy = (n: string): LazyTensor => ({ dtype: 'float32', shape: reader.info(n).shape, load: () => reader.read(n) });
    const names = reader.keys().sort();
    const saved = new Set((lora.modulesToSave ?? []).map((m) => LLM_PREFIX + SAVED_MODULE_WEIGHT[m]));
    const adapters = new Map(names.filter((n) => LlamaForCausalLM.isLoraWeight(n) || saved.has(n)).map((n) => [n, lazy(n)]));
    const mm = new Map(names.filter((n) => MM_PREFIXES.some((p) => n.startsWith(p))).map((n) => [n, lazy(n)]));
    const skipped = names.filter((n) => !adapters.has(n) && !mm.has(n));
    if (adapters.size === 0) {
      throw new MgllavaError(`${file} holds no LoRA weights: step ${r.step} is a ${r.state.stage} checkpoint, which does not train the adapters`, 'run');
    }
    const meta = { source: 'mgllava', run: path.basename(r.runDir), step: String(r.step), config_hash: r.state.configHash };
    const files = await writePeftAdapter(out, { config, baseModel: r.config.model.llm.pretrained ?? null, adapters, metadata: meta });
    if (mm.size) {
      await writeSafetensors(path.join(out, PEFT_MM_FILE), mm, { format: 'pt', ...meta });
      files.push(PEFT_MM_FILE);
    }
    await writeFile(
      path.join(out, 'mgllava.json'),
      `${JSON.stringify(
        {
          format: 'mgllava-peft-export',
          version: 1,
          run: path.basename(r.runDir),
          step: r.step,
          stage: r.state.stage,
          config_hash: r.state.configHash,
          adapter: { files: [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE], tensors: adapters.size, scaling: loraScaling(config) },
          mm_modules: { file: mm.size ? PEFT_MM_FILE : null, keys: [...mm].map(([n, t]) => ({ name: n, shape: t.shape })) },
          load:
            "PEFT: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), '<this dir>'); mgllava: model.llm.lora.from: '<this dir>' " +
            '(the projectors: init.from a run, or load mm_modules.safetensors)',
        },
        null,
        2,
      )}\n`,
    );
    files.push('mgllava.json');
    return { format: 'peft', out, runDir: r.runDir, step: r.step, stage: r.state.stage, files, tensors: adapters.size, skipped };
  } finally {
    await reader.close();
  }
}
