/**
 * The pieces `mgllava demo` and `mgllava demo --ablation` are made of: the synthetic dataset (made once per
 * seed and options), the stage-0 encoder warm-up, pretrain -> finetune, eval, export, each as one call that
 * logs a line and returns a `StageRecord` for the summary table. Called in one process: the finetune is handed
 * the feature cache its pretrain filled (same images, same warm-up encoders), explicitly.
 *
 * Paths are relative to the working directory (the configs' are); the configs are the package's
 * `configs/tiny-shapes/`.
 */
import { existsSync } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../../config/load.js';
import { synthDataset, SYNTH_FILES } from '../../data/synth.js';
import { DEFAULT_ANNOTATE } from '../../data/synth/annotate.js';
import { DEFAULT_SCENE } from '../../data/synth/scene.js';
import { getTemplate } from '../../data/templates.js';
import { DataError } from '../../errors.js';
import { runEval, type EvalSummary } from '../../infer/eval.js';
import { exportRun, type ExportResult } from '../../io/export.js';
import { loadRunModel } from '../../model/factory.js';
import { runDirOf } from '../../run/layout.js';
import type { FeatureCache } from '../../train/feature-cache.js';
import { train, type TrainResult } from '../../train/trainer.js';
import { warmup, type WarmupResult } from '../../train/warmup.js';

/** The package root (src/recipes/tiny-shapes/ or dist/recipes/tiny-shapes/ is three levels below it). */
export const PACKAGE_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const CONFIGS = path.join(PACKAGE_ROOT, 'configs', 'tiny-shapes');

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

/** A config path as the user would type it (relative to the package). */
export const configName = (file: string) => path.relative(PACKAGE_ROOT, file);

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
    if (m.format !== 'mgllava-synth') throw new DataError(`${d.dir} holds a dataset that is not a synthetic one (${manifestFile}); move it away or pick another folder`);
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

const lastMean = (r: { losses: { loss: number; applied: boolean }[] }) => {
  const xs = r.losses.filter((l) => l.applied).slice(-10).map((l) => l.loss);
  return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN;
};

/** The run dir a config + sets resolves to. */
export function runDirFor(c: StageConfig): string {
  return path.resolve(runDirOf(loadConfig(c.file, c.sets).config));
}

/** Remove an earlier run of the same name (a fresh run), unless resuming. */
async function freshRunDir(label: string, c: StageConfig, log: Log, resume: boolean): Promise<void> {
  const runDir = runDirFor(c);
  if (!resume && existsSync(runDir)) {
    log.line(`[${label}] removing the previous run ${path.relative(process.cwd(), runDir)}`);
    await rm(runDir, { recursive: true, force: true });
  }
}

/**
 * A pretrain or finetune run (an earlier run of the same name is removed first, unless `resume`).
 * `featureCache`: the cache of the run before it (reused when its fingerprint matches); the result carries
 * this run's cache for the next one.
 */
export async function trainStage(
  stage: 'pretrain' | 'finetune',
  label: string,
  c: StageConfig,
  log: Log,
  o: { resume?: boolean; featureCache?: FeatureCache | null } = {},
): Promise<{ record: StageRecord; result: TrainResult }> {
  await freshRunDir(label, c, log, o.resume === true);
  log.line(`[${label}] mgllava ${stage} --config ${configName(c.file)}${c.sets.map((s) => ` --set ${s}`).join('')}${o.resume ? ' --resume auto' : ''}`);
  const t0 = performance.now();
  const result = await train({ configFile: c.file, sets: c.sets, stage, resume: o.resume ? 'auto' : null, progress: 'lines', out: log.stream, err: log.stream, featureCache: o.featureCache });
  const record: StageRecord = { stage: label, seconds: secondsSince(t0), loss: lastMean(result), steps: result.step, note: path.relative(process.cwd(), result.runDir) };
  log.line(`[${label}] done in ${record.seconds.toFixed(1)} s: ${result.step} steps, loss ${record.loss!.toFixed(4)} (mean of the last 10 steps)`);
  return { record, result };
}

/** Stage 0 (`mgllava warmup`): the encoder warm-up (an earlier run of the same name is removed first, unless `resume`). */
export async function warmupStage(c: StageConfig, log: Log, o: { resume?: boolean } = {}): Promise<{ record: StageRecord; result: WarmupResult }> {
  await freshRunDir('warmup', c, log, o.resume === true);
  log.line(`[warmup] mgllava warmup --config ${configName(c.file)}${c.sets.map((s) => ` --set ${s}`).join('')}`);
  const t0 = performance.now();
  const result = await warmup({ configFile: c.file, sets: c.sets, resume: o.resume ? 'auto' : null, progress: 'lines', out: log.stream, err: log.stream });
  const record: StageRecord = { stage: 'warmup', seconds: secondsSince(t0), loss: lastMean(result), steps: result.step, note: path.relative(process.cwd(), result.runDir) };
  log.line(`[warmup] done in ${record.seconds.toFixed(1)} s: ${result.step} steps, loss ${record.loss!.toFixed(4)}`);
  return { record, result };
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

// ---------------------------------------------------------------------------------------------- run size

/** How big a demo or ablation run is; null: the config's own value. */
export interface RunSize {
  smoke: boolean;
  trainImages: number;
  evalImages: number;
  warmupSteps: number | null;
  pretrainSteps: number | null;
  finetuneSteps: number | null;
  batchSize: number | null;
  evalLimit: number | null;
}

/** The size options as given (undefined: not given). */
export type RunSizeOptions = { smoke?: boolean } & { [K in Exclude<keyof RunSize, 'smoke'>]?: number };

/** The study's recipe, or with `smoke` a handful of images and steps; explicit options win either way. */
export function runSize(o: RunSizeOptions): RunSize {
  const smoke = o.smoke === true;
  return {
    smoke,
    trainImages: o.trainImages ?? (smoke ? 12 : 3000),
    evalImages: o.evalImages ?? (smoke ? 4 : 400),
    warmupSteps: o.warmupSteps ?? (smoke ? 2 : null),
    pretrainSteps: o.pretrainSteps ?? (smoke ? 2 : null),
    finetuneSteps: o.finetuneSteps ?? (smoke ? 3 : null),
    batchSize: o.batchSize ?? (smoke ? 4 : null),
    evalLimit: o.evalLimit ?? null,
  };
}

/** The --set overrides a run size adds to a stage. */
export function sizeSets(size: RunSize, steps: number | null): string[] {
  return [
    ...(steps !== null ? [`train.max_steps=${steps}`] : []),
    ...(size.batchSize !== null ? [`train.batch_size=${size.batchSize}`] : []),
    ...(size.smoke ? ['train.save_steps=1000', 'train.log_steps=1'] : []),
  ];
}
