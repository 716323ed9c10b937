/**
 * The pieces `npm run demo` and `npm run demo:ablation` are made of: the synthetic dataset (made once per
 * seed and options), the stage-0 encoder warm-up, pretrain -> finetune (with a bounded "train on" when the
 * small-object questions are still at chance), eval, export. Library functions, called in one process: the
 * finetune reuses the frozen features the pretrain cached (same images, same warm-up encoders).
 *
 * Everything is relative to the working directory (the configs' paths are), configs are found next to
 * this script. Progress goes to `log` (one line per stage + the trainer's plain lines).
 */
import { existsSync } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../src/config/load.js';
import { synthDataset, SYNTH_FILES } from '../src/data/synth.js';
import { DEFAULT_ANNOTATE } from '../src/data/synth/annotate.js';
import { DEFAULT_SCENE } from '../src/data/synth/scene.js';
import { getTemplate } from '../src/data/templates.js';
import { exportRun, type ExportResult } from '../src/io/export.js';
import { runEval, type EvalSummary } from '../src/infer/eval.js';
import { loadRunModel } from '../src/model/factory.js';
import { runDirOf } from '../src/run/layout.js';
import { train, type TrainResult } from '../src/train/trainer.js';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const CONFIGS = path.join(REPO, 'configs', 'tiny-shapes');

/** Small-object colour questions below this accuracy count as "not learned" (chance is 1/6). */
export const SMALL_LEARNED = 0.5;
export const SMALL_CATEGORY = 'small_color';

export interface Log {
  line(s: string): void;
  stream: NodeJS.WriteStream;
}

export interface StageRecord {
  stage: string;
  seconds: number;
  /** Mean loss of the last 10 steps (training stages). */
  loss?: number;
  steps?: number;
  note: string;
}

/** A config path as the user would type it (relative to the repository). */
export const configName = (file: string) => path.relative(REPO, file);

export const secondsSince = (t0: number) => (performance.now() - t0) / 1000;
export const pct = (x: number) => `${(100 * x).toFixed(1)} %`;

// ---------------------------------------------------------------------------------------------- dataset

export interface DataSpec {
  dir: string;
  seed: number;
  train: number;
  eval: number;
  /** Longest canvas side (the synth default, 200). */
  size?: number;
}

/** What `data synth` records in dataset.json for these options (compared to reuse a folder). */
function expectedManifest(d: DataSpec): object {
  const size = d.size ?? 200;
  return {
    format: 'mgllava-synth',
    seed: d.seed,
    train_images: d.train,
    eval_images: d.eval,
    scene: { ...DEFAULT_SCENE, minSide: Math.round(0.6 * size), maxSide: size },
    boxes: { jitter: DEFAULT_ANNOTATE.jitter, extras: DEFAULT_ANNOTATE.extras },
  };
}

/** `data synth` into d.dir, unless it already holds the same dataset (same seed and options, every file). */
export async function ensureDataset(d: DataSpec, log: Log): Promise<StageRecord> {
  const t0 = performance.now();
  const manifestFile = path.join(d.dir, 'dataset.json');
  const want = expectedManifest(d);
  let overwrite = false; // a folder without dataset.json is not ours: synthDataset refuses it if it is not empty
  if (existsSync(manifestFile)) {
    const m = JSON.parse(await readFile(manifestFile, 'utf8')) as Record<string, unknown>;
    if (m.format !== 'mgllava-synth') throw new Error(`${d.dir} holds a dataset that is not a synthetic one (${manifestFile}); move it away or pick another folder`);
    const have = Object.fromEntries(Object.keys(want).map((k) => [k, k === 'boxes' ? { jitter: (m.boxes as { jitter?: number })?.jitter, extras: (m.boxes as { extras?: number[] })?.extras } : m[k]]));
    const complete = SYNTH_FILES.every((f) => existsSync(path.join(d.dir, f)));
    if (complete && JSON.stringify(have) === JSON.stringify(want)) {
      const note = `${d.dir}: reused (seed ${d.seed}, ${d.train} train + ${d.eval} eval images)`;
      log.line(`[data] ${note}`);
      return { stage: 'data', seconds: secondsSince(t0), note };
    }
    overwrite = true;
    log.line(`[data] ${d.dir} was made with other options or is incomplete: regenerating`);
  }
  log.line(`[data] data synth --out ${d.dir} --seed ${d.seed} --train ${d.train} --eval ${d.eval}`);
  const s = await synthDataset({ out: d.dir, seed: d.seed, train: d.train, eval: d.eval, size: d.size, overwrite });
  const note = `${d.dir}: ${s.images.train} train + ${s.images.eval} eval images, ${s.records.pretrain}/${s.records.finetune}/${s.records.eval} pretrain/finetune/eval records`;
  log.line(`[data] ${note} (${s.seconds.toFixed(1)} s)`);
  return { stage: 'data', seconds: secondsSince(t0), note };
}

