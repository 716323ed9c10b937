/**
 * An image (and its detector boxes) -> the visual tokens generation splices in.
 *
 *   file -> prepareImage (pad to square, aux + low-res at the model's sizes)
 *   boxes -> preprocessBoxes with the inference rule (NMS 0.2, 20 per label when > 100 boxes), or the
 *            dummy [0,0,0,0] box of an image without detections when none are given
 *   -> encodeFrozen + visualTokens for a batch of images, split into one VisualTokens per image
 *
 * With a fixed model the visual tokens are a pure function of image + boxes, so callers cache them per
 * image (eval asks several questions about each image).
 */
import * as tf from '@tensorflow/tfjs';
import { preprocessBoxes, type Box } from '../data/boxes.js';
import { prepareImage, type DecodeOptions } from '../data/image.js';
import type { BoxEntry } from '../data/records.js';
import { disposeFrozen, imageSizesOf, type MGLLaVA } from '../model/mgllava.js';
import type { VisualTokens } from './generate.js';

/** `chat_preprocess_multi_modal`'s box rule (REFERENCE (i)): NMS IoU 0.2, per-label cap when > 100 boxes. */
export const INFERENCE_BOX_RULE = { nmsThreshold: 0.2, limitNum: 100 } as const;

/** Aux and low-res sides of a model (defined with the model). */
export { imageSizesOf };

/** One image ready for the frozen encoders (HWC float32). */
export interface ImageInput {
  lowres: Float32Array; // [S,S,3]
  aux: Float32Array; // [A,A,3]
  /** In aux-image pixels (never empty); null when the model makes no object tokens. */
  boxes: Box[] | null;
}

const NO_BOXES: BoxEntry = { boxes: [], labels: [], scores: [] };

/**
 * Read and preprocess one image with its detector entry (null: no detections, the dummy box). `image`: the
 * run's EXIF policy and pixel budget, `imageOptionsOf(run.config.data)` (default: the reference's, ignore).
 */
export async function loadImageInput(model: MGLLaVA, file: string, entry: BoxEntry | null, image: DecodeOptions = {}): Promise<ImageInput> {
  const sizes = imageSizesOf(model.config);
  const img = await prepareImage(file, { ...sizes, ...image });
  const boxes = model.objects
    ? preprocessBoxes(entry ?? NO_BOXES, { origW: img.width, origH: img.height, auxSize: sizes.auxSize, ...INFERENCE_BOX_RULE }).boxes
    : null;
  return { lowres: img.lowres, aux: img.aux, boxes };
}

/** Visual tokens of a batch of images, one entry per image (the caller disposes them: `disposeVisual`). */
export function visualTokensFor(model: MGLLaVA, inputs: readonly ImageInput[]): VisualTokens[] {
  const n = inputs.length;
  if (n === 0) return [];
  const { auxSize, lowresSize } = imageSizesOf(model.config);
  const stackPixels = (key: 'lowres' | 'aux', side: number) => {
    const per = side * side * 3;
    const data = new Float32Array(n * per);
    inputs.forEach((x, i) => {
      if (x[key].length !== per) throw new Error(`visual: image ${i} ${key} has ${x[key].length} values, expected ${side}x${side}x3`);
      data.set(x[key], i * per);
    });
    return tf.tensor4d(data, [n, side, side, 3]);
  };
  const flat = tf.tidy(() => {
    const pixels = stackPixels('lowres', lowresSize); // [n,S,S,3]
    const pixelsAux = model.visionAux ? stackPixels('aux', auxSize) : null; // [n,A,A,3]
    const frozen = model.encodeFrozen(pixels, pixelsAux, model.objects ? inputs.map((x) => x.boxes!) : null);
    const v = model.visualTokens(frozen);
    disposeFrozen(frozen);
    const images = tf.unstack(v.image) as tf.Tensor2D[]; // n x [N,H]
    return [...images, ...(v.objects ?? [])];
  });
  return Array.from({ length: n }, (_, i) => ({ image: flat[i] as tf.Tensor2D, objects: model.objects ? (flat[n + i] as tf.Tensor2D) : null }));
}

export function disposeVisual(v: VisualTokens): void {
  v.image.dispose();
  v.objects?.dispose();
}
