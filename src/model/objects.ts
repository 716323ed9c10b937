/**
 * Object tokens (`bbox_projector.*`, REFERENCE.md (b)): per image, each box's roi_align of the aux
 * concat map (aligned=False, adaptive sampling, P x P bins), averaged over the bins, then the
 * `bbox_projector` MLP -> one LLM-width token per box.
 *
 * The bin mean is computed in the separable form `u_k^T F_c v_k` (roi-align.ts): one matmul of the
 * outer-product weights [K, H*W] with the map [H*W, C], never the [K, C, P, P] pooled map.
 *
 * Spatial scale: feature size / `imageSizeAux` (the reference hard-codes 768, i.e. it assumes
 * image_size_aux = 768; here the aux size comes from the config, which is the same at full size and
 * right for the small test/bench models).
 *
 * Multi-level variant (`use_multi_level`): per ConvNeXt stage l, Linear_l (C_l -> common) on every
 * bin of the stage's channel slice, sum over stages, mean over bins. The mean over bins commutes with
 * the affine per-bin Linear, so this is `sum_l (W_l m_l + b_l)` with m = RoI mean of the concat map:
 * one matmul with the concatenated [common, sum C_l] weight plus the summed biases.
 */
import * as tf from '@tensorflow/tfjs';
import { Module, type InitContext } from '../nn/module.js';
import { Linear, linear } from '../nn/linear.js';
import { Projector } from './projector.js';
import { roiMeanOuter, roiMeanWeights, boxesToFloat32, type Boxes, type RoiAlignOptions, type RoiMeanWeights } from './roi-align.js';
import { bilinearWeightsT } from '../nn/resize.js';
import { EMPTY_IMAGE_BOX, TEXT_ONLY_BOX } from '../data/boxes.js';

/** The dummy-box rule (REFERENCE.md §0/§i), re-exported for the model side. */
export { EMPTY_IMAGE_BOX, TEXT_ONLY_BOX };

/**
 * The boxes an image contributes: its own, or one `[0,0,0,0]` box when none survived; a text-only
 * sample (zero image) gets `[0,0,100,100]`. Every sample therefore yields at least one object token.
 */
export function boxesWithDummy(boxes: number[][], textOnly = false): number[][] {
  if (textOnly) return [[...TEXT_ONLY_BOX]];
  return boxes.length > 0 ? boxes : [[...EMPTY_IMAGE_BOX]];
}

export interface MultiLevelConfig {
  /** Channels of each ConvNeXt stage in the concat map, in order (192/384/768/1536 at full size). */
  levelChannels: number[];
  /** Width of the per-level Linears (1024 officially); the bbox projector's input width. */
  commonDim: number;
}

export interface ObjectFeaturesConfig {
  /** Channels of the aux concat map (2880 at full size). */
  inChannels: number;
  /** LLM hidden size (bbox_projector output width). */
  hidden: number;
  /** Side of the aux image the boxes are expressed in (768); spatial scale = map size / this. */
  imageSizeAux: number;
  /** P: roi_align bins per axis (56). */
  outputSize: number;
  /** Samples per bin per axis; -1 = adaptive (torchvision default, used by MG-LLaVA). */
  samplingRatio: number;
  /** Number of Linear layers of bbox_projector (2). */
  projectorDepth: number;
  /** Per-stage Linears before the projector (`use_multi_level`); null for the released single-level model. */
  multiLevel: MultiLevelConfig | null;
}

export const DEFAULT_OBJECT_FEATURES: Pick<ObjectFeaturesConfig, 'imageSizeAux' | 'outputSize' | 'samplingRatio' | 'projectorDepth' | 'multiLevel'> = {
  imageSizeAux: 768,
  outputSize: 56,
  samplingRatio: -1,
  projectorDepth: 2,
  multiLevel: null,
};

/** Object tokens of a batch, flat: rows of image b are counts[0] + ... + counts[b-1] onwards. */
export interface FlatObjectTokens {
  /** [sum K_b, hidden] */
  tokens: tf.Tensor2D;
  counts: number[];
}

export class ObjectFeatures extends Module<ObjectFeaturesConfig> {
  readonly levelLinears: Linear[];
  readonly bboxProjector: Projector;

