/**
 * Image pipeline: decode (sharp) → pad to square → CLIP preprocessing at the aux size → low-res image.
 *
 * Layout: every float image is HWC, row-major, float32 — `[S,S,3]` — because the model consumes NHWC
 * tensors (tf convs); a batch stacks them to `[B,S,S,3]`. The low-res image is derived from the
 * *normalized* aux image by bilinear resizing (half-pixel centres, no antialias), exactly as the
 * reference does with `F.interpolate(..., align_corners=False)` — not a separate preprocessing of the raw
 * image (REFERENCE §0, pitfall 6).
 *
 * Reference facts reproduced: expand2square fill = `int(255*mean)` per channel (122,116,104 for CLIP), image
 * pasted at `((side-w)//2, (side-h)//2)`; resize shortest edge to S (bicubic) + centre crop S; `/255`, then
 * `(x - mean) / std`. sharp only decodes: the resize reproduces PIL's bicubic bit for bit (resample.ts;
 * sharp's own resize is not PIL's, see scripts/pil-compare.ts). Decoding is PIL's `Image.open(f).convert('RGB')`:
 *   - EXIF orientation is NOT applied by default (`exifOrientation: 'ignore'`, PIL's `Image.open` does not
 *     rotate): boxes are in the stored pixel frame. `'apply'` rotates the image, and then the boxes must be
 *     in the rotated frame. Every image load (training, eval, chat, data check/show, box generation) takes
 *     this one policy from `data.exif_orientation` through `imageOptionsOf` — never a default of its own.
 *   - CMYK (JPEG, TIFF) converts with PIL's ICC-free formula `R = (255-K) - round((255-K)·C/255)` (cmyk.ts),
 *     not through a colour profile; Adobe-inverted JPEG values are un-inverted first, as PIL does.
 *   - Embedded ICC profiles are ignored, as PIL's convert does.
 *
 * Safety: a record's image path must stay inside the image folder (no absolute paths, no `..` escape, no
 * symlink leading out); an image whose padded square (longer side²) exceeds the pixel budget
 * (`data.max_image_pixels`, default PIL's decompression-bomb threshold) is refused from its header, before
 * anything is allocated, and sharp's own input limit (0x3FFF²) stays on.
 */
import { realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import sharp, { type Metadata } from 'sharp';
import { DataError } from '../errors.js';
import { squareGeometry, type SquareGeometry } from './boxes.js';
import { cmykToRgbPil } from './cmyk.js';
import { DEFAULT_MAX_IMAGE_PIXELS, type DecodeOptions } from './image-options.js';
import { resizeBicubicPil } from './resample.js';

export interface ImageNorm {
  mean: readonly [number, number, number];
  std: readonly [number, number, number];
}

/** OpenAI CLIP normalization (`CLIPImageProcessor` image_mean / image_std). */
export const CLIP_NORM: ImageNorm = {
  mean: [0.48145466, 0.4578275, 0.40821073],
  std: [0.26862954, 0.26130258, 0.27577711],
};

/** expand2square fill: `tuple(int(255*m) for m in mean)` — truncation, (122,116,104) for CLIP. */
export function padFill(norm: ImageNorm = CLIP_NORM): [number, number, number] {
  return [Math.trunc(255 * norm.mean[0]), Math.trunc(255 * norm.mean[1]), Math.trunc(255 * norm.mean[2])];
}

export type ImageErrorKind = 'missing' | 'undecodable' | 'outside' | 'too_large';

export class ImageError extends DataError {
  constructor(
    readonly kind: ImageErrorKind,
    /** The path as given in the record, or the resolved file when the record path was fine. */
    readonly path: string,
    readonly detail: string,
  ) {
    super(`${path}: ${detail}`);
    this.name = 'ImageError';
  }
}

/** 8-bit RGB, HWC, row-major. */
export interface RgbImage {
  data: Uint8Array;
  width: number;
  height: number;
}

const realRoots = new Map<string, Promise<string>>();

/**
 * Resolve a record's image path against the image folder, refusing anything that lands outside it
 * (absolute paths, `..` segments that escape, symlinks pointing out). Throws ImageError.
 */
export async function resolveImagePath(imageDir: string, rel: string): Promise<string> {
  if (path.isAbsolute(rel)) throw new ImageError('outside', rel, `absolute image path: must be relative to the image folder ${imageDir}`);
  const root = path.resolve(imageDir);
  const file = path.resolve(root, rel);
  if (!isInside(root, file)) throw new ImageError('outside', rel, `image path resolves outside the image folder ${imageDir}`);
  let real: string;
  try {
    real = await realpath(file);
  } catch {
    throw new ImageError('missing', file, 'image file not found');
  }
  let realRoot = realRoots.get(root);
  if (!realRoot) {
    realRoot = realpath(root);
    realRoots.set(root, realRoot);
  }
  if (!isInside(await realRoot, real)) throw new ImageError('outside', rel, `image path is a link leading outside the image folder ${imageDir}`);
  return file;
}

function isInside(root: string, file: string): boolean {
  const r = path.relative(root, file);
  return r !== '' && !r.startsWith(`..${path.sep}`) && r !== '..' && !path.isAbsolute(r);
}

// The decode policy (EXIF orientation, pixel budget) is defined in image-options.ts, which loads no sharp.
export { DEFAULT_MAX_IMAGE_PIXELS, imageOptionsOf, type DecodeOptions, type ExifOrientation } from './image-options.js';

/** What the header says, before decoding. */
export interface ImageHeader {
  /** Stored size (before any EXIF rotation). */
  width: number;
  height: number;
  /** EXIF orientation tag, 1 (none) .. 8; 1 when absent. */
  orientation: number;
  /** libvips colour space of the stored pixels ('srgb', 'b-w', 'cmyk', ...). */
  space: string;
}

/** EXIF orientations 5..8 swap width and height when applied. */
export function orientationSwapsSides(orientation: number): boolean {
  return orientation >= 5 && orientation <= 8;
}

/** The EXIF orientation tag in words (for `data check`). */
export function describeOrientation(o: number): string {
  const words: Record<number, string> = {
    2: 'mirrored',
    3: 'rotated 180°',
    4: 'flipped vertically',
    5: 'mirrored and rotated 90° counter-clockwise',
    6: 'rotated 90° clockwise',
    7: 'mirrored and rotated 90° clockwise',
    8: 'rotated 90° counter-clockwise',
  };
  return words[o] ?? `orientation ${o}`;
}

/** sharp's names of the raster formats both it and PIL read. */
const PIXEL_FORMATS = new Set(['jpeg', 'png', 'webp', 'gif', 'tiff', 'heif', 'jp2', 'ppm', 'bmp']);

async function checkRegularFile(file: string): Promise<void> {
  try {
    const s = await stat(file);
    if (!s.isFile()) throw new ImageError('missing', file, 'not a regular file');
  } catch (e) {
    if (e instanceof ImageError) throw e;
    throw new ImageError('missing', file, 'image file not found');
  }
}

const fmtMp = (px: number) => `${(px / 1e6).toFixed(1)} MP`;

/** libvips repeats a warning once per line it hit ("VipsJpeg: premature end of JPEG image" x5): one line, each once. */
function oneLine(msg: string): string {
  const kept: string[] = [];
  for (const line of msg.split('\n').map((l) => l.trim())) if (line && !kept.some((k) => k.includes(line))) kept.push(line);
  return kept.join('; ');
}

/** Read the header and refuse an image over the pixel budget (nothing decoded yet). Throws ImageError. */
export async function readImageHeader(file: string, opts: DecodeOptions = {}): Promise<ImageHeader> {
  await checkRegularFile(file);
  let m: Metadata;
  try {
    // Header only (no pixels are decoded): the pixel checks below and sharp's limit at decode time apply.
    m = await sharp(file, { failOn: 'warning', limitInputPixels: false }).metadata();
  } catch (e) {
    throw new ImageError('undecodable', file, `cannot decode image: ${oneLine((e as Error).message)}`);
  }
  if (!m.width || !m.height) throw new ImageError('undecodable', file, 'image header has no size');
  if (!PIXEL_FORMATS.has(m.format ?? '')) {
    // An SVG would be rasterised at a size of sharp's choosing, its external images silently left blank; PIL (the
    // reference) opens none of these formats.
    throw new ImageError('undecodable', file, `${String(m.format).toUpperCase()} is not a photo format the reference (PIL) reads: convert it to PNG or JPEG first`);
  }
  const header = { width: m.width, height: m.height, orientation: m.orientation ?? 1, space: m.space ?? 'srgb' };
  const budget = opts.maxPixels === undefined ? DEFAULT_MAX_IMAGE_PIXELS : opts.maxPixels;
  const side = Math.max(header.width, header.height);
  if (budget !== null && side * side > budget) {
    throw new ImageError(
      'too_large',
      file,
      `image is ${header.width}x${header.height}: its padded square ${side}x${side} (${fmtMp(side * side)}) is over the pixel budget ` +
        `of ${fmtMp(budget)} (data.max_image_pixels = ${budget}); downscale the image (and its boxes), or raise the budget`,
    );
  }
  return header;
}

/**
 * Decode any format sharp reads to 8-bit RGB as PIL's `Image.open(f).convert('RGB')` does (alpha dropped,
 * greyscale expanded, CMYK by PIL's formula, EXIF orientation per `exifOrientation`). Throws ImageError.
 */
export async function decodeImage(file: string, opts: DecodeOptions = {}): Promise<RgbImage> {
  const header = await readImageHeader(file, opts);
  const apply = (opts.exifOrientation ?? 'ignore') === 'apply';
  try {
    const input = sharp(file, {
      autoOrient: apply,
      failOn: 'warning', // truncated or corrupt data is an error, not a grey patch
      limitInputPixels: true, // sharp's default limit stays on under our own budget
      ignoreIcc: true, // PIL's convert('RGB') keeps the stored values
    });
    if (header.space === 'cmyk') {
      // Keep the stored CMYK (sharp would go through a CMYK ICC profile) and convert as PIL does.
      const { data, info } = await input.pipelineColourspace('cmyk').toColourspace('cmyk').raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
      if (info.channels < 4) throw new Error(`CMYK image decoded to ${info.channels} channels`);
      return { data: cmykToRgbPil(data, info.channels), width: info.width, height: info.height };
    }
    const { data, info } = await input.removeAlpha().toColourspace('srgb').raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) throw new Error(`decoded to ${info.channels} channels, expected 3`);
    return { data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength), width: info.width, height: info.height };
  } catch (e) {
    throw new ImageError('undecodable', file, `cannot decode image: ${oneLine((e as Error).message)}`);
  }
}

