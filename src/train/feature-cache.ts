/**
 * Frozen-encoder feature cache (`train.feature_cache`).
 *
 * With frozen encoders, `encodeFrozen` is a pure function of (image, boxes, encoder weights, preprocessing,
 * backend): its outputs — the selected ViT hidden state, the last ConvNeXt map (fusion input) and the RoI
 * means of the concat map (object-token input) — are computed once per distinct image + box list and reused
 * across steps and epochs. Entries live on the host (Float32Array), so the cache holds no backend memory
 * and the wasm heap ceiling does not apply to it.
 *
 * Exactness. A batched encoder may round the last bits differently depending on what else is in the batch
 * (GEMM blocking, algorithm choice by shape on GPU backends). So the frozen path is *always* computed one
 * image at a time — with the cache on and off alike (`encodeBatchPerImage`) — which makes every image's
 * features independent of batch composition; the cache then stores exactly those bits and a hit uploads
 * them unchanged. Cache on and off therefore give bitwise identical losses and weights
 * (test/train-feature-cache.test.ts). Per-image encoding costs about 2x a batched encode on wasm, but
 * with the cache on each image is encoded once per run.
 *
 * Keys: the image file + the preprocessed box list (aux-image pixels, float32 bits), under a fingerprint of
 * everything else the features depend on (encoder configs, image sizes and normalisation, object-feature
 * options, the backend, and a digest of the frozen weights). Text-only samples (zero image + dummy box) share
 * one entry. A run can be handed the cache of an earlier run (`RunOptions.featureCache`, returned in the
 * result): with the same fingerprint (finetune after pretrain on the same images and warm-up encoders) it
 * starts filled, otherwise a new one is made. Images are keyed by absolute path, not content: rewriting an
 * image file between two runs that share a cache would serve the old features (the demo writes its data first).
 *
 * Budget: entries are added until `budgetBytes` is reached; past it, new images are not stored and are
 * encoded again whenever they come back (still exact; only the speed-up shrinks to the cached fraction).
 * Nothing is evicted: with a shuffled epoch order every image returns once per epoch, so an LRU would
 * evict each entry just before its reuse, while a fixed resident set keeps a hit rate of budget/total.
 */
import { createHash } from 'node:crypto';
import * as tf from '@tensorflow/tfjs';
import type { ExperimentConfig } from '../config/schema.js';
import type { Batch } from '../data/collate.js';
import type { MgDataset, SampleOptions } from '../data/dataset.js';
import { CLIP_NORM } from '../data/image.js';
import { disposeFrozen, type FrozenFeatures, type MGLLaVA } from '../model/mgllava.js';
import type { TrainData } from './build-data.js';

/** One image's frozen features on the host. */
interface Entry {
  vit: Float32Array; // [N,D]
  lastMap: Float32Array | null; // [h,w,C]
  roiMeans: Float32Array | null; // [K,Cc]
  boxCount: number;
  bytes: number;
}

/** Per-image shapes (the same for every image of a model). */
interface Shapes {
  vit: [number, number];
  lastMap: [number, number, number] | null;
  roiChannels: number | null;
}

export interface FeatureCacheStats {
  entries: number;
  bytes: number;
  budgetBytes: number;
  hits: number;
  misses: number;
  /** Misses not stored because the budget was reached. */
  overBudget: number;
  /** Wall time spent in the per-image encoder (hits excluded), ms. */
  encodeMs: number;
}

/** One image of a batch through the frozen path, alone (B = 1). */
export function encodeImage(model: MGLLaVA, b: Batch, i: number): FrozenFeatures {
  const low = b.lowresSize * b.lowresSize * 3;
  const aux = b.auxSize * b.auxSize * 3;
  const pixels = tf.tensor4d(b.lowres.subarray(i * low, (i + 1) * low), [1, b.lowresSize, b.lowresSize, 3]); // [1,S,S,3]
  const pixelsAux = model.visionAux ? tf.tensor4d(b.aux.subarray(i * aux, (i + 1) * aux), [1, b.auxSize, b.auxSize, 3]) : null; // [1,A,A,3]
  try {
    return model.encodeFrozen(pixels, pixelsAux, model.objects ? [b.boxes[i]!] : null);
  } finally {
    pixels.dispose();
    pixelsAux?.dispose();
  }
}

