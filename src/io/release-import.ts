/**
 * A released MG-LLaVA checkpoint as a run directory (`mgllava import --kind mgllava`): an xtuner/mmengine `.pth`
 * ({meta, state_dict, message_hub}), a DeepSpeed checkpoint directory, or a safetensors file (ours or converted),
 * plus the experiment config it belongs to, become a run that chat, eval, export and `init.from` use exactly as if
 * mgllava had trained it.
 *
 * Names: the release's keys are our checkpoint names (the xtuner export writes them unchanged, src/io/export.ts);
 * `llm.*` keys that are not (Phi-3's fused qkv_proj / gate_up_proj) go through the LLM name map of
 * src/io/weight-maps.ts, as on import from Hugging Face. Every key is mapped or reported. Names and shapes are checked
 * from the headers before any data is read; half-precision tensors are widened to float32 one at a time.
 *
 * The model starts as a fresh run of the config would (src/model/factory.ts buildModel: the config's init,
 * `pretrained` dirs, init.encoders_from, init.from), the release's weights replace its trainable ones (a missing
 * trainable weight is an error unless allowed) and any frozen non-pretrained ones it carries; then the run is written
 * with the run layout's own functions: config.yaml (src/run/open.ts), base.safetensors, and one complete step
 * (src/run/checkpoint.ts) numbered by the release's iteration. It has no optimizer moments: it is a starting point
 * (chat, eval, export, init.from), not a run to --resume.
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { configHash, loadConfig } from '../config/load.js';
import type { ExperimentConfig } from '../config/schema.js';
import { UsageError, WeightsError } from '../errors.js';
import { baseWeightNames, buildModel, modelConfigOf, trainableSet } from '../model/factory.js';
import { saveCheckpoint } from '../run/checkpoint.js';
import { BASE_FILE, type TrainState } from '../run/layout.js';
import { openRunDir } from '../run/open.js';
import { PyObject } from './pickle.js';
import { ShardedReader, type HostTensor, type TensorReader } from './safetensors.js';
import { resolveTorchInput, TorchStateReader } from './torch-reader.js';
import { writeWeightsFile } from './weights-io.js';
import { llmWeightMap, PART_PREFIX } from './weight-maps.js';

export interface ReleaseImportOptions {
  /** The released checkpoint: .pth/.pt/.bin, a DeepSpeed directory, a .safetensors file (or index / directory). */
  from: string;
  /** The experiment config the release belongs to (architecture, pretrained dirs, tokenizer, stage). */
  config: string;
  sets?: readonly string[];
  /** The run directory to write (must not exist or be empty). */
  out: string;
  /** Where the state dict is inside a pickle (default: found). */
  key?: string | null;
  /** Start trainable weights the release lacks from the config's init instead of failing. */
  allowMissing?: boolean;
  log?: (message: string) => void;
}

export interface ReleaseImportReport {
  runDir: string;
  stepDir: string;
  step: number;
  stage: string;
  source: string;
  /** Where the state dict was in the saved object (null: the object itself, or a safetensors file). */
  key: string | null;
  /** Release tensors now trainable weights of the run (step model.safetensors), and frozen ones (base.safetensors). */
  trained: number;
  frozen: number;
  /** Trainable weights the release lacks (only with allowMissing): they keep the config's init. */
  missing: string[];
  /** Release keys that are no weight of this model, with why. */
  unmapped: { name: string; why: string }[];
  /** Release tensors for weights this config takes from a `pretrained` dir without training them: not imported. */
  notImported: string[];
}

/** A plan entry: a release tensor and the model weights it becomes. */
interface Mapped {
  source: string;
  targets: { name: string; shape: number[] }[];
  /** Fused Phi-3 tensors are split by the LLM map; everything else is used as is. */
  viaLlmMap: boolean;
}

const isSafetensors = (p: string): boolean => {
  if (p.endsWith('.safetensors') || p.endsWith('.safetensors.index.json')) return true;
  if (!existsSync(p) || !statSync(p).isDirectory()) return false;
  return readdirSync(p).some((f) => f.endsWith('.safetensors') || f.endsWith('.safetensors.index.json'));
};

