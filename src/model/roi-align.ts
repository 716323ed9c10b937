/**
 * torchvision `roi_align` (aligned=False, the legacy mode MG-LLaVA uses) in its separable form.
 *
 * For one box, sampling along y and x is independent, so the pooled map is a bilinear form
 * `pooled[k,:,:,c] = Ay[k] @ F[:,:,c] @ Ax[k]^T` with per-axis interpolation matrices Ay [P,H], Ax [P,W]
 * (REFERENCE.md (b)). The matrices depend only on the boxes, so they are built here in plain TS; the
 * feature-dependent part is matmuls, differentiable w.r.t. the features. The mean over the P x P bins
 * (what MG-LLaVA keeps) is `u^T F v` with u = mean_p Ay[p,:], v = mean_q Ax[q,:]: never materialize
 * the [K,C,P,P] map for it (34.5 MiB per box at full size).
 *
 * Coordinates follow the kernel's float32 arithmetic (Math.fround at every step, same operation order),
 * so validity tests and floor() land on the same side as torchvision's fp32 run.
 */
import * as tf from '@tensorflow/tfjs';

export interface RoiAlignOptions {
  /** P: bins per axis (56 for MG-LLaVA's object features, 7 with `last_only`). */
  outputSize: number;
  /** Box coordinates (image pixels) -> feature pixels: feature size / image size. */
  spatialScale: number;
  /** Samples per bin per axis; <= 0 (default -1) = adaptive ceil(extent / P), torchvision's default. */
  samplingRatio?: number;
}

/**
 * Boxes as (x1, y1, x2, y2): a flat array of 4K numbers, or K rows of 4. Rounded to float32 like the
 * reference's `boxes.to(feat.dtype)`.
 */
export type Boxes = Float32Array | ArrayLike<number>[];

/** Flatten and validate boxes to float32 [K*4]. */
export function boxesToFloat32(boxes: Boxes, where = 'roi-align'): Float32Array {
  if (boxes instanceof Float32Array) {
    if (boxes.length % 4 !== 0) throw new Error(`${where}: flat box array has length ${boxes.length}, not a multiple of 4`);
    return boxes;
  }
  const out = new Float32Array(boxes.length * 4);
  boxes.forEach((b, k) => {
    if (b.length !== 4) throw new Error(`${where}: box ${k} has ${b.length} coordinates, expected 4 (x1,y1,x2,y2)`);
    for (let j = 0; j < 4; j++) out[k * 4 + j] = b[j]!;
  });
  for (let i = 0; i < out.length; i++) {
    if (!Number.isFinite(out[i]!)) throw new Error(`${where}: box ${Math.floor(i / 4)} has a non-finite coordinate`);
  }
  return out;
}

const f32 = Math.fround;

/**
 * Interpolation weights of one box along one axis, accumulated into `out` (row-major [P, L], starting at
 * `offset`): row p holds the average over the bin's samples of their two bilinear taps.
 * `lo`, `hi` are the box bounds on this axis in image pixels.
 */
export function roiAxisWeights(
  lo: number,
  hi: number,
  size: number,
  opts: RoiAlignOptions,
  out: Float32Array,
  offset = 0,
): void {
  const P = opts.outputSize;
  const scale = f32(opts.spatialScale);
  const start = f32(f32(lo) * scale); // aligned=False: no half-pixel offset
  const end = f32(f32(hi) * scale);
  const extent = Math.max(f32(end - start), 1); // degenerate / inverted boxes become 1 feature px wide
  const bin = f32(extent / P);
  const sr = opts.samplingRatio ?? -1;
  const grid = Math.max(sr > 0 ? sr : Math.ceil(f32(extent / P)), 1);
  const row = new Float64Array(size);
  for (let p = 0; p < P; p++) {
    row.fill(0);
    const base = f32(start + f32(p * bin));
    for (let i = 0; i < grid; i++) {
      let y = f32(base + f32(f32((i + 0.5) * bin) / grid));
      // Outside [-1, L]: contributes zero but still counts in the divisor.
      if (y < -1 || y > size) continue;
      if (y <= 0) y = 0;
      let yLow = Math.floor(y);
      let yHigh: number;
      if (yLow >= size - 1) {
        yLow = yHigh = size - 1; // both taps on the last pixel
        y = yLow;
      } else {
        yHigh = yLow + 1;
      }
      const ly = f32(y - yLow);
      const hy = f32(1 - ly);
      row[yLow]! += hy;
      row[yHigh]! += ly;
    }
    const o = offset + p * size;
    for (let h = 0; h < size; h++) out[o + h] = row[h]! / grid;
  }
}

export interface RoiMatrices {
  K: number;
  P: number;
  H: number;
  W: number;
  /** [K, P, H] */
  ay: Float32Array;
  /** [K, P, W] */
  ax: Float32Array;
}

/** Per-box interpolation matrices for a feature map of H x W. */
export function roiAlignMatrices(boxes: Boxes, H: number, W: number, opts: RoiAlignOptions): RoiMatrices {
  checkGeometry(H, W, opts);
  const b = boxesToFloat32(boxes);
  const K = b.length / 4;
  const P = opts.outputSize;
  const ay = new Float32Array(K * P * H);
  const ax = new Float32Array(K * P * W);
  for (let k = 0; k < K; k++) {
    roiAxisWeights(b[k * 4]!, b[k * 4 + 2]!, W, opts, ax, k * P * W);
    roiAxisWeights(b[k * 4 + 1]!, b[k * 4 + 3]!, H, opts, ay, k * P * H);
  }
  return { K, P, H, W, ay, ax };
}

