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
import { loadDataset, type MgDataset } from '../data/dataset.js';
import type { CheckReport } from '../data/check.js';
import { ImageWorkerPool } from '../data/image-pool.js';
import { DataLoader, type LoaderState } from '../data/loader.js';
import { LengthGroupedSampler, ShuffleSampler, type Sampler } from '../data/sampler.js';
import { getTemplate } from '../data/templates.js';
import { loadTokenizer, type TextTokenizer } from '../data/tokenizer.js';
import type { ExperimentConfig } from '../config/schema.js';
import type { MGLLaVAConfig } from '../model/mgllava.js';

export class DataSetupError extends Error {
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
  const sizes = { lowres: model.vision.imageSize, aux: model.visionAux?.imageSize ?? model.vision.imageSize };
  const workers = o.imageWorkers ?? d.image_workers;
  const pool = workers > 0 ? new ImageWorkerPool(workers) : null;
  try {
    const { dataset, report } = await loadDataset({
      records: d.records,
      boxes: d.boxes,
      images: imageFolder(config),
      text: { template: getTemplate(d.template), tokenizer, maxLength: d.max_length },
      skipBadReport: d.skip_bad,
      auxSize: sizes.aux,
      lowresSize: sizes.lowres,
      nmsThreshold: d.nms_threshold,
      limitNum: d.limit_num,
      prepare: pool ? (file, opts) => pool.prepare(file, opts) : undefined,
    });
    // Length grouping works on optimizer batches, so that accumulating N micro-batches sees the samples one big batch would.
    const sampler: Sampler =
      t.sampler === 'shuffle'
        ? new ShuffleSampler(dataset.size, config.seed)
        : new LengthGroupedSampler({ lengths: dataset.modalityLengths, batchSize: t.batch_size * t.grad_accum, seed: config.seed });
    const collateFn = (samples: Sample[]): Batch => collate(samples, { padId: 0, auxSize: sizes.aux, lowresSize: sizes.lowres });
    return {
      tokenizer,
      dataset,
      report,
      sampler,
      batchSize: t.batch_size,
      batchesPerEpoch: Math.ceil(dataset.size / t.batch_size),
      sizes,
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
 * Optimizer steps of a run: `train.max_steps`, else `epochs` over the data in micro-batches of
 * `batch_size`, `grad_accum` per step (the last step of the run may reach into the next epoch).
 */
export function totalStepsOf(config: ExperimentConfig, batchesPerEpoch: number): number {
  const t = config.train;
  if (t.max_steps !== null) return t.max_steps;
  return Math.max(1, Math.ceil((t.epochs * batchesPerEpoch) / t.grad_accum));
}
