/**
 * "What the model sees" as a PNG (`data show N --save-image`, `chat --show-boxes`): the preprocessed aux image,
 * denormalised, with the boxes that became object tokens drawn and numbered 1..K in object-token order, and
 * the low-res (ViT) image beside it at the same displayed size.
 *
 *   | aux (S x S), boxes + numbers | GAP | low-res, nearest-upscaled to S x S |     S = auxSize * scale
 *
 * `scale` = max(1, floor(512 / auxSize)) so that a 128 px demo image is drawn at 512 px (numbers readable);
 * at full size (768) it is 1. Box k's outline uses BOX_COLOURS[(k-1) % n]; its number sits in a dark tag at
 * the box's top-left corner (inside the canvas). The dummy box [0,0,0,0] of an image without detections is
 * not drawn.
 */
import sharp from 'sharp';
import { writeFileAtomic } from '../io/output-file.js';
import { CLIP_NORM, type ImageNorm, type RgbImage } from './image.js';

export interface ViewInput {
  /** [auxSize, auxSize, 3] normalised (PreparedImage.aux). */
  aux: Float32Array;
  auxSize: number;
  /** [lowresSize, lowresSize, 3] normalised. */
  lowres: Float32Array;
  lowresSize: number;
  /** Object-token boxes in aux pixels (BoxResult.boxes). */
  boxes: readonly (readonly number[])[];
  norm?: ImageNorm;
}

export const VIEW_GAP = 8;
const GAP_COLOUR: [number, number, number] = [255, 255, 255];
const TAG_COLOUR: [number, number, number] = [0, 0, 0];
export const BOX_COLOURS: readonly [number, number, number][] = [
  [255, 0, 0],
  [0, 255, 0],
  [0, 128, 255],
  [255, 255, 0],
  [255, 0, 255],
  [0, 255, 255],
  [255, 128, 0],
  [128, 0, 255],
];

/** Display scale of an aux side. */
export function viewScale(auxSize: number): number {
  return Math.max(1, Math.floor(512 / auxSize));
}

/** Pixel size of one font dot: the 3x5 digits stay readable at any panel size (3 at 512 px, 4 at 768). */
export function glyphSize(panel: number): number {
  return Math.max(2, Math.floor(panel / 170));
}

/** Output size of renderView. */
export function viewSize(auxSize: number): { width: number; height: number; panel: number } {
  const panel = auxSize * viewScale(auxSize);
  return { width: 2 * panel + VIEW_GAP, height: panel, panel };
}

/** `(x * std + mean) * 255`, rounded and clamped: the inverse of normalizeImage (exact on its outputs). */
function denormalise(v: number, c: number, norm: ImageNorm): number {
  return Math.min(255, Math.max(0, Math.round((v * norm.std[c]! + norm.mean[c]!) * 255)));
}

