/**
 * Bicubic resize with Pillow's arithmetic, so the aux image equals what the reference's
 * CLIPImageProcessor (PIL `Image.resize(size, BICUBIC)`, no reducing_gap) produces, bit for bit.
 *
 * Why not sharp: libvips' cubic reduce is close to PIL when shrinking (≤ 5 grey levels), but when
 * enlarging — the common case at aux 768 — libvips interpolates with its own pixel-centre convention and
 * ignores the kernel choice; scripts/pil-compare.ts measured up to 122 grey levels of difference.
 *
 * Pillow's algorithm (facts, re-implemented): separable convolution, horizontal pass first, with an 8-bit
 * intermediate image. Per axis, scale = in/out; the kernel (Keys cubic, a = -0.5, support 2) is stretched
 * by max(scale, 1) so downscaling antialiases; output pixel x takes input pixels [xmin, xmin+n) around
 * centre (x+0.5)·scale, weights k((i - centre + 0.5)/max(scale,1)) normalized to sum 1, then converted to
 * fixed point with 22 fractional bits (rounded half away from zero); each output value is
 * (2^21 + Σ in·w) >> 22, clamped to [0, 255].
 */
import type { RgbImage } from './image.js';

const PRECISION_BITS = 22; // 32 - 8 - 2, Pillow's 8-bit precision
const HALF = 1 << (PRECISION_BITS - 1);
const MAX_ACC = 256 << PRECISION_BITS;

function cubic(x: number): number {
  const a = -0.5;
  x = Math.abs(x);
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

interface Taps {
  /** First input index per output index. */
  start: Int32Array;
  /** Number of taps per output index. */
  count: Int32Array;
  /** Fixed-point weights, `width` per output index. */
  weights: Int32Array;
  width: number;
}

function taps(inSize: number, outSize: number): Taps {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = 2 * filterScale;
  const width = Math.ceil(support) * 2 + 1;
  const start = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const weights = new Int32Array(outSize * width);
  const k = new Float64Array(width);
  for (let o = 0; o < outSize; o++) {
    const centre = (o + 0.5) * scale;
    // C casts truncate toward zero; negative starts clamp to 0 either way.
    const lo = Math.max(Math.trunc(centre - support + 0.5), 0);
    const n = Math.min(Math.trunc(centre + support + 0.5), inSize) - lo;
    let sum = 0;
    for (let i = 0; i < n; i++) {
      k[i] = cubic((i + lo - centre + 0.5) / filterScale);
      sum += k[i]!;
    }
    for (let i = 0; i < n; i++) {
      const w = sum !== 0 ? k[i]! / sum : k[i]!;
      weights[o * width + i] = w < 0 ? Math.trunc(-0.5 + w * (1 << PRECISION_BITS)) : Math.trunc(0.5 + w * (1 << PRECISION_BITS));
    }
    start[o] = lo;
    count[o] = n;
  }
  return { start, count, weights, width };
}

const clip8 = (acc: number) => (acc <= 0 ? 0 : acc >= MAX_ACC ? 255 : acc >> PRECISION_BITS);

/** Resize an RGB image to outWidth×outHeight like PIL `Image.resize((w, h), Image.BICUBIC)`. */
export function resizeBicubicPil(img: RgbImage, outWidth: number, outHeight: number): RgbImage {
  const { width: W, height: H, data } = img;
  if (outWidth === W && outHeight === H) return img;
  // Horizontal pass: [H, W, 3] -> [H, outWidth, 3], 8-bit.
  let mid = data;
  if (outWidth !== W) {
    const t = taps(W, outWidth);
    mid = new Uint8Array(H * outWidth * 3);
    for (let y = 0; y < H; y++) {
      const row = y * W * 3;
      for (let o = 0; o < outWidth; o++) {
        const base = o * t.width;
        let r = HALF;
        let g = HALF;
        let b = HALF;
        for (let i = 0, p = row + t.start[o]! * 3; i < t.count[o]!; i++, p += 3) {
          const w = t.weights[base + i]!;
          r += data[p]! * w;
          g += data[p + 1]! * w;
          b += data[p + 2]! * w;
        }
        const q = (y * outWidth + o) * 3;
        mid[q] = clip8(r);
        mid[q + 1] = clip8(g);
        mid[q + 2] = clip8(b);
      }
    }
  }
  if (outHeight === H) return { data: mid, width: outWidth, height: H };
  // Vertical pass: [H, outWidth, 3] -> [outHeight, outWidth, 3].
  const t = taps(H, outHeight);
  const out = new Uint8Array(outHeight * outWidth * 3);
  const stride = outWidth * 3;
  for (let o = 0; o < outHeight; o++) {
    const base = o * t.width;
    const first = t.start[o]! * stride;
    const n = t.count[o]!;
    for (let x = 0; x < stride; x++) {
      let acc = HALF;
      for (let i = 0, p = first + x; i < n; i++, p += stride) acc += mid[p]! * t.weights[base + i]!;
      out[o * stride + x] = clip8(acc);
    }
  }
  return { data: out, width: outWidth, height: outHeight };
}