  constructor(config: ObjectFeaturesConfig, ctx: InitContext) {
    super(config);
    const ml = config.multiLevel;
    let projIn = config.inChannels;
    this.levelLinears = [];
    if (ml) {
      const sum = ml.levelChannels.reduce((a, b) => a + b, 0);
      if (sum !== config.inChannels) {
        throw new Error(`ObjectFeatures: levelChannels [${ml.levelChannels}] sum to ${sum}, but the concat map has ${config.inChannels} channels`);
      }
      ml.levelChannels.forEach((c, l) => {
        this.levelLinears.push(this.addChild(`multi_level_linear.${l}`, new Linear({ inFeatures: c, outFeatures: ml.commonDim, bias: true }, ctx)));
      });
      projIn = ml.commonDim;
    }
    this.bboxProjector = this.addChild(
      'bbox_projector',
      new Projector({ inDim: projIn, outDim: config.hidden, depth: config.projectorDepth }, ctx),
    );
  }

  /** roi_align options for a concat map of `mapSize` pixels per side. */
  roiOptions(mapSize: number): RoiAlignOptions {
    return {
      outputSize: this.config.outputSize,
      spatialScale: mapSize / this.config.imageSizeAux,
      samplingRatio: this.config.samplingRatio,
    };
  }

  /** RoI means of a batch from the concat map NHWC [B,Hf,Wf,C] -> [sum K_b, C] (rows of image b in order) and K_b. */
  roiMeans(concat: tf.Tensor4D, boxesPerImage: Boxes[]): { means: tf.Tensor2D; counts: number[] } {
    return this.roiMeansFromStages([concat], boxesPerImage);
  }

  /**
   * The same RoI means as `roiMeans(concatStages(stages), boxes)`, from the ConvNeXt stage maps
   * (NHWC [B,h_l,w_l,C_l], stage 0 at the concat map's size) without building the concat map
   * (`batchRoiMeans`).
   */
  roiMeansFromStages(stages: tf.Tensor4D[], boxesPerImage: Boxes[]): { means: tf.Tensor2D; counts: number[] } {
    const C = stages.reduce((a, st) => a + st.shape[3], 0);
    if (C !== this.config.inChannels) throw new Error(`ObjectFeatures: the map has ${C} channels in all, expected ${this.config.inChannels}`);
    const { outputSize, samplingRatio, imageSizeAux } = this.config;
    return batchRoiMeans(stages, boxesPerImage, { outputSize, samplingRatio, imageSizeAux });
  }

  /** RoI means [K, inChannels] -> object tokens [K, hidden] (the entry point for cached RoI means). */
  project(roiMean: tf.Tensor2D): tf.Tensor2D {
    return tf.tidy(() => {
      let x: tf.Tensor = roiMean;
      if (this.config.multiLevel) {
        // sum_l Linear_l(slice_l(m)) == m @ [W_0 | W_1 | ...]^T + sum_l b_l
        const w = tf.concat(this.levelLinears.map((l) => l.weight), 1); // [common, inChannels]
        const b = tf.addN(this.levelLinears.map((l) => l.bias!)); // [common]
        x = linear(roiMean, w, b); // [K, common]
      }
      return this.bboxProjector.apply(x) as tf.Tensor2D;
    });
  }

  /** concat NHWC [B,Hf,Wf,C] + boxes per image -> all object tokens [sum K_b, hidden] and K_b. */
  applyFlat(concat: tf.Tensor4D, boxesPerImage: Boxes[]): FlatObjectTokens {
    const { means, counts } = this.roiMeans(concat, boxesPerImage);
    const tokens = this.project(means);
    means.dispose();
    return { tokens, counts };
  }

  /** concat NHWC [B,Hf,Wf,C] + boxes per image -> one [K_b, hidden] tensor per image. */
  apply(concat: tf.Tensor4D, boxesPerImage: Boxes[]): tf.Tensor2D[] {
    return tf.tidy(() => {
      const { tokens, counts } = this.applyFlat(concat, boxesPerImage);
      return counts.length === 1 ? [tokens] : (tf.split(tokens, counts, 0) as tf.Tensor2D[]);
    });
  }
}