/** Per-image frozen features -> the batch's (rows concatenated in order; copies, so bits are kept). */
function concatFrozen(parts: FrozenFeatures[]): FrozenFeatures {
  const cat = <T extends tf.Tensor>(ts: T[]): T => (ts.length === 1 ? (ts[0]!.clone() as T) : (tf.concat(ts, 0) as T));
  return {
    vit: cat(parts.map((p) => p.vit)), // [B,N,D]
    lastMap: parts[0]!.lastMap ? cat(parts.map((p) => p.lastMap!)) : null, // [B,h,w,C]
    roiMeans: parts[0]!.roiMeans ? cat(parts.map((p) => p.roiMeans!)) : null, // [sum K,Cc]
    boxCounts: parts.flatMap((p) => p.boxCounts),
  };
}

/**
 * The frozen path of a batch, one image at a time (what the trainer uses without the cache): each row's
 * features are those of its image alone, whatever else is in the batch.
 */
export function encodeBatchPerImage(model: MGLLaVA, b: Batch): FrozenFeatures {
  const parts: FrozenFeatures[] = [];
  try {
    for (let i = 0; i < b.size; i++) parts.push(encodeImage(model, b, i));
    return concatFrozen(parts);
  } finally {
    parts.forEach(disposeFrozen);
  }
}

/**
 * The preprocessing the frozen features depend on: the dataset's sample options (sizes, normalisation, image
 * decoding, box pipeline), minus the function that runs them. Derived from the type, so an option added there
 * is part of the fingerprint without anyone remembering to copy it here.
 */
export type FingerprintInput = Omit<SampleOptions, 'prepare'>;

/** JSON with object keys sorted (the same options in another key order give the same hash). */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v && typeof v === 'object') {
    const entries = Object.entries(v as Record<string, unknown>).filter(([, x]) => x !== undefined && typeof x !== 'function');
    return `{${entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([k, x]) => `${JSON.stringify(k)}:${canonical(x)}`).join(',')}}`;
  }
  return JSON.stringify(v);
}

/**
 * Hash of everything besides (image, boxes) that the frozen features depend on: encoder configs, object
 * options, fusion presence, preprocessing, backend, and the frozen weights themselves.
 */