/** expand2square: paste the image centred on a `side×side` canvas of colour `fill`. */
export function expandToSquare(img: RgbImage, fill: readonly [number, number, number]): { image: RgbImage; padding: SquareGeometry } {
  // Offsets ((side-w)//2, (side-h)//2): the same geometry the box pipeline shifts boxes by.
  const padding = squareGeometry(img.width, img.height);
  const { side, dx, dy } = padding;
  if (side === img.width && side === img.height) return { image: img, padding };
  const out = new Uint8Array(side * side * 3);
  for (let i = 0; i < side * side; i++) {
    out[3 * i] = fill[0];
    out[3 * i + 1] = fill[1];
    out[3 * i + 2] = fill[2];
  }
  const row = img.width * 3;
  for (let y = 0; y < img.height; y++) {
    out.set(img.data.subarray(y * row, (y + 1) * row), ((y + dy) * side + dx) * 3);
  }
  return { image: { data: out, width: side, height: side }, padding };
}

/**
 * CLIPImageProcessor geometry: resize the shortest edge to `size` (PIL bicubic, see resample.ts; long edge
 * `int(size*long/short)`), then centre crop `size×size` at `((w-size)//2, (h-size)//2)`. On the square
 * images MG-LLaVA feeds it this is a plain resize.
 */
export function resizeShortestEdgeAndCrop(img: RgbImage, size: number): RgbImage {
  const short = Math.min(img.width, img.height);
  const w = img.width === short ? size : Math.trunc((size * img.width) / short);
  const h = img.height === short ? size : Math.trunc((size * img.height) / short);
  const resized = resizeBicubicPil(img, w, h);
  if (w === size && h === size) return resized;
  const left = Math.floor((w - size) / 2);
  const top = Math.floor((h - size) / 2);
  const out = new Uint8Array(size * size * 3);
  for (let y = 0; y < size; y++) {
    const from = ((y + top) * w + left) * 3;
    out.set(resized.data.subarray(from, from + size * 3), y * size * 3);
  }
  return { data: out, width: size, height: size };
}

/** `(x/255 - mean) / std` per channel, HWC uint8 → HWC float32 (through a 3×256 lookup table). */
export function normalizeImage(img: RgbImage, norm: ImageNorm = CLIP_NORM): Float32Array {
  const lut = new Float32Array(768);
  for (let c = 0; c < 3; c++) {
    for (let v = 0; v < 256; v++) lut[c * 256 + v] = (v / 255 - norm.mean[c]!) / norm.std[c]!;
  }
  const n = img.width * img.height;
  const out = new Float32Array(n * 3);
  const d = img.data;
  for (let i = 0; i < n; i++) {
    out[3 * i] = lut[d[3 * i]!]!;
    out[3 * i + 1] = lut[256 + d[3 * i + 1]!]!;
    out[3 * i + 2] = lut[512 + d[3 * i + 2]!]!;
  }
  return out;
}