/**
 * RoI means of a batch, `u_k^T F v_k` per box and channel (roi-align.ts), from feature maps NHWC
 * [B,h_l,w_l,C_l] whose channels are concatenated: one map (the concat map), or the ConvNeXt stages with
 * stage 0 at the concat map's size. Boxes of image b are in aux-image pixels; spatial scale = map size /
 * `imageSizeAux`. Returns [sum K_b, sum C_l] (rows of image b after those of images 0..b-1) and K_b.
 *
 * The concat map is every stage bilinearly resized to stage 0's grid, a linear map R_l (x) R_l of the
 * stage, so a box's mean weights u v^T on the concat grid pull back to (R_l^T u)(R_l^T v)^T on stage l's
 * own grid: exact up to float rounding, and no 2880-channel map at full size. Per map one batched matmul
 * [B,Kmax,h*w] x [B,h*w,C_l] (the kernel pack runs each image on heap views, no copies; the work grows
 * with B, not B^2); images with fewer boxes than Kmax get zero rows, dropped at the end. Differentiable
 * w.r.t. the maps; no gradient flows into the boxes.
 */
export function batchRoiMeans(
  maps: tf.Tensor4D[],
  boxesPerImage: Boxes[],
  o: { outputSize: number; samplingRatio: number; imageSizeAux: number },
): { means: tf.Tensor2D; counts: number[] } {
  if (maps.length === 0) throw new Error('batchRoiMeans: needs at least one feature map');
  const [B, H, W] = maps[0]!.shape;
  const C = maps.reduce((a, st) => a + st.shape[3], 0);
  if (boxesPerImage.length !== B) throw new Error(`RoI means: ${boxesPerImage.length} box lists for a batch of ${B} images`);
  if (H !== W) throw new Error(`RoI means: the concat map must be square (one spatial scale), got ${H}x${W}`);
  const opts: RoiAlignOptions = { outputSize: o.outputSize, spatialScale: H / o.imageSizeAux, samplingRatio: o.samplingRatio };
  const weights = boxesPerImage.map((b, i) => {
    const w = roiMeanWeights(boxesToFloat32(b, `RoI means, image ${i}`), H, W, opts);
    if (w.K === 0) throw new Error(`RoI means: image ${i} has no box (apply the dummy-box rule, boxesWithDummy)`);
    return w;
  });
  const counts = weights.map((w) => w.K);
  const kMax = Math.max(...counts);
  return tf.tidy(() => {
    const perMap = maps.map((st) => {
      const [b, h, w, c] = st.shape;
      if (b !== B) throw new Error(`RoI means: the maps disagree on the batch size (${b} vs ${B})`);
      const outer = new Float32Array(B * kMax * h * w); // [B, Kmax, h*w]
      weights.forEach((wt, i) => roiMeanOuter(pullBack(wt, H, W, h, w), h, w, outer, h * w, i * kMax, 0));
      return tf.matMul(tf.tensor3d(outer, [B, kMax, h * w]), st.reshape([B, h * w, c])); // [B, Kmax, c]
    });
    const all = (perMap.length === 1 ? perMap[0]! : tf.concat(perMap, 2)).reshape([B * kMax, C]); // [B*Kmax, C]
    if (counts.every((k) => k === kMax)) return { means: all as tf.Tensor2D, counts };
    const rows = counts.flatMap((k, i) => Array.from({ length: k }, (_, j) => i * kMax + j));
    return { means: tf.gather(all, tf.tensor1d(rows, 'int32')) as tf.Tensor2D, counts }; // [sum K, C]
  });
}

/**
 * Mean weights on an H x W grid pulled back through the bilinear resize (h x w -> H x W, half-pixel
 * centres) to the h x w grid: u' = R_h^T u, v' = R_w^T v. The same weights when the sizes agree.
 */
function pullBack(wt: RoiMeanWeights, H: number, W: number, h: number, w: number): RoiMeanWeights {
  if (h === H && w === W) return wt;
  return { K: wt.K, u: pullAxis(wt.u, wt.K, H, h), v: pullAxis(wt.v, wt.K, W, w) };
}

/** rows [K, L] -> [K, l]: row_k R^T with R^T [l, L] the resize's interpolation weights. */
function pullAxis(rows: Float32Array, K: number, L: number, l: number): Float32Array {
  if (l === L) return rows;
  const rt = bilinearWeightsT(l, L); // [l, L]
  const out = new Float32Array(K * l);
  for (let k = 0; k < K; k++) {
    for (let i = 0; i < l; i++) {
      let acc = 0;
      for (let y = 0; y < L; y++) acc += rt[i * L + y]! * rows[k * L + y]!;
      out[k * l + i] = acc;
    }
  }
  return out;
}
