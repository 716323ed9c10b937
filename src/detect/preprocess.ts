/**
 * OWLv2 image preprocessing exactly as `Owlv2ImageProcessor` (the numpy/scipy one MG-LLaVA ran):
 *
 *   uint8 [H,W,3] -> x * (1/255) (float32) -> pad bottom/right to S = max(H,W) with 0.5 (or 0.0)
 *   -> anti-aliased linear resize S -> size (skimage `resize(order=1, mode='reflect', anti_aliasing=True)`)
 *   -> clip to the padded image's [min, max] -> (x - mean) / std (CLIP, float32) -> pixels [size,size,3] (HWC)
 *
 * The resize is separable (OWLV2.md §8): per axis a Gaussian blur with sigma = max(0, (S/size - 1)/2) (so
 * none when enlarging), radius int(4 sigma + 0.5), mirrored edges (... 2 1 | 0 1 2 ... n-1 | n-2 ...), then a
 * linear zoom sampling source c = (k + 0.5) S/size - 0.5, also mirrored at the edges (torch/TF bilinear clamp
 * there instead). Both are "axis operators": every output index is a fixed list of (source index, weight)
 * taps. We apply them in float64 and round to float32 where scipy stores its passes (after each blur pass,
 * after the zoom), which matches scipy to the last bit or so, and touch only the source rows the zoom samples.
 * Everything runs on the host: it is a few multiply-adds per pixel.
 */
import type { RgbImage } from '../data/image.js';

/** CLIP mean/std (the OWLv2 preprocessor_config.json values). */
export const OWLV2_MEAN = [0.48145466, 0.4578275, 0.40821073] as const;
export const OWLV2_STD = [0.26862954, 0.26130258, 0.27577711] as const;

/** Pad value of every transformers release MG-LLaVA could have used; 0.0 is transformers' newer (PR #41938) choice. */
export const MGLLAVA_PAD_VALUE = 0.5;

export interface Owlv2PreprocessOptions {
  /** Model input side (960 base, 1008 large). */
  size: number;
  /** Padding value in the [0,1] domain, before normalisation. Default 0.5. */
  padValue?: number;
  mean?: readonly number[];
  std?: readonly number[];
}

/** A float32 HWC image. */
export interface FloatImage {
  data: Float32Array;
  height: number;
  width: number;
  channels: number;
}

/** Every output index of an axis operator has `taps` (source index, weight) pairs. */
export interface AxisOperator {
  nIn: number;
  nOut: number;
  taps: number;
  index: Int32Array; // [nOut * taps]
  weight: Float64Array; // [nOut * taps]
}

/** scipy.ndimage mode 'mirror' (numpy 'reflect'): ... 2 1 | 0 1 ... n-1 | n-2 ..., period 2n-2. */
export function mirrorIndex(i: number, n: number): number {
  if (n === 1) return 0;
  const p = 2 * n - 2;
  const m = ((i % p) + p) % p;
  return m >= n ? p - m : m;
}

/** scipy's gaussian_filter1d weights (truncate 4): radius int(4 sigma + 0.5), exp(-x^2 / (2 sigma^2)) normalised. */
export function gaussianWeights(sigma: number): Float64Array {
  const r = Math.trunc(4 * sigma + 0.5);
  const w = new Float64Array(2 * r + 1);
  const c = -0.5 / (sigma * sigma);
  let sum = 0;
  for (let k = -r; k <= r; k++) sum += w[k + r] = Math.exp(c * k * k);
  for (let i = 0; i < w.length; i++) w[i]! /= sum;
  return w;
}

/** gaussian_filter1d(mode='mirror') along an axis of length n. */
export function gaussianOperator(n: number, sigma: number): AxisOperator {
  const w = gaussianWeights(sigma);
  const taps = w.length;
  const r = (taps - 1) / 2;
  const index = new Int32Array(n * taps);
  const weight = new Float64Array(n * taps);
  for (let i = 0; i < n; i++) {
    for (let k = -r; k <= r; k++) {
      index[i * taps + k + r] = mirrorIndex(i + k, n);
      weight[i * taps + k + r] = w[k + r]!;
    }
  }
  return { nIn: n, nOut: n, taps, index, weight };
}

/**
 * scipy.ndimage.zoom(order=1, mode='mirror', grid_mode=True) along one axis: source c = (k + 0.5) nIn/nOut - 0.5,
 * reflected into [0, nIn-1] when outside (c = -0.25 -> 0.25), then linear between floor(c) and floor(c)+1.
 */
