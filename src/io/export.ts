/**
 * Export a training run (a checkpoint of its run directory, see src/train/run-dir.ts) to:
 *
 *  - `xtuner`: the state dict the PyTorch MG-LLaVA / XTuner code loads as `pretrained_pth`: the keys its
 *    `state_dict()` override saves (every key containing `projector.` or `fuse_module.`, `multi_level_linear.*`,
 *    and `llm.*` when the LLM was trained), PyTorch layouts (ours already are). Written as `model.safetensors`
 *    and as an mmengine-style `model.pth` (`{'state_dict': ..., 'meta': ...}`, torch zip format).
 *  - `hf`: the LLM as a Hugging Face LLaMA (or Phi-3) directory: sharded safetensors + index, config.json and
 *    generation_config.json (BOS/EOS/pad ids: EOS includes the template's end-of-answer token, see
 *    hf-generation.ts), the tokenizer files when the run used an HF tokenizer; plus `mm_modules.safetensors` (fuse_module,
 *    projector, bbox_projector, multi_level_linear) and `mgllava.json` / README.md describing them.
 *
 * Nothing is built in tfjs: tensors stream from the run's files (the step's model.safetensors, then the run's
 * base.safetensors, then the LLM's pretrained dir; the first that has a name wins, as when the run's model is
 * recovered) to the output one at a time, so a full-size run exports on a small machine.
 */
import { copyFile, readdir, realpath, rm, stat, writeFile } from 'node:fs/promises';
import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { modelConfigFrom } from '../config/build-model.js';
import { dumpConfig } from '../config/load.js';
import type { ExperimentConfig } from '../config/schema.js';
import type { LlamaConfig } from '../model/llm/config.js';
import { toHfConfig } from '../model/llm/config.js';
import { BASE_FILE, MODEL_FILE, readRunConfig, readState, withCheckpoint, type ResolvedCheckpoint, type TrainState } from '../run/layout.js';
import { SafetensorsReader, writeSafetensors, writeShardedSafetensors, type HostTensor, type LazyTensor } from './safetensors.js';
import { convertedReader, openPretrained, plannedTargets, readPretrainedConfigs, unknownSources, type PretrainedSource } from './pretrained.js';
import { writeTorchPth } from './torch-pth.js';
import { exportMerge, exportPeft, mergeLora, runConfigForOpen } from './peft.js';
import { LlamaForCausalLM } from '../model/llm/llama.js';
import { llmHfPlan, llmHfTensor, PART_PREFIX } from './weight-maps.js';
import { hfConfigFields, hfGenerationConfig, hfGenerationIds, maxPositionsOf } from './hf-generation.js';
import { fsError, MgllavaError } from '../errors.js';
import { ensureDir } from '../run/guard.js';
import { checkFinite } from './weights-io.js';

export type ExportFormat = 'xtuner' | 'hf' | 'peft';

export class ExportError extends MgllavaError {
  constructor(message: string) {
    super(message, 'run');
    this.name = 'ExportError';
  }
}

/** HF's default shard cap ("2GB" = 2e9 bytes); one tensor larger than it gets a shard of its own. */
export const DEFAULT_MAX_SHARD_BYTES = 2_000_000_000;

/** Prefixes of the MG-LLaVA modules (everything trained besides the LLM). */
export const MM_MODULE_PREFIXES = ['fuse_module.', 'projector.', 'bbox_projector.', 'multi_level_linear.'] as const;

export const MM_MODULES_FILE = 'mm_modules.safetensors';
export const XTUNER_PTH_FILE = 'model.pth';
export const DESCRIPTION_FILE = 'mgllava.json';

/** Tokenizer files copied next to an HF export when they sit beside the run's tokenizer.json. */
const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'tokenizer.model', 'added_tokens.json'];

/**
 * The keys the reference's `state_dict()` override saves: every key containing 'projector.' (also catches
 * bbox_projector) or 'fuse_module.', multi_level_linear.* (that variant), and llm.* only when the LLM trains.
 */
export function isXtunerKey(name: string, llmTrained: boolean): boolean {
  return (
    name.includes('projector.') ||
    name.includes('fuse_module.') ||
    name.startsWith('multi_level_linear.') ||
    (llmTrained && name.startsWith(PART_PREFIX.llm))
  );
}

