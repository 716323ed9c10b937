/**
 * Config `data` + `train` sections -> tokenizer, checked dataset, sampler and a (resumable) loader.
 *
 * The dataset goes through the same checks as `mgllava data check` (a bad record stops the run unless
 * `data.skip_bad` names a report file). Image sizes come from the built model (a pretrained encoder may
 * define them). Without a high-resolution encoder the aux image is made at the low-res size (it still
 * carries the box coordinates).
 */
import path from 'node:path';
import { collate, type Batch, type Sample } from '../data/collate.js';
import { loadDataset, type MgDataset, type SampleOptions } from '../data/dataset.js';
import { imageOptionsOf } from '../data/image.js';
import { imageTokensOf } from '../data/token-budget.js';
import type { CheckReport } from '../data/check.js';
import { ImageWorkerPool } from '../data/image-pool.js';
import { DataLoader, type LoaderState } from '../data/loader.js';
import { LengthGroupedSampler, ShuffleSampler, type Sampler } from '../data/sampler.js';
import { getTemplate } from '../data/templates.js';
import { loadTokenizer, type TextTokenizer } from '../data/tokenizer.js';
import type { ExperimentConfig } from '../config/schema.js';
import { imageSizesOf, type MGLLaVAConfig } from '../model/mgllava.js';
import { DataError } from '../errors.js';
import { ConfigError } from '../config/load.js';

export class DataSetupError extends DataError {
  constructor(message: string) {
    super(message);
    this.name = 'DataSetupError';
  }
}

export interface TrainData {
  tokenizer: TextTokenizer;
  dataset: MgDataset;
  report: CheckReport;
  sampler: Sampler;
  /** Samples per micro-batch. */
  batchSize: number;
  /** Micro-batches per epoch. */
  batchesPerEpoch: number;
  sizes: { aux: number; lowres: number };
  /** How records become samples (the feature cache fingerprints exactly this). */
  sampleOptions: Omit<SampleOptions, 'prepare'>;
  /** A loader at the start, or at a saved cursor. */
  loader(resume?: LoaderState): DataLoader;
  /** Stop image workers. */
  close(): Promise<void>;
}

export interface BuildDataOptions {
  /** Override data.image_workers (tests use 0). */
  imageWorkers?: number;
}

/** The image folder: `data.images`, or the records file's folder when unset. */
export function imageFolder(config: ExperimentConfig): string {
  return config.data.images ?? path.dirname(config.data.records);
}

/** Where a dataset's records, boxes and images are: the training set (`data.*`) or the held-out set (`train.eval_*`). */
interface DataSource {
  records: string;
  boxes: string | null;
  images: string;
  /** Skip bad records writing them here (training only: a held-out set must be clean). */
  skipBad: string | null;
}

/**
 * The held-out set of `train.eval_records` (null when unset): `train.eval_boxes` (default `data.boxes`) and
 * `train.eval_images` (default `data.images`, else the eval records' folder).
 */
export function heldOutSource(config: ExperimentConfig): DataSource | null {
  const t = config.train;
  if (!t.eval_records) return null;
  return { records: t.eval_records, boxes: t.eval_boxes ?? config.data.boxes, images: t.eval_images ?? config.data.images ?? path.dirname(t.eval_records), skipBad: null };
}

export async function buildTrainData(config: ExperimentConfig, model: MGLLaVAConfig, o: BuildDataOptions = {}): Promise<TrainData> {
  const d = config.data;
  const t = config.train;
  let tokenizer: TextTokenizer;
  try {
    tokenizer = await loadTokenizer(d.tokenizer);
  } catch (e) {
    throw new DataSetupError(`data.tokenizer: cannot load ${JSON.stringify(d.tokenizer)}: ${(e as Error).message}`);
  }
  if (tokenizer.vocabSize > model.llm.vocabSize) {
    throw new DataSetupError(`tokenizer ${tokenizer.name} has ${tokenizer.vocabSize} ids but the LLM vocabulary (model.llm.vocab_size) has ${model.llm.vocabSize}`);
  }
  const { auxSize, lowresSize } = imageSizesOf(model);
  const sizes = { lowres: lowresSize, aux: auxSize };
  const workers = o.imageWorkers ?? d.image_workers;
  const pool = workers > 0 ? new ImageWorkerPool(workers) : null;
  try {
    const { dataset, report } = await loadChecked(config, tokenizer, model, { records: d.records, boxes: d.boxes, images: imageFolder(config), skipBad: d.skip_bad }, pool);
    // Length grouping works on optimizer batches, so that accumulating N micro-batches sees the samples one big batch would.
    const sampler: Sampler =
      t.sampler === 'shuffle'
        ? new ShuffleSampler(dataset.size, config.seed)
        : new LengthGroupedSampler({ lengths: dataset.modalityLengths, batchSize: t.batch_size * t.grad_accum, seed: config.seed });
    const collateFn = collatorOf(model);
    return {
      tokenizer,
      dataset,
      report,
      sampler,
      batchSize: t.batch_size,
      batchesPerEpoch: Math.ceil(dataset.size / t.batch_size),
      sizes,
      sampleOptions: sampleOptionsOf(config, model),
      loader: (resume) => new DataLoader({ source: dataset, sampler, batchSize: t.batch_size, collate: collateFn, prefetch: d.prefetch, resume }),
      close: async () => {
        await pool?.close();
      },
    };
  } catch (e) {
    await pool?.close();
    throw e;
  }
}