async function openRelease(from: string, key: string | null | undefined): Promise<{ reader: TensorReader; source: string; key: string | null; iter: number | null }> {
  if (!existsSync(from)) throw new UsageError(`--from ${from}: no such file or directory`);
  if (isSafetensors(from)) {
    // A safetensors file is a flat name -> tensor table: a --key was ignored and the import went on silently.
    if (key) throw new UsageError(`--key ${key}: ${from} is safetensors, whose tensors are not nested under keys; leave --key out`);
    const reader = await ShardedReader.open(from);
    const meta = reader.metadata();
    const iter = Number(meta.iter ?? meta.step);
    return { reader, source: reader.source, key: null, iter: Number.isSafeInteger(iter) && iter >= 0 ? iter : null };
  }
  const reader = await TorchStateReader.open(resolveTorchInput(from), { key });
  if (reader.keys().length === 0) {
    // (--key meta: every trainable weight was reported missing, as if the checkpoint were of another model)
    await reader.close();
    throw new WeightsError(`${reader.source}: the state dict${reader.stateKey ? ` under '${reader.stateKey}'` : ''} holds no tensors (${reader.skipped.length} other entries)`, { hint: key ? 'check --key' : undefined });
  }
  return { reader, source: reader.source, key: reader.stateKey, iter: savedIteration(reader.savedObject()) };
}

/** The training iteration a checkpoint records: mmengine meta.iter, DeepSpeed global_steps, or a top-level iter/step. */
function savedIteration(root: unknown): number | null {
  const get = (o: unknown, k: string): unknown => (o instanceof Map ? o.get(k) : o instanceof PyObject ? o.items.get(k) : undefined);
  for (const v of [get(get(root, 'meta'), 'iter'), get(root, 'global_steps'), get(root, 'iter'), get(root, 'step')]) {
    if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 && v <= 99_999_999) return v;
  }
  return null;
}

/** Run directory of the import: the config renamed so that `<output_dir>/<name>` is `out`. */
function runConfig(config: ExperimentConfig, out: string): ExperimentConfig {
  return { ...config, name: path.basename(path.resolve(out)), output_dir: path.dirname(path.resolve(out)) };
}