export function zoomOperator(nIn: number, nOut: number): AxisOperator {
  const z = nIn / nOut;
  const index = new Int32Array(nOut * 2);
  const weight = new Float64Array(nOut * 2);
  for (let k = 0; k < nOut; k++) {
    let c = (k + 0.5) * z - 0.5;
    if (nIn > 1) {
      const p = 2 * nIn - 2;
      if (c < 0) {
        c = p * Math.trunc(-c / p) + c;
        c = c <= 1 - nIn ? c + p : -c;
      } else if (c > nIn - 1) {
        c -= p * Math.trunc(c / p);
        if (c >= nIn) c = p - c;
      }
    } else {
      c = 0;
    }
    const i0 = Math.floor(c);
    const t = c - i0;
    index[2 * k] = mirrorIndex(i0, nIn);
    weight[2 * k] = 1 - t;
    index[2 * k + 1] = mirrorIndex(i0 + 1, nIn);
    weight[2 * k + 1] = t;
  }
  return { nIn, nOut, taps: 2, index, weight };
}

/** The dense [nOut, nIn] matrix of an operator (duplicate taps summed), float32: for inspection and tests. */
export function operatorMatrix(op: AxisOperator): Float32Array {
  const m = new Float64Array(op.nOut * op.nIn);
  for (let o = 0; o < op.nOut; o++) {
    for (let t = 0; t < op.taps; t++) m[o * op.nIn + op.index[o * op.taps + t]!]! += op.weight[o * op.taps + t]!;
  }
  return Float32Array.from(m);
}

/** HF rescale: float32(u8 * (1/255)), HWC. */
export function rescaleImage(img: RgbImage): FloatImage {
  const f = 1 / 255;
  const src = img.data;
  const out = new Float32Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = src[i]! * f;
  return { data: out, height: img.height, width: img.width, channels: 3 };
}

/** Pad bottom and right to a square of side max(H,W) with `value`; the image stays at the top left. */
export function padBottomRight(img: FloatImage, value: number): FloatImage {
  const { height: h, width: w, channels: ch } = img;
  const s = Math.max(h, w);
  const out = new Float32Array(s * s * ch).fill(value);
  for (let y = 0; y < h; y++) out.set(img.data.subarray(y * w * ch, (y + 1) * w * ch), y * s * ch);
  return { data: out, height: s, width: s, channels: ch };
}

/** Anti-aliasing sigma of an axis shrunk from nIn to nOut (0 when enlarging or keeping the size). */
export function antialiasSigma(nIn: number, nOut: number): number {
  return Math.max(0, (nIn / nOut - 1) / 2);
}

/** scipy skips an axis whose sigma is (numerically) zero. */
const blurs = (sigma: number) => sigma > 1e-15;

/**
 * Row `y` of the blurred image (H pass then W pass, each rounded to float32), or the source row itself when
 * neither axis is blurred. `gh`/`gw` null: no blur along that axis. `cols`: the only columns the caller reads
 * (the W pass skips the others; null = all).
 */
function blurredRow(img: FloatImage, y: number, gh: AxisOperator | null, gw: AxisOperator | null, cols: Int32Array | null): Float32Array {
  const { width: w, channels: ch, data } = img;
  const rowLen = w * ch;
  let row: Float32Array;
  if (gh) {
    const acc = new Float64Array(rowLen);
    const { taps, index, weight } = gh;
    for (let t = 0; t < taps; t++) {
      const src = index[y * taps + t]! * rowLen;
      const wt = weight[y * taps + t]!;
      for (let i = 0; i < rowLen; i++) acc[i]! += wt * data[src + i]!;
    }
    row = Float32Array.from(acc);
  } else {
    row = data.subarray(y * rowLen, (y + 1) * rowLen);
  }
  if (!gw) return row;
  const out = new Float32Array(rowLen);
  const { taps, index, weight } = gw;
  const acc = new Float64Array(ch);
  const n = cols ? cols.length : w;
  for (let k = 0; k < n; k++) {
    const x = cols ? cols[k]! : k;
    acc.fill(0);
    for (let t = 0; t < taps; t++) {
      const wt = weight[x * taps + t]!;
      const src = index[x * taps + t]! * ch;
      for (let c = 0; c < ch; c++) acc[c]! += wt * row[src + c]!;
    }
    for (let c = 0; c < ch; c++) out[x * ch + c] = acc[c]!;
  }
  return out;
}

/** The Gaussian blur alone over the whole image (scipy's `gaussian_filter` stage; the resize only blurs the rows it needs). */
export function gaussianBlur(img: FloatImage, outHeight: number, outWidth: number): FloatImage {
  const sh = antialiasSigma(img.height, outHeight);
  const sw = antialiasSigma(img.width, outWidth);
  const gh = blurs(sh) ? gaussianOperator(img.height, sh) : null;
  const gw = blurs(sw) ? gaussianOperator(img.width, sw) : null;
  const out = new Float32Array(img.data.length);
  const rowLen = img.width * img.channels;
  for (let y = 0; y < img.height; y++) out.set(blurredRow(img, y, gh, gw, null), y * rowLen);
  return { ...img, data: out };
}

