/**
 * Samples → a batch of host arrays (no tensors here: the model side uploads what it needs, and a batch
 * waiting in the prefetch queue holds no backend memory).
 *
 * Text is padded on the right to the longest sample (`pad id` in input_ids, IGNORE_INDEX in labels,
 * attention mask 0). The mask is the true one (1 on real tokens); the reference's all-True collate mask is
 * a quirk the model side may reproduce (REFERENCE §g), it is not baked in here. Images stack to NHWC;
 * a text-only sample gets a zero image in its slot (as the reference's dataset gives it) and `hasImage`
 * false. Boxes stay per sample (K varies), already in aux-image pixels.
 */
import { IGNORE_INDEX } from './constants.js';

export interface Sample {
  /** Position in the dataset. */
  index: number;
  id: string;
  inputIds: Int32Array; // [T_b], IMAGE_TOKEN_INDEX (-200) at the image position
  labels: Int32Array; // [T_b], IGNORE_INDEX (-100) where unsupervised
  hasImage: boolean;
  /** [auxSize, auxSize, 3] normalized; null for text-only samples. */
  aux: Float32Array | null;
  /** [lowresSize, lowresSize, 3] normalized; null for text-only samples. */
  lowres: Float32Array | null;
  /** [K, 4] xyxy in aux-image pixels (K ≥ 1: dummy boxes as in the reference). */
  boxes: Float32Array;
  boxLabels: string[];
}

export interface Batch {
  indices: number[];
  ids: string[];
  size: number; // B
  seqLen: number; // T = longest sample
  inputIds: Int32Array; // [B, T]
  labels: Int32Array; // [B, T]
  attentionMask: Uint8Array; // [B, T]
  lengths: Int32Array; // [B]
  hasImage: boolean[];
  auxSize: number;
  lowresSize: number;
  aux: Float32Array; // [B, auxSize, auxSize, 3]
  lowres: Float32Array; // [B, lowresSize, lowresSize, 3]
  boxes: Float32Array[]; // B × [K_b, 4]
  boxLabels: string[][];
}

export interface CollateOptions {
  /** Id written into padded input positions (the tokenizer's pad id; masked out anyway). */
  padId: number;
  auxSize: number;
  lowresSize: number;
}

export function collate(samples: readonly Sample[], o: CollateOptions): Batch {
  const B = samples.length;
  if (B === 0) throw new Error('collate: empty batch');
  const T = Math.max(...samples.map((s) => s.inputIds.length));
  const inputIds = new Int32Array(B * T).fill(o.padId);
  const labels = new Int32Array(B * T).fill(IGNORE_INDEX);
  const attentionMask = new Uint8Array(B * T);
  const lengths = new Int32Array(B);
  const auxPer = o.auxSize * o.auxSize * 3;
  const lowPer = o.lowresSize * o.lowresSize * 3;
  const aux = new Float32Array(B * auxPer);
  const lowres = new Float32Array(B * lowPer);
  samples.forEach((s, b) => {
    const n = s.inputIds.length;
    if (s.labels.length !== n) throw new Error(`collate: sample ${s.id} has ${n} input ids but ${s.labels.length} labels`);
    inputIds.set(s.inputIds, b * T);
    labels.set(s.labels, b * T);
    attentionMask.fill(1, b * T, b * T + n);
    lengths[b] = n;
    if (s.hasImage) {
      if (s.aux?.length !== auxPer || s.lowres?.length !== lowPer) {
        throw new Error(`collate: sample ${s.id} images are not [${o.auxSize},${o.auxSize},3] / [${o.lowresSize},${o.lowresSize},3]`);
      }
      aux.set(s.aux, b * auxPer);
      lowres.set(s.lowres, b * lowPer);
    }
  });
  return {
    indices: samples.map((s) => s.index),
    ids: samples.map((s) => s.id),
    size: B,
    seqLen: T,
    inputIds,
    labels,
    attentionMask,
    lengths,
    hasImage: samples.map((s) => s.hasImage),
    auxSize: o.auxSize,
    lowresSize: o.lowresSize,
    aux,
    lowres,
    boxes: samples.map((s) => s.boxes),
    boxLabels: samples.map((s) => s.boxLabels),
  };
}