/** Source taps of a half-pixel-centre linear resize along one axis (torch align_corners=False). */
function linearTaps(inSize: number, outSize: number): { i0: Int32Array; i1: Int32Array; t: Float32Array } {
  const scale = inSize / outSize;
  const i0 = new Int32Array(outSize);
  const i1 = new Int32Array(outSize);
  const t = new Float32Array(outSize);
  for (let o = 0; o < outSize; o++) {
    // Negative source coordinates clamp to 0 (torch clamps; TF's floor/ceil clamping gives the same value).
    const src = Math.max((o + 0.5) * scale - 0.5, 0);
    const f = Math.floor(src);
    i0[o] = Math.min(f, inSize - 1);
    i1[o] = Math.min(f + 1, inSize - 1);
    t[o] = src - f;
  }
  return { i0, i1, t };
}

/**
 * Bilinear resize, half-pixel centres, no antialias: equals torch `F.interpolate(mode='bilinear',
 * align_corners=False)` and `tf.image.resizeBilinear(x, size, false, true)`. HWC float32 in and out.
 */
export function resizeBilinear(src: Float32Array, height: number, width: number, channels: number, outHeight: number, outWidth: number): Float32Array {
  if (src.length !== height * width * channels) throw new Error(`resizeBilinear: ${src.length} values for ${height}x${width}x${channels}`);
  const ys = linearTaps(height, outHeight);
  const xs = linearTaps(width, outWidth);
  const out = new Float32Array(outHeight * outWidth * channels);
  for (let oy = 0; oy < outHeight; oy++) {
    const r0 = ys.i0[oy]! * width * channels;
    const r1 = ys.i1[oy]! * width * channels;
    const ty = ys.t[oy]!;
    for (let ox = 0; ox < outWidth; ox++) {
      const c0 = xs.i0[ox]! * channels;
      const c1 = xs.i1[ox]! * channels;
      const tx = xs.t[ox]!;
      const o = (oy * outWidth + ox) * channels;
      for (let c = 0; c < channels; c++) {
        const top = src[r0 + c0 + c]! + (src[r0 + c1 + c]! - src[r0 + c0 + c]!) * tx;
        const bottom = src[r1 + c0 + c]! + (src[r1 + c1 + c]! - src[r1 + c0 + c]!) * tx;
        out[o + c] = top + (bottom - top) * ty;
      }
    }
  }
  return out;
}

export interface ImageSizes {
  /** Aux (ConvNeXt) image side: 768 full size, 128 in the demo. */
  auxSize: number;
  /** Low-res (ViT) image side: 336 full size, 56 in the demo. */
  lowresSize: number;
}

export interface PreparedImage {
  aux: Float32Array; // [auxSize, auxSize, 3]
  lowres: Float32Array; // [lowresSize, lowresSize, 3]
  /** Size after decoding (and orientation), before padding. */
  width: number;
  height: number;
  padding: SquareGeometry;
}

export interface PrepareOptions extends ImageSizes, DecodeOptions {
  norm?: ImageNorm;
}

/** Decoded image → the two model inputs. */
export function prepareDecoded(img: RgbImage, opts: PrepareOptions): PreparedImage {
  const norm = opts.norm ?? CLIP_NORM;
  const { image: square, padding } = expandToSquare(img, padFill(norm));
  const resized = resizeShortestEdgeAndCrop(square, opts.auxSize);
  const aux = normalizeImage(resized, norm);
  const lowres = resizeBilinear(aux, opts.auxSize, opts.auxSize, 3, opts.lowresSize, opts.lowresSize);
  return { aux, lowres, width: img.width, height: img.height, padding };
}

/** Image file → the two model inputs. Throws ImageError naming the file. */
export async function prepareImage(file: string, opts: PrepareOptions): Promise<PreparedImage> {
  const img = await decodeImage(file, opts);
  try {
    return prepareDecoded(img, opts);
  } catch (e) {
    throw new ImageError('undecodable', file, `image preprocessing failed: ${(e as Error).message}`);
  }
}