// ---------------------------------------------------------------------------------------------- training

export interface StageConfig {
  file: string;
  sets: string[];
}

const lastMean = (r: TrainResult) => {
  const xs = r.losses.filter((l) => l.applied).slice(-10).map((l) => l.loss);
  return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN;
};

/** The run dir a config + sets resolves to. */
export function runDirFor(c: StageConfig): string {
  return path.resolve(runDirOf(loadConfig(c.file, c.sets).config));
}

/** A fresh run (an earlier run of the same name is removed first, unless `resume`). */
export async function trainStage(stage: 'pretrain' | 'finetune', label: string, c: StageConfig, log: Log, o: { resume?: boolean } = {}): Promise<{ record: StageRecord; result: TrainResult }> {
  const runDir = runDirFor(c);
  if (!o.resume && existsSync(runDir)) {
    log.line(`[${label}] removing the previous run ${path.relative(process.cwd(), runDir)}`);
    await rm(runDir, { recursive: true, force: true });
  }
  log.line(`[${label}] mgllava ${stage} --config ${configName(c.file)}${c.sets.map((s) => ` --set ${s}`).join('')}${o.resume ? ' --resume auto' : ''}`);
  const t0 = performance.now();
  const result = await train({ configFile: c.file, sets: c.sets, stage, resume: o.resume ? 'auto' : null, progress: 'lines', out: log.stream, err: log.stream });
  const record: StageRecord = { stage: label, seconds: secondsSince(t0), loss: lastMean(result), steps: result.step, note: path.relative(process.cwd(), result.runDir) };
  log.line(`[${label}] done in ${record.seconds.toFixed(1)} s: ${result.step} steps, loss ${record.loss!.toFixed(4)} (mean of the last 10 steps)`);
  return { record, result };
}

// ---------------------------------------------------------------------------------------------- warm-up

/**
 * Stage 0 through its library entry (src/train/warmup.ts, `mgllava warmup`), when it exists. Returns null
 * when the warm-up stage is not available in this checkout (the caller then trains on random frozen encoders).
 */
export async function warmupStage(c: StageConfig, log: Log, o: { resume?: boolean } = {}): Promise<{ record: StageRecord; runDir: string } | null> {
  const modFile = path.join(REPO, 'src', 'train', 'warmup.ts');
  if (!existsSync(c.file) || !existsSync(modFile)) {
    log.line(`[warmup] NOT AVAILABLE (${existsSync(c.file) ? modFile : c.file} missing): the encoders stay random; DEMO-STUDY.md says accuracy will plateau far below the targets`);
    return null;
  }
  const mod = (await import(modFile)) as {
    warmup?: (o: { configFile: string; sets?: string[]; resume?: string | null; progress?: string; out?: NodeJS.WriteStream; err?: NodeJS.WriteStream }) => Promise<TrainResult>;
  };
  if (typeof mod.warmup !== 'function') {
    log.line(`[warmup] NOT AVAILABLE (${modFile} exports no warmup()): the encoders stay random`);
    return null;
  }
  const runDir = runDirFor(c);
  if (!o.resume && existsSync(runDir)) {
    log.line(`[warmup] removing the previous run ${path.relative(process.cwd(), runDir)}`);
    await rm(runDir, { recursive: true, force: true });
  }
  log.line(`[warmup] mgllava warmup --config ${configName(c.file)}${c.sets.map((s) => ` --set ${s}`).join('')}`);
  const t0 = performance.now();
  const result = await mod.warmup({ configFile: c.file, sets: c.sets, resume: o.resume ? 'auto' : null, progress: 'lines', out: log.stream, err: log.stream });
  const record: StageRecord = { stage: 'warmup', seconds: secondsSince(t0), loss: lastMean(result), steps: result.step, note: path.relative(process.cwd(), result.runDir) };
  log.line(`[warmup] done in ${record.seconds.toFixed(1)} s: ${result.step} steps, loss ${record.loss!.toFixed(4)}`);
  return { record, runDir: result.runDir };
}

// ---------------------------------------------------------------------------------------------- eval, export

export interface EvalSet {
  label: string;
  /** A `data synth` folder: eval.json, images/, boxes.json. */
  dir: string;
  limit?: number;
}