export interface ExportOptions {
  format: ExportFormat;
  out: string;
  step?: number;
  /** hf: shard cap in bytes (default 2e9). */
  maxShardBytes?: number;
  /** xtuner: also write model.pth (default true). */
  pth?: boolean;
  /** Write into a non-empty `out` (files of the same names are replaced). */
  overwrite?: boolean;
  /** xtuner / hf of a LoRA run: the LLM weights with the adapters merged, W + scaling * B A (src/io/peft.ts). */
  merge?: boolean;
}

export interface ExportResult {
  format: ExportFormat;
  out: string;
  runDir: string;
  step: number;
  stage: string;
  /** Files written, relative to `out`. */
  files: string[];
  /** Tensors in the main weights (xtuner: the state dict; hf: the LLM checkpoint). */
  tensors: number;
  /** Checkpoint names left out on purpose (xtuner: weights the reference checkpoint never carries). */
  skipped: string[];
}

/** One named source of tensors: a safetensors file, or a pretrained directory read through its rename table. */
interface Source {
  label: string;
  shapes: Map<string, number[]>;
  read(name: string): Promise<HostTensor>;
  close(): Promise<void>;
}

async function fileSource(file: string): Promise<Source> {
  const r = await SafetensorsReader.open(file);
  return {
    label: file,
    shapes: new Map(r.keys().map((k) => [k, r.info(k).shape])),
    read: async (name) => {
      const h = await r.read(name);
      if (h.dtype !== 'float32') throw new ExportError(`${file}: ${name} is ${h.dtype}, weights are float32`);
      checkFinite(file, name, h.data as Float32Array); // a NaN/Inf checkpoint is never exported
      return h;
    },
    close: () => r.close(),
  };
}

function pretrainedSource(src: PretrainedSource): Source {
  const unknown = unknownSources(src);
  if (unknown.length) throw new ExportError(`${src.file}: ${unknown.length} tensors are not ${src.map.label} weights: ${unknown.join(', ')}`);
  const read = convertedReader(src);
  return {
    label: src.dir,
    shapes: new Map([...plannedTargets(src)].map(([n, t]) => [n, t.shape])),
    read,
    close: () => src.reader.close(),
  };
}

/**
 * The run's weights by checkpoint name, from several sources in priority order (the first holding a name
 * provides it), read lazily.
 */
class RunWeights {
  private constructor(private readonly sources: Source[]) {}

  static async open(files: string[], extra: (() => Promise<Source>)[] = []): Promise<RunWeights> {
    const sources: Source[] = [];
    try {
      for (const f of files) if (existsSync(f)) sources.push(await fileSource(f));
      for (const make of extra) sources.push(await make());
    } catch (e) {
      await Promise.all(sources.map((s) => s.close()));
      throw e;
    }
    return new RunWeights(sources);
  }

