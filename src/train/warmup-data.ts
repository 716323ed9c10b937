/**
 * Warm-up data: an annotations file (src/data/synth/annotations.ts writes one) -> per image the two model
 * inputs and the targets of the throw-away heads.
 *
 *   image  -> prepareImage (the training preprocessing: pad to square, aux + low-res sizes of the model)
 *   boxes  -> the aux frame with the box pipeline's own stage functions (padShift -> resizeBoxes ->
 *             centerCropBoxes: the same pad/resize/crop arithmetic as detector boxes, without NMS or cap —
 *             annotation boxes are the truth, one per object)
 *   labels -> per box one class index per box head; per image a multi-hot "present" vector over the
 *             presence heads' classes (concatenated in head order)
 *
 * Batches are host arrays like the trainer's, loaded by the same resumable prefetching DataLoader.
 */
import { readFile } from 'node:fs/promises';
import { centerCropBoxes, padShift, resizeBoxes, squareGeometry, type Box } from '../data/boxes.js';
import { ImageWorkerPool } from '../data/image-pool.js';
import { CLIP_NORM, ImageError, orientationSwapsSides, prepareImage, readImageHeader, resolveImagePath, type PreparedImage, type PrepareOptions } from '../data/image.js';
import { imageOptionsOf, type DecodeOptions } from '../data/image-options.js';
import { DataLoader, type LoaderState, type SampleSource } from '../data/loader.js';
import { SequentialSampler, ShuffleSampler } from '../data/sampler.js';
import { ANNOTATIONS_FORMAT } from '../data/synth/annotations.js';
import type { ExperimentConfig, WarmupSection } from '../config/schema.js';
import { imageSizesOf, type MGLLaVAConfig } from '../model/mgllava.js';
import { imageFolder } from './build-data.js';
import { DataError } from '../errors.js';

export class AnnotationError extends DataError {
  constructor(message: string) {
    super(message);
    this.name = 'AnnotationError';
  }
}

export interface AnnotatedImage {
  id: string;
  /** Relative to the image folder. */
  image: string;
  split: string;
  width: number;
  height: number;
  /** xyxy, original-image pixels. */
  boxes: Box[];
  /** Per object: attribute -> value. */
  values: Record<string, string>[];
}

