/**
 * Boxes for new images: an OWLv2 detector and a tag list (per run or per image), as MG-LLaVA generates its box JSON.
 *
 *   tags -> "a photo of {tag}" queries -> text tower, once per distinct tag (cached; the image's list -> [1,Q,P])
 *   image -> decode -> owlv2Preprocess -> image features -> class head (logits [1,N,Q]) + box head
 *         -> mgllavaBoxes: threshold 0.2, .int() boxes in original-image pixels, per-label NMS 0.2
 *
 * The entry is in the box JSON format the data pipeline reads ({boxes, labels, scores}). It keeps every box NMS
 * leaves: the per-label cap (and its regrouping) is applied later by the training/chat box pipeline, which
 * also re-runs NMS (a no-op on NMS output). `nms: null` stores the raw thresholded detections instead, exactly
 * as MG-LLaVA's offline script saves them.
 */
import * as tf from '@tensorflow/tfjs';
import { decodeImage, type DecodeOptions, type RgbImage } from '../data/image.js';
import type { BoxEntry } from '../data/records.js';
import { gridOf } from '../model/detector/config.js';
import { loadOwlv2, type LoadedOwlv2 } from '../model/detector/load.js';
import type { Owlv2Detector } from '../model/detector/owlv2.js';
import type { TextTokenizer } from '../data/tokenizer.js';
import { MGLLAVA_PAD_VALUE, owlv2Preprocess } from './preprocess.js';
import { mgllavaBoxes, MGLLAVA_BOX_RULE, type MgllavaBoxes } from './postprocess.js';
import { queryText, tokenizeQueries } from './queries.js';

export interface DetectOptions {
  /** Score threshold (0.2). */
  threshold?: number;
  /** Per-label NMS IoU stored in the entry (0.2); null: raw detections. */
  nms?: number | null;
  /** Padding value before normalisation: 0.5 (what MG-LLaVA's transformers did) or 0.0 (newer transformers). */
  padValue?: number;
  /** How images are decoded: EXIF policy and pixel budget, the training config's (`imageOptionsOf(config.data)`). */
  image?: DecodeOptions;
}

/** Tags whose queries go through the text tower in one batch. */
const TEXT_BATCH = 256;

/**
 * An open detector with the text embeddings of its current tags. Each tag's embedding is computed once and
 * cached, so per-image tag lists (RAM++ output) cost one text-tower pass per distinct tag over a whole dataset.
 */
export class Owlv2Session {
  private queries: tf.Tensor3D | null = null; // [1,Q,P]
  private tagList: string[] = [];
  private readonly embeddings = new Map<string, tf.Tensor1D>(); // tag -> [P]

  constructor(
    readonly model: Owlv2Detector,
    readonly tokenizer: TextTokenizer,
    /** Where it was loaded from (for messages). */
    readonly source: string,
  ) {}

  static async open(dir: string): Promise<Owlv2Session> {
    const loaded: LoadedOwlv2 = await loadOwlv2(dir);
    return new Owlv2Session(loaded.model, loaded.tokenizer, dir);
  }

  get tags(): readonly string[] {
    return this.tagList;
  }

  /** Input side of the model (960 base, 1008 large). */
  get imageSize(): number {
    return this.model.config.vision.imageSize;
  }

  /** The tags every following image is searched for (their queries are encoded once, then cached). */
  setTags(tags: readonly string[]): void {
    if (tags.length === 0) throw new Error('Owlv2Session.setTags: no tags');
    if (tags.length === this.tagList.length && tags.every((t, i) => t === this.tagList[i])) return;
    const missing = [...new Set(tags)].filter((t) => !this.embeddings.has(t));
    for (let i = 0; i < missing.length; i += TEXT_BATCH) {
      const batch = missing.slice(i, i + TEXT_BATCH);
      const tokens = tokenizeQueries(this.tokenizer, batch.map(queryText), this.model.config.text);
      const rows = tf.tidy(() => tf.unstack(this.model.queryEmbeds(tokens).embeds) as tf.Tensor1D[]); // Q x [P]
      batch.forEach((t, j) => this.embeddings.set(t, rows[j]!));
    }
    const next = tf.tidy(() => tf.stack(tags.map((t) => this.embeddings.get(t)!)).expandDims(0) as tf.Tensor3D); // [1,Q,P]
    this.queries?.dispose();
    this.queries = next;
    this.tagList = [...tags];
  }

  /** Raw model outputs for one decoded image: logits [N*Q] and pred_boxes [N*4] (host copies). */
  async rawOutputs(img: RgbImage, padValue = MGLLAVA_PAD_VALUE): Promise<{ logits: Float32Array; predBoxes: Float32Array }> {
    if (!this.queries) throw new Error('Owlv2Session: setTags first');
    const size = this.imageSize;
    const { pixels } = owlv2Preprocess(img, { size, padValue });
    const [logits, boxes] = tf.tidy(() => {
      const x = tf.tensor4d(pixels, [1, size, size, 3]);
      const { feats } = this.model.imageFeatures(x); // [1,N,Dv]
      return [this.model.classPredictor(feats, this.queries!, null).logits, this.model.boxPredictor(feats)];
    });
    try {
      return { logits: (await logits.data()) as Float32Array, predBoxes: (await boxes.data()) as Float32Array };
    } finally {
      logits.dispose();
      boxes.dispose();
    }
  }

  /** MG-LLaVA's boxes (every stage) for one decoded image. */
  async detectImage(img: RgbImage, opts: DetectOptions = {}): Promise<MgllavaBoxes> {
    const { logits, predBoxes } = await this.rawOutputs(img, opts.padValue);
    const rule = { ...MGLLAVA_BOX_RULE, threshold: opts.threshold ?? MGLLAVA_BOX_RULE.threshold, iouThreshold: opts.nms === undefined ? MGLLAVA_BOX_RULE.iouThreshold : opts.nms, limitNum: null };
    return mgllavaBoxes(logits, predBoxes, { width: img.width, height: img.height }, this.tagList, rule);
  }

  /** The box JSON entry of an image file (throws ImageError for a missing or undecodable file). */
  async detectFile(file: string, opts: DetectOptions = {}): Promise<BoxEntry> {
    const img = await decodeImage(file, opts.image);
    return toBoxEntry(await this.detectImage(img, opts));
  }

  dispose(): void {
    this.queries?.dispose();
    this.queries = null;
    for (const e of this.embeddings.values()) e.dispose();
    this.embeddings.clear();
    this.model.dispose();
  }

  /** Patches the model scores per image (for messages). */
  get patches(): number {
    const g = gridOf(this.model.config.vision);
    return g * g;
  }
}

export function toBoxEntry(r: MgllavaBoxes): BoxEntry {
  return { boxes: r.boxes.map((b) => [...b] as BoxEntry['boxes'][number]), labels: [...r.labels], scores: [...r.scores] };
}

/**
 * The detector boxes of one image (chat's `--detector`): opens the detector directory (or reuses an open
 * session), encodes the tags, detects. The caller disposes a session it passed in; one opened here is disposed.
 */
export async function detectBoxes(detector: string | Owlv2Session, image: string, tags: readonly string[], opts: DetectOptions = {}): Promise<BoxEntry> {
  const session = typeof detector === 'string' ? await Owlv2Session.open(detector) : detector;
  try {
    session.setTags(tags);
    return await session.detectFile(image, opts);
  } finally {
    if (typeof detector === 'string') session.dispose();
  }
}