export async function evaluate(runDir: string, set: EvalSet, log: Log, batchSize = 32): Promise<{ record: StageRecord; summary: EvalSummary }> {
  const t0 = performance.now();
  const run = await loadRunModel(runDir);
  try {
    const summary = await runEval({
      model: run.model,
      tokenizer: run.tokenizer,
      template: getTemplate(run.config.data.template),
      records: path.join(set.dir, 'eval.json'),
      images: path.join(set.dir, 'images'),
      boxes: path.join(set.dir, 'boxes.json'),
      out: path.join(runDir, `predictions-${set.label}.jsonl`),
      batchSize,
      limit: set.limit,
      maxNewTokens: 8,
    });
    const by = Object.entries(summary.byCategory).map(([k, c]) => `${k} ${pct(c.accuracy)}`).join(', ');
    log.line(`[eval ${set.label}] ${pct(summary.accuracy)} of ${summary.count} questions (${by}) on ${set.dir} (${summary.seconds.toFixed(1)} s)`);
    const note = `${pct(summary.accuracy)} of ${summary.count} questions (${set.dir})`;
    return { record: { stage: `eval ${set.label}`, seconds: secondsSince(t0), note }, summary };
  } finally {
    run.model.dispose();
  }
}

export async function exportStage(runDir: string, out: string, log: Log): Promise<{ record: StageRecord; result: ExportResult }> {
  const t0 = performance.now();
  const result = await exportRun(runDir, { format: 'xtuner', out, overwrite: true });
  const note = `${out}: ${result.files.join(', ')} (${result.tensors} tensors, step ${result.step})`;
  log.line(`[export] ${note}`);
  return { record: { stage: 'export', seconds: secondsSince(t0), note }, result };
}

export function smallAccuracy(s: EvalSummary): number | null {
  return s.byCategory[SMALL_CATEGORY]?.accuracy ?? null;
}

// ---------------------------------------------------------------------------------------------- arguments

/** The options both demo scripts take: where to run, and the run size (defaults: the study's recipe). */
export const COMMON_OPTIONS = {
  workdir: 'string',
  resume: 'flag',
  smoke: 'flag',
  backend: 'string',
  'train-images': 'number',
  'eval-images': 'number',
  'warmup-steps': 'number',
  'pretrain-steps': 'number',
  'finetune-steps': 'number',
  'batch-size': 'number',
  'eval-limit': 'number',
} as const;

export interface RunSize {
  smoke: boolean;
  trainImages: number;
  evalImages: number;
  /** null: the config's own value. */
  warmupSteps: number | null;
  pretrainSteps: number | null;
  finetuneSteps: number | null;
  batchSize: number | null;
  evalLimit: number | null;
}

/** A number option, or its default (`--smoke` picks the few-step defaults). */
export function numberArg(args: Record<string, string | number | boolean>, key: string, dflt: number | null): number | null {
  return typeof args[key] === 'number' ? (args[key] as number) : dflt;
}

/** The run size from COMMON_OPTIONS: the study's recipe, or a handful of images and steps with --smoke. */
export function runSize(args: Record<string, string | number | boolean>): RunSize {
  const smoke = args.smoke === true;
  const num = (k: string, dflt: number | null) => numberArg(args, k, dflt);
  return {
    smoke,
    trainImages: num('train-images', smoke ? 12 : 3000)!,
    evalImages: num('eval-images', smoke ? 4 : 400)!,
    warmupSteps: num('warmup-steps', smoke ? 2 : null),
    pretrainSteps: num('pretrain-steps', smoke ? 2 : null),
    finetuneSteps: num('finetune-steps', smoke ? 3 : null),
    batchSize: num('batch-size', smoke ? 4 : null),
    evalLimit: num('eval-limit', null),
  };
}

/** `--name value` / `--flag` arguments (the scripts take a handful; no parser dependency needed). */
export function parseArgs(argv: string[], spec: Record<string, 'flag' | 'number' | 'string'>): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') continue;
    const m = /^--([\w-]+)(?:=(.*))?$/.exec(a);
    const kind = m ? spec[m[1]!] : undefined;
    if (!m || !kind) throw new Error(`unknown argument ${a}; known: ${Object.keys(spec).map((k) => `--${k}`).join(' ')}`);
    if (kind === 'flag') {
      out[m[1]!] = true;
      continue;
    }
    const raw = m[2] ?? argv[++i];
    if (raw === undefined) throw new Error(`--${m[1]} needs a value`);
    if (kind === 'number') {
      const v = Number(raw);
      if (!Number.isFinite(v)) throw new Error(`--${m[1]} must be a number, got ${raw}`);
      out[m[1]!] = v;
    } else out[m[1]!] = raw;
  }
  return out;
}