export interface Annotations {
  file: string;
  /** Attribute -> its classes, in the file's order (class index = position). */
  attributes: Record<string, string[]>;
  images: AnnotatedImage[];
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Read and validate an annotations file; errors name the file, the image id and the object. */
export async function readAnnotations(file: string): Promise<Annotations> {
  let doc: unknown;
  try {
    doc = JSON.parse(await readFile(file, 'utf8'));
  } catch (e) {
    throw new AnnotationError(`cannot read annotations ${file}: ${(e as Error).message}`);
  }
  const bad = (where: string, msg: string) => new AnnotationError(`${file}: ${where}: ${msg}`);
  if (!isObj(doc) || doc.format !== ANNOTATIONS_FORMAT) throw bad('top level', `not an annotations file (expected "format": "${ANNOTATIONS_FORMAT}")`);
  if (doc.version !== 1) throw bad('version', `unsupported version ${JSON.stringify(doc.version)} (this reader knows 1)`);
  const attrs = doc.attributes;
  if (!isObj(attrs)) throw bad('attributes', 'must map each attribute to its list of class names');
  const attributes: Record<string, string[]> = {};
  for (const [a, cls] of Object.entries(attrs)) {
    if (!Array.isArray(cls) || cls.length < 2 || !cls.every((c) => typeof c === 'string') || new Set(cls).size !== cls.length) {
      throw bad(`attributes.${a}`, 'must be a list of at least 2 distinct class names');
    }
    attributes[a] = cls as string[];
  }
  if (!isObj(doc.images)) throw bad('images', 'must map image ids to {image, split, width, height, objects}');
  const images: AnnotatedImage[] = [];
  for (const [id, e] of Object.entries(doc.images)) {
    const at = `image "${id}"`;
    if (!isObj(e)) throw bad(at, 'must be an object');
    if (typeof e.image !== 'string' || e.image === '') throw bad(at, '"image" must be a file path relative to the image folder');
    if (typeof e.split !== 'string') throw bad(at, '"split" must be a string');
    const { width, height } = e;
    if (!Number.isInteger(width) || !Number.isInteger(height) || (width as number) <= 0 || (height as number) <= 0) {
      throw bad(at, `"width"/"height" must be positive integers, got ${JSON.stringify(width)}x${JSON.stringify(height)}`);
    }
    if (!Array.isArray(e.objects)) throw bad(at, '"objects" must be a list');
    const boxes: Box[] = [];
    const values: Record<string, string>[] = [];
    e.objects.forEach((o: unknown, k) => {
      const ok = `${at} object ${k}`;
      if (!isObj(o)) throw bad(ok, 'must be an object');
      const b = o.box;
      if (!Array.isArray(b) || b.length !== 4 || !b.every((v) => typeof v === 'number' && Number.isFinite(v)) || !(b[2] > b[0] && b[3] > b[1])) {
        throw bad(ok, `"box" must be [x1, y1, x2, y2] with x1 < x2, y1 < y2, got ${JSON.stringify(b)}`);
      }
      const v: Record<string, string> = {};
      for (const [a, cls] of Object.entries(attributes)) {
        const val = o[a];
        if (typeof val !== 'string' || !cls.includes(val)) throw bad(ok, `"${a}" must be one of ${cls.join(', ')}, got ${JSON.stringify(val)}`);
        v[a] = val;
      }
      boxes.push([b[0], b[1], b[2], b[3]]);
      values.push(v);
    });
    images.push({ id, image: e.image, split: e.split, width: width as number, height: height as number, boxes, values });
  }
  return { file, attributes, images };
}

/** The heads' label spaces, from the config's head lists and the file's attributes. */
export interface HeadSpec {
  /** One classifier per attribute, on each box's RoI mean. */
  box: { attr: string; classes: string[] }[];
  /**
   * One multi-label classifier over these attributes' classes (concatenated), on every cell / token; `at`:
   * targets per cell (the objects there) or per image (the same at every cell), warmup.presence_at.
   */
  presence: { attr: string; classes: string[]; offset: number; at: 'cell' | 'image' }[];
  /** Total presence labels. */
  presenceSize: number;
}

export function headSpec(w: WarmupSection, a: Annotations): HeadSpec {
  const known = Object.keys(a.attributes);
  const attr = (name: string, key: string) => {
    const cls = a.attributes[name];
    if (!cls) throw new AnnotationError(`warmup.${key}: attribute '${name}' is not in ${a.file} (it has: ${known.join(', ') || 'none'})`);
    return cls;
  };
  if (w.box_heads.length === 0 && w.presence_heads.length === 0) throw new AnnotationError('warmup: box_heads and presence_heads are both empty: nothing to learn from');
  const box = w.box_heads.map((n) => ({ attr: n, classes: attr(n, 'box_heads') }));
  let offset = 0;
  const at = w.presence_at;
  if (typeof at !== 'string') {
    const unknown = Object.keys(at).filter((k) => !w.presence_heads.includes(k));
    if (unknown.length) throw new AnnotationError(`warmup.presence_at names ${unknown.join(', ')}, not in presence_heads (${w.presence_heads.join(', ')})`);
  }
  const presence = w.presence_heads.map((n) => {
    const classes = attr(n, 'presence_heads');
    const h = { attr: n, classes, offset, at: typeof at === 'string' ? at : (at[n] ?? 'image') };
    offset += classes.length;
    return h;
  });
  return { box, presence, presenceSize: offset };
}

/**
 * Annotation boxes (original pixels) -> aux-image pixels with the box pipeline's pad/resize/crop stages.
 * `kept` lists the objects that survive the crop (all of them unless a box lies outside the image).
 */
export function boxesToAux(boxes: readonly Box[], width: number, height: number, auxSize: number): { boxes: Box[]; kept: number[] } {
  const { side } = squareGeometry(width, height);
  const resized = resizeBoxes(padShift(boxes, width, height), side, side, auxSize);
  const cropped = centerCropBoxes(resized.boxes, resized.boxes.map((_, i) => String(i)), resized.width, resized.height, auxSize);
  const kept = cropped.labels.map(Number); // the dummy box of an empty result has no label: dropped here
  return { boxes: kept.map((_, j) => cropped.boxes[j]!), kept };
}

export interface WarmupSample {
  index: number;
  id: string;
  aux: Float32Array; // [A,A,3]
  lowres: Float32Array; // [S,S,3]
  /** [K*4] aux-image pixels. */
  boxes: Float32Array;
  /** [K * box heads]: class index of box k for head h at k*H + h. */
  boxLabels: Int32Array;
  /** [P] multi-hot over the presence classes. */
  present: Float32Array;
  /** [K*P]: box k's object's presence classes, multi-hot at k*P. */
  presentPerBox: Float32Array;
  /** Per box its `size` attribute (accuracy breakdown); empty when the annotations have none. */
  boxGroups: string[];
}

/** The attribute the final accuracies are broken down by, when the annotations have it. */
export const GROUP_ATTR = 'size';

export interface WarmupBatch {
  ids: string[];
  size: number; // B
  auxSize: number;
  lowresSize: number;
  aux: Float32Array; // [B,A,A,3]
  lowres: Float32Array; // [B,S,S,3]
  /** Per image [K_b*4], aux pixels (K_b may be 0). */
  boxes: Float32Array[];
  /** Per box head: the classes of every box of the batch, images in order: [sum K_b]. */
  boxLabels: Int32Array[];
  /** [B, P] */
  present: Float32Array;
  /** Per image [K_b*P] (WarmupSample.presentPerBox). */
  presentPerBox: Float32Array[];
  /** sum K_b */
  numBoxes: number;
  /** [sum K_b] or [] (WarmupSample.boxGroups). */
  boxGroups: string[];
}

export interface WarmupSampleOptions {
  folder: string;
  auxSize: number;
  lowresSize: number;
  /** The run's EXIF policy and pixel budget (`imageOptionsOf(config.data)`), as every other image load. */
  image: Required<DecodeOptions>;
  prepare?: (file: string, opts: PrepareOptions) => Promise<PreparedImage>;
}

export class WarmupImages implements SampleSource<WarmupSample> {
  constructor(
    readonly images: readonly AnnotatedImage[],
    readonly spec: HeadSpec,
    readonly annotationsAttributes: Record<string, string[]>,
    readonly o: WarmupSampleOptions,
  ) {}