/**
 * How a record becomes a sample (image sizes and decoding, box pipeline): one object, given to the dataset and,
 * as it is, to the feature cache's fingerprint (an option added here is fingerprinted without further ado).
 */
export function sampleOptionsOf(config: ExperimentConfig, model: MGLLaVAConfig): Omit<SampleOptions, 'prepare'> {
  const d = config.data;
  // imageTokens: object tokens are capped to the token budget, and data warnings say when (data/token-budget.ts).
  const imageTokens = model.objects ? imageTokensOf(model.vision.imageSize, model.vision.patchSize) : null;
  return { ...imageSizesOf(model), image: imageOptionsOf(d), nmsThreshold: d.nms_threshold, limitNum: d.limit_num, imageTokens };
}

/** The dataset of `src` through the same checks and sample options as training (`mgllava data check`'s). */
function loadChecked(config: ExperimentConfig, tokenizer: TextTokenizer, model: MGLLaVAConfig, src: DataSource, pool: ImageWorkerPool | null): Promise<{ dataset: MgDataset; report: CheckReport }> {
  const d = config.data;
  return loadDataset({
    records: src.records,
    boxes: src.boxes,
    images: src.images,
    text: { template: getTemplate(d.template), tokenizer, maxLength: d.max_length },
    skipBadReport: src.skipBad,
    ...sampleOptionsOf(config, model),
    prepare: pool ? (file, opts) => pool.prepare(file, opts) : undefined,
  });
}

/** Samples -> a padded batch at the model's image sizes. */
function collatorOf(model: MGLLaVAConfig): (samples: Sample[]) => Batch {
  const { auxSize, lowresSize } = imageSizesOf(model);
  return (samples) => collate(samples, { padId: 0, auxSize, lowresSize });
}

/** The held-out set, checked like the training set, read in a fixed order. */
export interface HeldOutData {
  source: DataSource;
  dataset: MgDataset;
  /** The whole set in record order, `batchSize` samples per batch (images decoded again on every pass). */
  batches(): AsyncGenerator<Batch>;
}

/** `train.eval_records` as a checked dataset (null when unset); bad records are an error, never skipped. */
export async function buildHeldOutData(config: ExperimentConfig, model: MGLLaVAConfig, tokenizer: TextTokenizer): Promise<HeldOutData | null> {
  const src = heldOutSource(config);
  if (!src) return null;
  const { dataset } = await loadChecked(config, tokenizer, model, src, null);
  const collateFn = collatorOf(model);
  const batchSize = config.train.batch_size;
  return {
    source: src,
    dataset,
    async *batches() {
      for (let i = 0; i < dataset.size; i += batchSize) {
        const idx = Array.from({ length: Math.min(batchSize, dataset.size - i) }, (_, k) => i + k);
        yield collateFn(await Promise.all(idx.map((j) => dataset.get(j))));
      }
    },
  };
}

/**
 * Optimizer steps of a run: `train.max_steps`, else `epochs` over the data in micro-batches of
 * `batch_size`, `grad_accum` per step (the last step of the run may reach into the next epoch).
 */
export function totalStepsOf(config: ExperimentConfig, batchesPerEpoch: number): number {
  const t = config.train;
  // One optimizer step holds its grad_accum micro-batches in memory and cannot be interrupted: more than the
  // data has is a mistake (a typo, a unit mix-up), not a bigger batch, and a huge value would never finish a step.
  if (t.grad_accum > batchesPerEpoch) {
    throw new ConfigError(
      `train.grad_accum: ${t.grad_accum} micro-batches per optimizer step, but the data gives only ${batchesPerEpoch} micro-batches of ${t.batch_size} per epoch; ` +
        `use at most ${batchesPerEpoch} (or a smaller train.batch_size)`,
    );
  }
  if (t.max_steps !== null) return t.max_steps;
  return Math.max(1, Math.ceil((t.epochs * batchesPerEpoch) / t.grad_accum));
}