  /** Names matching `keep`, sorted, each with its shape and the source providing it. */
  select(keep: (name: string) => boolean): Map<string, { shape: number[]; source: Source }> {
    const out = new Map<string, { shape: number[]; source: Source }>();
    for (const s of this.sources) for (const [n, shape] of s.shapes) if (keep(n) && !out.has(n)) out.set(n, { shape, source: s });
    return new Map([...out].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  }

  lazy(selection: Map<string, { shape: number[]; source: Source }>): Map<string, LazyTensor> {
    return new Map([...selection].map(([n, { shape, source }]) => [n, { dtype: 'float32', shape, load: () => source.read(n) }]));
  }

  async close(): Promise<void> {
    await Promise.all(this.sources.map((s) => s.close()));
  }
}

async function prepareOut(out: string, overwrite: boolean): Promise<void> {
  if (existsSync(out)) {
    if (!statSync(out).isDirectory()) throw new ExportError(`--out ${out} exists and is not a directory`);
    if (!overwrite && (await readdir(out)).length) throw new ExportError(`--out ${out} is not empty (pass --overwrite to replace the export files in it)`);
  }
  await ensureDir(out, '--out'); // below a file, through a dangling link, under /proc: one line, no spinning mkdir
}

/** The real path of `p` (links resolved), or of its deepest existing ancestor with the rest appended. */
async function realOrPlanned(p: string): Promise<string> {
  const abs = path.resolve(p);
  try {
    return await realpath(abs);
  } catch {
    const up = path.dirname(abs);
    return up === abs ? abs : path.join(await realOrPlanned(up), path.basename(abs));
  }
}

/**
 * Refuse an `out` that is, or lies inside, a folder the export reads: the run directory (a step dir with
 * --overwrite had its model.safetensors replaced by the export), a pretrained dir, lora.from, init.from.
 */
async function refuseOutInInputs(out: string, r: RunInfo): Promise<void> {
  const m = r.config.model;
  const inputs: [string | null | undefined, string][] = [
    [r.runDir, 'the run directory'],
    [m.llm.pretrained, 'model.llm.pretrained'],
    [m.llm.lora?.from, 'model.llm.lora.from'],
    [m.vision.pretrained, 'model.vision.pretrained'],
    [m.vision_aux?.pretrained, 'model.vision_aux.pretrained'],
    [r.config.init.from, 'init.from'],
  ];
  const target = await realOrPlanned(out);
  for (const [dir, what] of inputs) {
    if (!dir) continue;
    const rel = path.relative(await realOrPlanned(dir), target);
    if (rel === '' || (rel.split(path.sep)[0] !== '..' && !path.isAbsolute(rel))) {
      throw new ExportError(`--out ${out} is inside ${what} ${dir}: the export would write over what it reads; choose a folder outside it`);
    }
  }
}

/**
 * Run `write` into `out`, and when it fails part-way (a full disk, a corrupt tensor) remove what it wrote: the
 * entries that were not there before, and `out` itself if it did not exist.
 */
async function cleanOnFailure<T>(out: string, write: () => Promise<T>): Promise<T> {
  const existed = existsSync(out);
  const isDir = (p: string) => existsSync(p) && statSync(p).isDirectory(); // (an --out that is a file is refused by prepareOut)
  const before = new Set(isDir(out) ? await readdir(out) : []);
  try {
    return await write();
  } catch (e) {
    if (isDir(out)) {
      for (const n of await readdir(out)) if (!before.has(n)) await rm(path.join(out, n), { recursive: true, force: true }).catch(() => undefined);
      if (!existed) await rm(out, { recursive: true, force: true }).catch(() => undefined);
    }
    throw fsError(e, (e as NodeJS.ErrnoException).path ?? out, 'writing the export (what it wrote was removed)');
  }
}

interface RunInfo {
  runDir: string;
  stepDir: string;
  step: number;
  state: TrainState;
  config: ExperimentConfig;
}

async function runInfo(ck: ResolvedCheckpoint): Promise<RunInfo> {
  const state = await readState(ck.stepDir);
  const config = runConfigForOpen((await readRunConfig(ck.runDir)).config, ck.runDir);
  return { runDir: ck.runDir, stepDir: ck.stepDir, step: ck.step, state, config };
}

const json = (v: unknown) => `${JSON.stringify(v, null, 2)}\n`;

async function exportXtuner(r: RunInfo, o: ExportOptions): Promise<ExportResult> {
  const llmTrained = r.state.stage === 'finetune';
  const lora = exportMerge(r.config, 'xtuner', o.merge ?? false);
  // Only the step's trained weights: the reference never saves frozen ones. Merged LoRA: every LLM weight (base + adapters).
  const llmDir = r.config.model.llm.pretrained;
  const weights = lora
    ? await RunWeights.open([path.join(r.stepDir, MODEL_FILE), path.join(r.runDir, BASE_FILE)], llmDir ? [async () => pretrainedSource(await openPretrained(llmDir, 'llm', modelConfigFrom(r.config.model, readPretrainedConfigs(r.config.model)).llm))] : [])
    : await RunWeights.open([path.join(r.stepDir, MODEL_FILE)]);
  try {
    const all = weights.select((n) => !lora || !n.startsWith('visual_encoder'));
    const picked = weights.select((n) => isXtunerKey(n, llmTrained));
    const lazyChosen = lora ? mergeLora(weights.lazy(picked), lora) : weights.lazy(picked);
    const chosen = new Map([...lazyChosen].map(([n, t]) => [n, { shape: t.shape }]));
    const skipped = [...all.keys()].filter((n) => !chosen.has(n) && !(lora && LlamaForCausalLM.isLoraWeight(n)));
    if (chosen.size === 0) throw new ExportError(`${r.stepDir}/${MODEL_FILE} holds no fuse_module/projector/llm weights to export`);
    const files = [MODEL_FILE];
    const meta = { source: 'mgllava', run: path.basename(r.runDir), stage: r.state.stage, iter: r.step, seed: r.config.seed, config_hash: r.state.configHash };
    await writeSafetensors(path.join(o.out, MODEL_FILE), lazyChosen, { format: 'pt', ...Object.fromEntries(Object.entries(meta).map(([k, v]) => [k, String(v)])) });
    if (o.pth ?? true) {
      await writeTorchPth(path.join(o.out, XTUNER_PTH_FILE), lazyChosen, { meta });
      files.push(XTUNER_PTH_FILE);
    }
    await writeFile(
      path.join(o.out, DESCRIPTION_FILE),
      json({
        format: 'mgllava-xtuner-export',
        version: 1,
        ...meta,
        files,
        keys: [...chosen].map(([n, t]) => ({ name: n, shape: t.shape })),
        load: `XTuner/MG-LLaVA config: pretrained_pth = '<this dir>/${XTUNER_PTH_FILE}' (torch.load -> ['state_dict']; loaded with strict=False)`,
      }),
    );
    files.push(DESCRIPTION_FILE);
    return { format: 'xtuner', out: o.out, runDir: r.runDir, step: r.step, stage: r.state.stage, files, tensors: chosen.size, skipped };
  } finally {
    await weights.close();
  }
}

/** Copy the run's HF tokenizer files (the tokenizer.json and its usual companions) into `out`. */
async function copyTokenizer(config: ExperimentConfig, out: string): Promise<{ files: string[]; note: string }> {
  const tok = config.data.tokenizer;
  if (tok.type !== 'hf') {
    const what = tok.type === 'llama2' ? 'the bundled LLaMA-2 SentencePiece vocabulary (use the base model\'s tokenizer files)' : 'the toy byte tokenizer (no HF files)';
    return { files: [], note: `the run used ${what}; no tokenizer files copied` };
  }
  const file = statSync(tok.path).isDirectory() ? path.join(tok.path, 'tokenizer.json') : tok.path;
  const dir = path.dirname(file);
  const files: string[] = [];
  await copyFile(file, path.join(out, 'tokenizer.json'));
  files.push('tokenizer.json');
  for (const f of TOKENIZER_FILES.slice(1)) {
    if (existsSync(path.join(dir, f))) {
      await copyFile(path.join(dir, f), path.join(out, f));
      files.push(f);
    }
  }
  return { files, note: `copied from ${dir}` };
}

function hfReadme(r: RunInfo, llm: LlamaConfig, mm: string[], tokenizerNote: string): string {
  const arch = llm.weightFormat === 'phi3' ? 'Phi3ForCausalLM' : 'LlamaForCausalLM';
  const resolved = dumpConfig({ ...r.config, model: { ...r.config.model, llm: { ...r.config.model.llm, pretrained: '<this dir>' } } })
    .split('\n')
    .filter((l) => l.trim() !== '');
  return [
    `# MG-LLaVA export: ${path.basename(r.runDir)}, step ${r.step} (${r.state.stage})`,
    '',
    `- The LLM is a Hugging Face \`${arch}\` checkpoint (float32 safetensors + config.json): \`AutoModelForCausalLM.from_pretrained('<this dir>')\`.`,
    `- Tokenizer: ${tokenizerNote}.`,
    `- \`generation_config.json\`: greedy decoding that stops where the run's \`${r.config.data.template}\` template ends an answer (\`eos_token_id\`).`,
    `- \`${MM_MODULES_FILE}\` holds the MG-LLaVA modules under the reference's key names (${mm.length} tensors:`,
    `  ${[...new Set(mm.map((n) => n.split('.')[0]))].join(', ')}); \`${DESCRIPTION_FILE}\` lists them with shapes and the model config.`,
    '- The vision encoders are not included: they come from the `pretrained` directories (or the run\'s base.safetensors).',
    '',
    'To use it with mgllava, set `model.llm.pretrained` to this directory and load the modules from',
    `\`${MM_MODULES_FILE}\`. The run's resolved config, with \`model.llm.pretrained\` pointing here:`,
    '',
    '```yaml',
    ...resolved,
    '```',
    '',
  ].join('\n');
}

async function exportHf(r: RunInfo, o: ExportOptions): Promise<ExportResult> {
  const model = r.config.model;
  const modelConfig = modelConfigFrom(model, readPretrainedConfigs(model));
  const llm = modelConfig.llm;
  const generation = await hfGenerationIds(r.config);
  const llmDir = model.llm.pretrained;
  const weights = await RunWeights.open(
    [path.join(r.stepDir, MODEL_FILE), path.join(r.runDir, BASE_FILE)],
    llmDir ? [async () => pretrainedSource(await openPretrained(llmDir, 'llm', llm))] : [],
  );
  try {
    const lora = exportMerge(r.config, 'hf', o.merge ?? false);
    // Adapters go in merged (--merge) or not at all (a pretrain run's untrained ones).
    const llmSelected = weights.select((n) => n.startsWith(PART_PREFIX.llm) && (lora !== null || !LlamaForCausalLM.isLoraWeight(n)));
    const llmWeights = lora ? mergeLora(weights.lazy(llmSelected), lora) : weights.lazy(llmSelected); // merged: W + scaling * B A
    if (llmWeights.size === 0) throw new ExportError(`run ${r.runDir}: no llm.* weights in the step, ${BASE_FILE} or a pretrained dir`);
    const plan = llmHfPlan(
      [...llmWeights].map(([name, t]) => ({ name, shape: t.shape })),
      llm,
    );
    const hf = new Map<string, LazyTensor>();
    for (const p of plan) {
      hf.set(p.hfName, {
        dtype: 'float32',
        shape: p.shape,
        load: async () => {
          const src = new Map<string, HostTensor>();
          for (const s of p.sources) src.set(s, await llmWeights.get(s)!.load());
          return llmHfTensor(p, src, llm);
        },
      });
    }
    const sharded = await writeShardedSafetensors(o.out, hf, { maxShardBytes: o.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES, prefix: 'model' });
    const files = [...sharded.files, ...(sharded.index ? [sharded.index] : [])].map((f) => path.basename(f));
    const hfConfig = { ...toHfConfig(llm), ...hfConfigFields(generation, maxPositionsOf(r.config, modelConfig)), torch_dtype: 'float32' };
    await writeFile(path.join(o.out, 'config.json'), json(hfConfig));
    await writeFile(path.join(o.out, 'generation_config.json'), json(hfGenerationConfig(generation)));
    files.push('config.json', 'generation_config.json');
    const tokenizer = await copyTokenizer(r.config, o.out);
    files.push(...tokenizer.files);

    const mm = weights.select((n) => MM_MODULE_PREFIXES.some((p) => n.startsWith(p)));
    if (mm.size === 0) throw new ExportError(`run ${r.runDir}: no ${MM_MODULE_PREFIXES.join('/')} weights found`);
    await writeSafetensors(path.join(o.out, MM_MODULES_FILE), weights.lazy(mm), { format: 'pt', source: 'mgllava', step: String(r.step) });
    files.push(MM_MODULES_FILE);
    await writeFile(
      path.join(o.out, DESCRIPTION_FILE),
      json({
        format: 'mgllava-hf-export',
        version: 1,
        run: path.basename(r.runDir),
        step: r.step,
        stage: r.state.stage,
        config_hash: r.state.configHash,
        llm: { architecture: llm.weightFormat === 'phi3' ? 'Phi3ForCausalLM' : 'LlamaForCausalLM', files: files.filter((f) => f.startsWith('model')), tensors: plan.length },
        mm_modules: { file: MM_MODULES_FILE, keys: [...mm].map(([n, t]) => ({ name: n, shape: t.shape })) },
        tokenizer: tokenizer.note,
        generation: generation.notes,
        // The model section with the LLM now coming from this directory.
        model: { ...model, llm: { ...model.llm, pretrained: '.' } },
      }),
    );
    await writeFile(path.join(o.out, 'README.md'), hfReadme(r, llm, [...mm.keys()], tokenizer.note));
    files.push(DESCRIPTION_FILE, 'README.md');
    return { format: 'hf', out: o.out, runDir: r.runDir, step: r.step, stage: r.state.stage, files, tensors: plan.length, skipped: [] };
  } finally {
    await weights.close();
  }
}

/** Export checkpoint `o.step` (default: the newest complete one) of a run dir, or a step dir, to `o.out`. */
export async function exportRun(run: string, o: ExportOptions): Promise<ExportResult> {
  if (o.out === '') throw new ExportError('--out: empty path (name the export folder)');
  // A run still training may rotate the step away while it is read: withCheckpoint takes the newest again.
  return withCheckpoint(run, o.step, async (ck) => {
    const r = await runInfo(ck);
    await refuseOutInInputs(o.out, r);
    return cleanOnFailure(o.out, async () => {
      await prepareOut(o.out, o.overwrite ?? false);
      if (o.format === 'peft') return exportPeft(r, o.out);
      return o.format === 'xtuner' ? exportXtuner(r, o) : exportHf(r, o);
    });
  });
}

/** Total bytes of the files of a result (for the CLI summary). */
export async function exportSize(result: ExportResult): Promise<number> {
  let n = 0;
  for (const f of result.files) n += (await stat(path.join(result.out, f))).size;
  return n;
}