export function renderView(v: ViewInput): RgbImage {
  const norm = v.norm ?? CLIP_NORM;
  if (v.aux.length !== v.auxSize * v.auxSize * 3) throw new Error(`renderView: aux has ${v.aux.length} values, expected ${v.auxSize}x${v.auxSize}x3`);
  if (v.lowres.length !== v.lowresSize * v.lowresSize * 3) throw new Error(`renderView: lowres has ${v.lowres.length} values, expected ${v.lowresSize}x${v.lowresSize}x3`);
  const scale = viewScale(v.auxSize);
  const { width, height, panel } = viewSize(v.auxSize);
  const out = new Uint8Array(width * height * 3);
  const put = (x: number, y: number, rgb: readonly number[]) => {
    if (x < 0 || y < 0 || x >= width || y >= height) return;
    out.set(rgb, (y * width + x) * 3);
  };
  // The two panels (nearest-neighbour upscaling) and the gap between them.
  for (let y = 0; y < panel; y++) {
    for (let x = 0; x < panel; x++) {
      const a = (Math.floor(y / scale) * v.auxSize + Math.floor(x / scale)) * 3;
      put(x, y, [0, 1, 2].map((c) => denormalise(v.aux[a + c]!, c, norm)));
      const ly = Math.floor((y * v.lowresSize) / panel);
      const lx = Math.floor((x * v.lowresSize) / panel);
      const l = (ly * v.lowresSize + lx) * 3;
      put(panel + VIEW_GAP + x, y, [0, 1, 2].map((c) => denormalise(v.lowres[l + c]!, c, norm)));
    }
    for (let x = panel; x < panel + VIEW_GAP; x++) put(x, y, GAP_COLOUR);
  }
  // Boxes: outline, then the number tag, so that a later box's outline never hides an earlier number.
  const drawn = v.boxes
    .map((b, i) => ({ b, k: i + 1 }))
    .filter(({ b }) => !(b[0] === 0 && b[1] === 0 && b[2] === 0 && b[3] === 0));
  const clampPx = (p: number) => Math.min(panel - 1, Math.max(0, p));
  const thick = Math.max(1, Math.floor(scale / 2));
  for (const { b, k } of drawn) {
    const colour = BOX_COLOURS[(k - 1) % BOX_COLOURS.length]!;
    const x1 = clampPx(Math.round(Math.min(b[0]!, b[2]!) * scale));
    const x2 = clampPx(Math.round(Math.max(b[0]!, b[2]!) * scale) - 1);
    const y1 = clampPx(Math.round(Math.min(b[1]!, b[3]!) * scale));
    const y2 = clampPx(Math.round(Math.max(b[1]!, b[3]!) * scale) - 1);
    for (let t = 0; t < thick; t++) {
      for (let x = x1; x <= x2; x++) {
        put(x, Math.min(y2, y1 + t), colour);
        put(x, Math.max(y1, y2 - t), colour);
      }
      for (let y = y1; y <= y2; y++) {
        put(Math.min(x2, x1 + t), y, colour);
        put(Math.max(x1, x2 - t), y, colour);
      }
    }
  }
  const glyph = glyphSize(panel);
  for (const { b, k } of drawn) {
    const colour = BOX_COLOURS[(k - 1) % BOX_COLOURS.length]!;
    drawNumber(put, String(k), clampPx(Math.round(Math.min(b[0]!, b[2]!) * scale)), clampPx(Math.round(Math.min(b[1]!, b[3]!) * scale)), glyph, colour, panel);
  }
  return { data: out, width, height };
}

/** The view of an inference input (infer/visual.ts ImageInput): its boxes are null for a model without object tokens. */
export function viewOfInput(input: { aux: Float32Array; lowres: Float32Array; boxes: readonly (readonly number[])[] | null }, sizes: { auxSize: number; lowresSize: number }): ViewInput {
  return { aux: input.aux, lowres: input.lowres, boxes: input.boxes ?? [], ...sizes };
}

/** Write renderView's image as a PNG; returns its size. */
export async function saveView(file: string, v: ViewInput): Promise<{ width: number; height: number }> {
  const img = renderView(v);
  const png = await sharp(Buffer.from(img.data.buffer, img.data.byteOffset, img.data.byteLength), { raw: { width: img.width, height: img.height, channels: 3 } }).png().toBuffer();
  await writeFileAtomic(file, png, 'the image'); // a full disk leaves no truncated PNG
  return { width: img.width, height: img.height };
}

/** 3x5 digits, rows top to bottom, 3 bits each (MSB = left). */
const DIGITS: Record<string, number[]> = {
  '0': [7, 5, 5, 5, 7],
  '1': [2, 6, 2, 2, 7],
  '2': [7, 1, 7, 4, 7],
  '3': [7, 1, 7, 1, 7],
  '4': [5, 5, 7, 1, 1],
  '5': [7, 4, 7, 1, 7],
  '6': [7, 4, 7, 5, 7],
  '7': [7, 1, 1, 1, 1],
  '8': [7, 5, 7, 5, 7],
  '9': [7, 5, 7, 1, 7],
};

/** A number on a dark tag whose top-left is (x, y), kept inside the panel. */
function drawNumber(put: (x: number, y: number, rgb: readonly number[]) => void, text: string, x: number, y: number, px: number, colour: readonly number[], panel: number): void {
  const w = (text.length * 4 + 1) * px;
  const h = 7 * px;
  const left = Math.min(x, Math.max(0, panel - w));
  const top = Math.min(y, Math.max(0, panel - h));
  for (let yy = 0; yy < h; yy++) for (let xx = 0; xx < w; xx++) put(left + xx, top + yy, TAG_COLOUR);
  [...text].forEach((ch, i) => {
    const rows = DIGITS[ch]!;
    rows.forEach((bits, r) => {
      for (let c = 0; c < 3; c++) {
        if (!((bits >> (2 - c)) & 1)) continue;
        for (let dy = 0; dy < px; dy++) for (let dx = 0; dx < px; dx++) put(left + (1 + i * 4 + c) * px + dx, top + (1 + r) * px + dy, colour);
      }
    });
  });
}