/**
 * skimage/scipy anti-aliased linear resize of a float32 HWC image to outHeight x outWidth: blur (when
 * shrinking), zoom (float64 inside, float32 out), clip to the input's [min, max].
 */
export function owlv2Resize(img: FloatImage, outHeight: number, outWidth: number): FloatImage {
  const { height: h, width: w, channels: ch, data } = img;
  const sh = antialiasSigma(h, outHeight);
  const sw = antialiasSigma(w, outWidth);
  const gh = blurs(sh) ? gaussianOperator(h, sh) : null;
  const gw = blurs(sw) ? gaussianOperator(w, sw) : null;
  const zh = zoomOperator(h, outHeight);
  const zw = zoomOperator(w, outWidth);
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < data.length; i++) {
    const v = data[i]!;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  // The zoom reads only these source columns (at most 2 per output column): the W blur computes no others.
  const cols = gw ? Int32Array.from(new Set(Array.from(zw.index).filter((_, i) => zw.weight[i] !== 0))).sort() : null;
  // Blurred rows are needed in increasing order (the zoom is monotone, except where mirroring folds back at
  // the edges): a small cache keyed by row keeps each one computed once.
  const cache = new Map<number, Float32Array>();
  const rowOf = (y: number): Float32Array => {
    let r = cache.get(y);
    if (!r) {
      r = blurredRow(img, y, gh, gw, cols);
      cache.set(y, r);
      if (cache.size > 8) cache.delete(cache.keys().next().value!);
    }
    return r;
  };
  const out = new Float32Array(outHeight * outWidth * ch);
  const col = new Float64Array(w * ch); // one output row after the H zoom (float64, as scipy keeps it)
  const acc = new Float64Array(ch);
  for (let k = 0; k < outHeight; k++) {
    col.fill(0);
    for (let t = 0; t < zh.taps; t++) {
      const wt = zh.weight[k * zh.taps + t]!;
      if (wt === 0) continue;
      const r = rowOf(zh.index[k * zh.taps + t]!);
      for (let i = 0; i < col.length; i++) col[i]! += wt * r[i]!;
    }
    const zi = zw.index;
    const zwt = zw.weight;
    for (let l = 0; l < outWidth; l++) {
      acc.fill(0);
      for (let t = 0; t < zw.taps; t++) {
        const wt = zwt[l * zw.taps + t]!;
        const src = zi[l * zw.taps + t]! * ch;
        for (let c = 0; c < ch; c++) acc[c]! += wt * col[src + c]!;
      }
      const o = (k * outWidth + l) * ch;
      for (let c = 0; c < ch; c++) {
        const v = Math.fround(acc[c]!);
        out[o + c] = v < lo ? lo : v > hi ? hi : v;
      }
    }
  }
  return { data: out, height: outHeight, width: outWidth, channels: ch };
}

/** (x - mean) / std per channel in float32 arithmetic (numpy does it in the image dtype). */
export function normalizeChannels(img: FloatImage, mean: readonly number[] = OWLV2_MEAN, std: readonly number[] = OWLV2_STD): Float32Array {
  const f = Math.fround;
  const ch = img.channels;
  const m = Float32Array.from({ length: ch }, (_, c) => mean[c]!);
  const s = Float32Array.from({ length: ch }, (_, c) => std[c]!);
  const src = img.data;
  const out = new Float32Array(src.length);
  for (let p = 0; p < src.length; p += ch) for (let c = 0; c < ch; c++) out[p + c] = f(src[p + c]! - m[c]!) / s[c]!;
  return out;
}

export interface Owlv2Pixels {
  /** Normalised model input [size, size, 3], HWC (NHWC once batched). */
  pixels: Float32Array;
  size: number;
  /** The original image's size: boxes come back in its pixel frame. */
  width: number;
  height: number;
}

/** The whole chain for one decoded image. */
export function owlv2Preprocess(img: RgbImage, opts: Owlv2PreprocessOptions): Owlv2Pixels {
  const { size } = opts;
  if (!Number.isInteger(size) || size < 1) throw new Error(`owlv2Preprocess: size must be a positive integer, got ${size}`);
  const padded = padBottomRight(rescaleImage(img), opts.padValue ?? MGLLAVA_PAD_VALUE);
  const resized = owlv2Resize(padded, size, size);
  return { pixels: normalizeChannels(resized, opts.mean, opts.std), size, width: img.width, height: img.height };
}