export async function importRelease(o: ReleaseImportOptions): Promise<ReleaseImportReport> {
  const log = o.log ?? (() => {});
  const loaded = loadConfig(o.config, o.sets ?? []);
  if (loaded.config.stage === 'warmup') throw new UsageError(`${loaded.file}: a warm-up config trains throw-away heads; import a release with its pretrain or finetune config`);
  if (existsSync(o.out) && (!statSync(o.out).isDirectory() || readdirSync(o.out).length > 0)) {
    throw new UsageError(`--out ${o.out} exists and is not an empty directory`, { hint: 'name a new run directory' });
  }
  const config = runConfig(loaded.config, o.out);
  const release = await openRelease(o.from, o.key);
  let model: Awaited<ReturnType<typeof buildModel>> | null = null;
  try {
    const llmMap = llmWeightMap((await modelConfigOf(config)).llm);
    // The model a fresh run of this config starts from: its init, pretrained dirs, init.encoders_from / init.from.
    model = await buildModel(config, { log });
    const weights = model.weightMap();
    const trainable = trainableSet(model, config);
    const base = new Set(baseWeightNames(model, config));

    // Plan every release key (headers only).
    const unmapped: { name: string; why: string }[] = [];
    const plan: Mapped[] = [];
    for (const source of release.reader.keys()) {
      const shape = release.reader.info(source).shape;
      if (weights.has(source)) {
        plan.push({ source, targets: [{ name: source, shape }], viaLlmMap: false });
        continue;
      }
      const p = source.startsWith(PART_PREFIX.llm) ? llmMap.plan(source.slice(PART_PREFIX.llm.length), shape) : { action: 'unknown' as const };
      if (p.action === 'map' && p.targets.every((t) => weights.has(PART_PREFIX.llm + t.name))) {
        plan.push({ source, targets: p.targets.map((t) => ({ name: PART_PREFIX.llm + t.name, shape: t.shape })), viaLlmMap: true });
      } else {
        unmapped.push({ name: source, why: p.action === 'ignore' ? p.reason : 'not a weight of this model' });
      }
    }

    // Shapes, duplicates and completeness before any data is read.
    const provided = new Map<string, string>();
    const mismatched: string[] = [];
    for (const m of plan) {
      for (const t of m.targets) {
        const want = weights.get(t.name)!.shape;
        if (want.length !== t.shape.length || want.some((d, i) => d !== t.shape[i])) mismatched.push(`${t.name}: release has [${t.shape}], the config's model [${want}]`);
        const prev = provided.get(t.name);
        if (prev) throw new WeightsError(`${release.source}: ${t.name} would come from both ${prev} and ${m.source}`);
        provided.set(t.name, m.source);
      }
    }
    if (mismatched.length) {
      throw new WeightsError(`${release.source}: ${mismatched.length} tensors do not fit ${loaded.file}: ${mismatched.slice(0, 6).join('; ')}${mismatched.length > 6 ? '; ...' : ''}`, {
        hint: 'is this the config the checkpoint was trained with (LLM size, fusion variant, projector depth)?',
      });
    }
    const missing = [...trainable.keys()].filter((n) => !provided.has(n));
    if (missing.length && !o.allowMissing) {
      throw new WeightsError(
        `${release.source}: ${missing.length} trainable weights of a ${config.stage} run are not in the checkpoint: ${missing.slice(0, 8).join(', ')}${missing.length > 8 ? ', ...' : ''}`,
        { hint: '--allow-missing starts them from the config\'s init (check the config: stage, fusion, objects)' },
      );
    }
    const notImported = [...provided.keys()].filter((n) => !trainable.has(n) && !base.has(n));

    // Data: one release tensor at a time, widened to float32.
    let trained = 0;
    let frozen = 0;
    for (const m of plan) {
      const used = m.targets.filter((t) => trainable.has(t.name) || base.has(t.name));
      if (used.length === 0) continue;
      const h = await release.reader.read(m.source);
      const parts: [string, HostTensor][] = m.viaLlmMap ? llmMap.convert(m.source.slice(PART_PREFIX.llm.length), h) : [[m.source, h]];
      for (const [name, t] of parts) {
        if (!trainable.has(name) && !base.has(name)) continue;
        const data = t.data instanceof Float32Array ? t.data : Float32Array.from(t.data);
        tf.tidy(() => weights.get(name)!.assign(tf.tensor(data, t.shape, 'float32')));
        if (trainable.has(name)) trained++;
        else frozen++;
      }
    }

    // The run directory, through the run layout's own writers.
    const step = release.iter ?? 0;
    const hash = configHash(config);
    const runDir = path.resolve(o.out);
    await openRunDir(runDir, config, null, { note: log, warn: log });
    await writeWeightsFile(path.join(runDir, BASE_FILE), new Map([...base].map((n) => [n, weights.get(n)!])), { config_hash: hash, imported_from: path.basename(release.source) });
    const state: TrainState = {
      format: 1,
      step,
      totalSteps: step,
      stage: config.stage as TrainState['stage'],
      configHash: hash,
      seeds: { init: config.seed, data: config.seed },
      loader: { epoch: 0, position: 0, size: 0 },
      optimizerStep: 0,
      badStreak: 0,
      metricsLines: 0,
      elapsedSeconds: 0,
      initFrom: null,
      encodersFrom: null,
      time: new Date().toISOString(),
    };
    const saved = await saveCheckpoint({ runDir, state, trainable, optimizer: { step: 0, stateTensors: () => new Map() }, keep: 1 });
    return {
      runDir,
      stepDir: saved.dir,
      step,
      stage: config.stage,
      source: release.source,
      key: release.key,
      trained,
      frozen,
      missing,
      unmapped,
      notImported,
    };
  } finally {
    model?.dispose();
    await release.reader.close();
  }
}