export interface RoiMeanWeights {
  K: number;
  /** [K, H]: mean over the P rows of Ay. */
  u: Float32Array;
  /** [K, W]: mean over the P rows of Ax. */
  v: Float32Array;
}

/**
 * The bin-mean of roi_align as two weight vectors per box: mean_{p,q} pooled[k,c,p,q] = u_k^T F_c v_k.
 * Depends only on the boxes and the map size (a frozen-feature cache can reuse it).
 */
export function roiMeanWeights(boxes: Boxes, H: number, W: number, opts: RoiAlignOptions): RoiMeanWeights {
  const { K, P, ay, ax } = roiAlignMatrices(boxes, H, W, opts);
  return { K, u: meanRows(ay, K, P, H), v: meanRows(ax, K, P, W) };
}

function meanRows(a: Float32Array, K: number, P: number, L: number): Float32Array {
  const out = new Float32Array(K * L);
  const acc = new Float64Array(L);
  for (let k = 0; k < K; k++) {
    acc.fill(0);
    for (let p = 0; p < P; p++) {
      const o = (k * P + p) * L;
      for (let l = 0; l < L; l++) acc[l]! += a[o + l]!;
    }
    for (let l = 0; l < L; l++) out[k * L + l] = acc[l]! / P;
  }
  return out;
}

/**
 * Outer products u_k v_k^T flattened to rows of a [K, cols] matrix, written at column `colOffset`
 * (so several images' maps stacked as [B*H*W, C] can be pooled by one block-diagonal matmul).
 */
export function roiMeanOuter(w: RoiMeanWeights, H: number, W: number, out: Float32Array, cols: number, rowOffset: number, colOffset: number): void {
  for (let k = 0; k < w.K; k++) {
    const o = (rowOffset + k) * cols + colOffset;
    for (let h = 0; h < H; h++) {
      const uh = w.u[k * H + h]!;
      if (uh === 0) continue;
      for (let x = 0; x < W; x++) out[o + h * W + x] = uh * w.v[k * W + x]!;
    }
  }
}

/**
 * roi_align of one image: feat [H, W, C] (NHWC without batch), boxes [K] -> pooled [K, P, P, C]
 * (bins in row-major y, x). Differentiable w.r.t. `feat`.
 */
export function roiAlign(feat: tf.Tensor3D, boxes: Boxes, opts: RoiAlignOptions): tf.Tensor4D {
  const [H, W, C] = feat.shape;
  const m = roiAlignMatrices(boxes, H, W, opts);
  const { K, P } = m;
  if (K === 0) return tf.zeros([0, P, P, C]);
  return tf.tidy(() => {
    const ay = tf.tensor2d(m.ay, [K * P, H]);
    const ax = tf.tensor3d(m.ax, [K, P, W]);
    // contract H: [K*P, H] x [H, W*C] -> [K*P, W*C]
    const t = tf.matMul(ay, feat.reshape([H, W * C])).reshape([K, P, W, C]);
    // contract W per box: [K, Q, W] x [K, W, P*C] -> [K, Q, P*C]
    const tw = t.transpose([0, 2, 1, 3]).reshape([K, W, P * C]);
    const pooled = tf.matMul(ax, tw).reshape([K, P, P, C]); // [K, q, p, C]
    return pooled.transpose([0, 2, 1, 3]) as tf.Tensor4D; // [K, p, q, C]
  });
}

/**
 * Mean over the P x P bins of roi_align for one image: feat [H, W, C] -> [K, C], as one matmul
 * [K, H*W] x [H*W, C] with the outer-product weights. Differentiable w.r.t. `feat`.
 */
export function roiMean(feat: tf.Tensor3D, boxes: Boxes, opts: RoiAlignOptions): tf.Tensor2D {
  const [H, W, C] = feat.shape;
  const w = roiMeanWeights(boxes, H, W, opts);
  const outer = new Float32Array(w.K * H * W);
  roiMeanOuter(w, H, W, outer, H * W, 0, 0);
  return tf.tidy(() => tf.matMul(tf.tensor2d(outer, [w.K, H * W]), feat.reshape([H * W, C])));
}

function checkGeometry(H: number, W: number, opts: RoiAlignOptions): void {
  if (!(Number.isInteger(H) && H > 0 && Number.isInteger(W) && W > 0)) {
    throw new Error(`roi-align: feature map ${H}x${W} must have positive integer size`);
  }
  if (!(Number.isInteger(opts.outputSize) && opts.outputSize > 0)) {
    throw new Error(`roi-align: outputSize ${opts.outputSize} must be a positive integer`);
  }
  if (!(opts.spatialScale > 0 && Number.isFinite(opts.spatialScale))) {
    throw new Error(`roi-align: spatialScale ${opts.spatialScale} must be positive`);
  }
  const sr = opts.samplingRatio ?? -1;
  if (!Number.isInteger(sr)) throw new Error(`roi-align: samplingRatio ${sr} must be an integer`);
}