export async function featureFingerprint(model: MGLLaVA, prep: FingerprintInput): Promise<string> {
  const c = model.config;
  const h = createHash('sha256');
  h.update(
    JSON.stringify({
      format: 1,
      backend: tf.getBackend(),
      vision: c.vision,
      visionAux: c.visionAux,
      fusion: c.fusion !== null,
      objects: c.objects ? { outputSize: c.objects.outputSize, samplingRatio: c.objects.samplingRatio } : null,
    }),
  );
  h.update(canonical({ ...prep, norm: prep.norm ?? CLIP_NORM }));
  const frozen = [...model.vision.namedWeights('visual_encoder.'), ...(model.visionAux?.namedWeights('visual_encoder_aux.') ?? [])];
  for (const [name, v] of frozen) {
    const data = (await v.data()) as Float32Array; // asynchronous reads: webgpu cannot read synchronously
    h.update(`${name}:${v.shape.join('x')}:`);
    h.update(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  }
  return h.digest('hex');
}

function boxesKey(boxes: Float32Array): string {
  return Buffer.from(boxes.buffer, boxes.byteOffset, boxes.byteLength).toString('base64');
}

export interface FeatureCacheOptions {
  fingerprint: string;
  budgetBytes: number;
}

export class FeatureCache {
  readonly fingerprint: string;
  budgetBytes: number;
  private readonly entries = new Map<string, Entry>();
  private shapes: Shapes | null = null;
  private bytes = 0;
  private hits = 0;
  private misses = 0;
  private overBudget = 0;
  private encodeMs = 0;

  constructor(o: FeatureCacheOptions) {
    if (!(o.budgetBytes >= 0)) throw new Error(`FeatureCache: budget must be >= 0 bytes, got ${o.budgetBytes}`);
    this.fingerprint = o.fingerprint;
    this.budgetBytes = o.budgetBytes;
  }

  /** Whether the budget stopped an entry from being stored since the counters were reset. */
  get full(): boolean {
    return this.overBudget > 0;
  }

  stats(): FeatureCacheStats {
    return { entries: this.entries.size, bytes: this.bytes, budgetBytes: this.budgetBytes, hits: this.hits, misses: this.misses, overBudget: this.overBudget, encodeMs: this.encodeMs };
  }

  resetCounters(): void {
    this.hits = this.misses = this.overBudget = 0;
    this.encodeMs = 0;
  }

  /**
   * The batch's frozen features (the caller disposes them: `disposeFrozen`). `imageOf(index)` names the
   * image file of dataset record `index` (null: text-only).
   */
  async frozenFor(model: MGLLaVA, b: Batch, imageOf: (index: number) => string | null): Promise<FrozenFeatures> {
    const rows: Entry[] = [];
    for (let i = 0; i < b.size; i++) {
      const image = b.hasImage[i] ? imageOf(b.indices[i]!) : null;
      if (b.hasImage[i] && image === null) throw new Error(`FeatureCache: record ${b.ids[i]} (index ${b.indices[i]}) has an image in the batch but no image file`);
      const key = `${image ?? '\u0000text-only'}\u0000${boxesKey(b.boxes[i]!)}`;
      let e = this.entries.get(key);
      if (e) {
        this.hits++;
      } else {
        this.misses++;
        e = await this.encode(model, b, i);
        if (this.bytes + e.bytes <= this.budgetBytes) {
          this.entries.set(key, e);
          this.bytes += e.bytes;
        } else {
          this.overBudget++;
        }
      }
      rows.push(e);
    }
    return this.assemble(rows);
  }

  private async encode(model: MGLLaVA, b: Batch, i: number): Promise<Entry> {
    const t0 = performance.now();
    const f = encodeImage(model, b, i);
    try {
      const shapes: Shapes = {
        vit: [f.vit.shape[1], f.vit.shape[2]],
        lastMap: f.lastMap ? [f.lastMap.shape[1], f.lastMap.shape[2], f.lastMap.shape[3]] : null,
        roiChannels: f.roiMeans ? f.roiMeans.shape[1] : null,
      };
      if (!this.shapes) this.shapes = shapes;
      else if (JSON.stringify(shapes) !== JSON.stringify(this.shapes)) {
        throw new Error(`FeatureCache: record ${b.ids[i]} gives frozen shapes ${JSON.stringify(shapes)}, the cache holds ${JSON.stringify(this.shapes)}`);
      }
      const vit = (await f.vit.data()) as Float32Array;
      const lastMap = f.lastMap ? ((await f.lastMap.data()) as Float32Array) : null;
      const roiMeans = f.roiMeans ? ((await f.roiMeans.data()) as Float32Array) : null;
      const bytes = vit.byteLength + (lastMap?.byteLength ?? 0) + (roiMeans?.byteLength ?? 0);
      return { vit, lastMap, roiMeans, boxCount: f.boxCounts[0] ?? 0, bytes };
    } finally {
      disposeFrozen(f);
      this.encodeMs += performance.now() - t0;
    }
  }

  /** Host rows -> batch tensors (the same bits the per-image encoder produced). */
  private assemble(rows: Entry[]): FrozenFeatures {
    const s = this.shapes!;
    const B = rows.length;
    const stack = (parts: Float32Array[]) => {
      const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
      let o = 0;
      for (const p of parts) {
        out.set(p, o);
        o += p.length;
      }
      return out;
    };
    const K = rows.reduce((n, r) => n + r.boxCount, 0);
    return {
      vit: tf.tensor3d(stack(rows.map((r) => r.vit)), [B, ...s.vit]), // [B,N,D]
      lastMap: s.lastMap ? tf.tensor4d(stack(rows.map((r) => r.lastMap!)), [B, ...s.lastMap]) : null, // [B,h,w,C]
      roiMeans: s.roiChannels !== null ? tf.tensor2d(stack(rows.map((r) => r.roiMeans!)), [K, s.roiChannels]) : null, // [sum K,Cc]
      boxCounts: s.roiChannels !== null ? rows.map((r) => r.boxCount) : [],
    };
  }
}

/** The trainer's view of the cache. */
export interface TrainFeatureCache {
  /** The cache itself: hand it to a following run (`RunOptions.featureCache`) to start that one filled. */
  cache: FeatureCache;
  /** Frozen features of a training batch. */
  frozen: (b: Batch) => Promise<FrozenFeatures>;
  /** Frozen features of a batch of another dataset with the same preprocessing (the held-out set). */
  frozenFor(dataset: MgDataset): (b: Batch) => Promise<FrozenFeatures>;
  stats(): FeatureCacheStats;
  /** "feature cache: N images (X MB), H hits / M misses, encoder Y s" */
  summary(): string;
}

const MB = 1024 * 1024;

/**
 * The cache for a training run whose encoders are frozen (`train.feature_cache` auto/on): keyed by the
 * dataset's image files, fingerprinted with the model and the dataset's sample options. `previous`: a cache
 * of an earlier run, reused (budget raised if asked, counters reset) when its fingerprint is the same.
 */
export async function featureCacheFor(
  config: ExperimentConfig,
  model: MGLLaVA,
  data: TrainData,
  log: { note(m: string): void },
  previous: FeatureCache | null = null,
): Promise<TrainFeatureCache> {
  const fingerprint = await featureFingerprint(model, data.sampleOptions);
  const budgetBytes = config.train.feature_cache_mb * MB;
  const reused = previous !== null && previous.fingerprint === fingerprint;
  const cache = reused ? previous : new FeatureCache({ fingerprint, budgetBytes });
  if (reused) {
    cache.budgetBytes = Math.max(cache.budgetBytes, budgetBytes);
    cache.resetCounters();
  }
  const s0 = cache.stats();
  log.note(
    `feature cache ${config.train.feature_cache === 'on' ? 'on' : 'on (auto: the encoders are frozen)'}, budget ${config.train.feature_cache_mb} MB` +
      (reused ? `; reusing ${s0.entries} images (${(s0.bytes / MB).toFixed(1)} MB) cached by the previous run with the same encoders` : ''),
  );
  let warned = false;
  const mb = (n: number) => (n / MB).toFixed(1);
  const frozenFor = (dataset: MgDataset) => {
    const imageOf = (index: number) => dataset.items[index]?.imagePath ?? null;
    return async (b: Batch) => {
      const f = await cache.frozenFor(model, b, imageOf);
      if (cache.full && !warned) {
        warned = true;
        const s = cache.stats();
        log.note(`feature cache full: ${s.entries} images in ${mb(s.bytes)} MB (train.feature_cache_mb ${config.train.feature_cache_mb}); images beyond them are encoded again at every use`);
      }
      return f;
    };
  };
  return {
    cache,
    frozen: frozenFor(data.dataset),
    frozenFor,
    stats: () => cache.stats(),
    summary: () => {
      const s = cache.stats();
      return `feature cache: ${s.entries} images (${mb(s.bytes)} MB), ${s.hits} hits / ${s.misses} misses, per-image encoding ${(s.encodeMs / 1000).toFixed(1)} s`;
    },
  };
}