  get size(): number {
    return this.images.length;
  }

  async get(index: number): Promise<WarmupSample> {
    const a = this.images[index];
    if (!a) throw new Error(`warm-up images: index ${index} out of range (size ${this.images.length})`);
    const file = await resolveImagePath(this.o.folder, a.image);
    const img = await (this.o.prepare ?? prepareImage)(file, { auxSize: this.o.auxSize, lowresSize: this.o.lowresSize, norm: CLIP_NORM, ...this.o.image });
    if (img.width !== a.width || img.height !== a.height) {
      throw new AnnotationError(`image "${a.id}" (${file}) is ${img.width}x${img.height}, its annotation says ${a.width}x${a.height}`);
    }
    const { boxes, kept } = boxesToAux(a.boxes, a.width, a.height, this.o.auxSize);
    const H = this.spec.box.length;
    const boxLabels = new Int32Array(kept.length * H);
    kept.forEach((obj, k) => this.spec.box.forEach((h, j) => (boxLabels[k * H + j] = h.classes.indexOf(a.values[obj]![h.attr]!))));
    const P = this.spec.presenceSize;
    const present = new Float32Array(P);
    for (const v of a.values) for (const h of this.spec.presence) present[h.offset + h.classes.indexOf(v[h.attr]!)] = 1;
    const presentPerBox = new Float32Array(kept.length * P);
    kept.forEach((obj, k) => this.spec.presence.forEach((h) => (presentPerBox[k * P + h.offset + h.classes.indexOf(a.values[obj]![h.attr]!)] = 1)));
    const boxGroups = GROUP_ATTR in this.annotationsAttributes ? kept.map((obj) => a.values[obj]![GROUP_ATTR]!) : [];
    return { index, id: a.id, aux: img.aux, lowres: img.lowres, boxes: Float32Array.from(boxes.flat()), boxLabels, present, presentPerBox, boxGroups };
  }
}

export function collateWarmup(samples: readonly WarmupSample[], spec: HeadSpec, auxSize: number, lowresSize: number): WarmupBatch {
  const B = samples.length;
  if (B === 0) throw new Error('warm-up collate: empty batch');
  const auxPer = auxSize * auxSize * 3;
  const lowPer = lowresSize * lowresSize * 3;
  const aux = new Float32Array(B * auxPer);
  const lowres = new Float32Array(B * lowPer);
  const present = new Float32Array(B * spec.presenceSize);
  const H = spec.box.length;
  const numBoxes = samples.reduce((n, s) => n + s.boxes.length / 4, 0);
  const boxLabels = spec.box.map(() => new Int32Array(numBoxes));
  let row = 0;
  samples.forEach((s, b) => {
    aux.set(s.aux, b * auxPer);
    lowres.set(s.lowres, b * lowPer);
    present.set(s.present, b * spec.presenceSize);
    const K = s.boxes.length / 4;
    for (let k = 0; k < K; k++, row++) for (let h = 0; h < H; h++) boxLabels[h]![row] = s.boxLabels[k * H + h]!;
  });
  const boxGroups = samples.flatMap((s) => s.boxGroups);
  return { ids: samples.map((s) => s.id), size: B, auxSize, lowresSize, aux, lowres, boxes: samples.map((s) => s.boxes), boxLabels, present, presentPerBox: samples.map((s) => s.presentPerBox), numBoxes, boxGroups };
}

/**
 * Presence targets of a batch on a square grid of `grid` x `grid` cells over the (square) image: [B, grid², P].
 * A head judged per `image` gets the image's classes at every cell; per `cell`, a cell holds the objects whose
 * box covers at least a quarter of it or whose centre lies in it (a 2-3 px object counts in its own cell only).
 */
export function presenceTargets(b: WarmupBatch, spec: HeadSpec, grid: number): Float32Array {
  const P = spec.presenceSize;
  const M = grid * grid;
  const out = new Float32Array(b.size * M * P);
  const cell = b.auxSize / grid; // boxes are in aux pixels
  const perCell = new Uint8Array(P); // 1 where the class's head is judged per cell
  for (const h of spec.presence) if (h.at === 'cell') perCell.fill(1, h.offset, h.offset + h.classes.length);
  for (let i = 0; i < b.size; i++) {
    for (let m = 0; m < M; m++) for (let p = 0; p < P; p++) if (!perCell[p]) out[(i * M + m) * P + p] = b.present[i * P + p]!;
    const boxes = b.boxes[i]!;
    const classes = b.presentPerBox[i]!;
    for (let k = 0; k < boxes.length / 4; k++) {
      const [x0, y0, x1, y1] = [boxes[4 * k]!, boxes[4 * k + 1]!, boxes[4 * k + 2]!, boxes[4 * k + 3]!];
      const cx = Math.min(grid - 1, Math.floor((x0 + x1) / 2 / cell));
      const cy = Math.min(grid - 1, Math.floor((y0 + y1) / 2 / cell));
      for (let gy = 0; gy < grid; gy++) {
        for (let gx = 0; gx < grid; gx++) {
          const w = Math.max(0, Math.min(x1, (gx + 1) * cell) - Math.max(x0, gx * cell));
          const h = Math.max(0, Math.min(y1, (gy + 1) * cell) - Math.max(y0, gy * cell));
          if (!((gx === cx && gy === cy) || w * h >= (cell * cell) / 4)) continue;
          const at = (i * M + gy * grid + gx) * P;
          for (let p = 0; p < P; p++) if (perCell[p] && classes[k * P + p]! > 0) out[at + p] = 1;
        }
      }
    }
  }
  return out;
}

export interface WarmupData {
  annotations: Annotations;
  spec: HeadSpec;
  train: WarmupImages;
  /** Images of the final accuracy report, and what they are ("eval split" / "training images"). */
  evaluation: { images: WarmupImages; label: string };
  batchSize: number;
  batchesPerEpoch: number;
  /** The training loader, at the start or at a saved cursor (shuffled per epoch from the seed). */
  loader(resume?: LoaderState): DataLoader<WarmupSample, WarmupBatch>;
  /** The evaluation images in order. */
  evalLoader(): DataLoader<WarmupSample, WarmupBatch>;
  close(): Promise<void>;
}

/**
 * Every image the run will read exists inside the image folder, has a readable header within the pixel budget
 * and the size its annotation gives, before the first step (a bad one stopped the run when its batch came).
 */
async function checkAnnotatedImages(annotationsFile: string, folder: string, images: readonly AnnotatedImage[], opts: Required<DecodeOptions>): Promise<void> {
  for (const a of images) {
    let header;
    try {
      header = await readImageHeader(await resolveImagePath(folder, a.image), opts);
    } catch (e) {
      if (e instanceof ImageError) throw new AnnotationError(`${annotationsFile}: image "${a.id}": ${e.message}`);
      throw e;
    }
    // An applied EXIF rotation may swap the sides: the annotation is in the frame the model sees.
    const [w, h] = opts.exifOrientation === 'apply' && orientationSwapsSides(header.orientation) ? [header.height, header.width] : [header.width, header.height];
    if (w !== a.width || h !== a.height) {
      throw new AnnotationError(`${annotationsFile}: image "${a.id}" (${a.image}) is ${w}x${h}, its annotation says ${a.width}x${a.height}`);
    }
  }
}

export async function buildWarmupData(config: ExperimentConfig, model: MGLLaVAConfig, o: { imageWorkers?: number } = {}): Promise<WarmupData> {
  const w = config.warmup!;
  const annotations = await readAnnotations(w.annotations);
  const spec = headSpec(w, annotations);
  const of = (split: string) => annotations.images.filter((i) => i.split === split);
  const trainImages = of(w.train_split);
  const splits = [...new Set(annotations.images.map((i) => i.split))];
  if (trainImages.length === 0) throw new AnnotationError(`${w.annotations}: no image of split '${w.train_split}' (warmup.train_split); the file has: ${splits.join(', ') || 'no images'}`);
  let evalImages = trainImages;
  let label = 'training images';
  if (w.eval_split !== null) {
    evalImages = of(w.eval_split);
    label = `held-out '${w.eval_split}' images`;
    if (evalImages.length === 0) throw new AnnotationError(`${w.annotations}: no image of split '${w.eval_split}' (warmup.eval_split; null reports on training images); the file has: ${splits.join(', ')}`);
  }
  evalImages = evalImages.slice(0, w.eval_images);
  const image = imageOptionsOf(config.data);
  await checkAnnotatedImages(w.annotations, imageFolder(config), [...new Set([...trainImages, ...evalImages])], image);
  const { auxSize, lowresSize } = imageSizesOf(model);
  const workers = o.imageWorkers ?? config.data.image_workers;
  const pool = workers > 0 ? new ImageWorkerPool(workers) : null;
  const so: WarmupSampleOptions = { folder: imageFolder(config), auxSize, lowresSize, image, prepare: pool ? (f, p) => pool.prepare(f, p) : undefined };
  const train = new WarmupImages(trainImages, spec, annotations.attributes, so);
  const evaluation = new WarmupImages(evalImages, spec, annotations.attributes, so);
  const t = config.train;
  const collate = (s: WarmupSample[]) => collateWarmup(s, spec, auxSize, lowresSize);
  const sampler = new ShuffleSampler(train.size, config.seed);
  return {
    annotations,
    spec,
    train,
    evaluation: { images: evaluation, label },
    batchSize: t.batch_size,
    batchesPerEpoch: Math.ceil(train.size / t.batch_size),
    loader: (resume) => new DataLoader({ source: train, sampler, batchSize: t.batch_size, collate, prefetch: config.data.prefetch, resume }),
    evalLoader: () => new DataLoader({ source: evaluation, sampler: new SequentialSampler(evaluation.size), batchSize: t.batch_size, collate, prefetch: config.data.prefetch }),
    close: async () => {
      await pool?.close();
    },
  };
}
