/**
 * ConvNeXt trunk (timm naming; open_clip keeps it under `visual.trunk.`), the high-resolution encoder
 * of MG-LLaVA. Everything runs channels-last (NHWC): the per-pixel LayerNorm and MLP of a block then
 * act on the last axis without any permute, and timm's LayerNorm2d is a plain LayerNorm here.
 *
 * Names: `stem.0` (conv 4x4 s4, bias), `stem.1` (LayerNorm2d), `stages.S.downsample.{0: LayerNorm2d,
 * 1: conv 2x2 s2}` for S >= 1, `stages.S.blocks.M.{conv_dw, norm, mlp.fc1, mlp.fc2, gamma}`.
 */
import * as tf from '@tensorflow/tfjs';
import { checkpointed } from '../../nn/checkpoint.js';
import { Module, type InitContext } from '../../nn/module.js';
import { Linear } from '../../nn/linear.js';
import { LayerNorm } from '../../nn/norm.js';
import { Conv2d } from '../../nn/conv.js';
import { geluErf } from '../../nn/activations.js';
import { resizeBilinearHalfPixel } from '../../nn/resize.js';

export interface ConvNextConfig {
  /** Channels of each stage (convnext_large: 192, 384, 768, 1536). */
  dims: number[];
  /** Blocks per stage, same length as `dims` (convnext_large: 3, 3, 27, 3). */
  depths: number[];
  /** Epsilon of every LayerNorm (1e-6 in timm ConvNeXt; 1e-5 for convnext_xxlarge). */
  layerNormEps: number;
  /** Side of the square input image (MG-LLaVA's aux image: 768). */
  imageSize: number;
  /** Input channels (3). */
  inChannels: number;
}

/**
 * timm ConvNeXt variants whose blocks use Linear MLPs (the names checkpoints of this layout carry).
 * atto/femto/pico/nano are left out on purpose: timm builds them with `conv_mlp=True` (1x1-conv MLP
 * weights, another layout).
 */
const TIMM_CONVNEXT: Record<string, { dims: number[]; depths: number[]; eps: number }> = {
  convnext_tiny: { dims: [96, 192, 384, 768], depths: [3, 3, 9, 3], eps: 1e-6 },
  convnext_small: { dims: [96, 192, 384, 768], depths: [3, 3, 27, 3], eps: 1e-6 },
  convnext_base: { dims: [128, 256, 512, 1024], depths: [3, 3, 27, 3], eps: 1e-6 },
  convnext_large: { dims: [192, 384, 768, 1536], depths: [3, 3, 27, 3], eps: 1e-6 },
  convnext_xlarge: { dims: [256, 512, 1024, 2048], depths: [3, 3, 27, 3], eps: 1e-6 },
  convnext_xxlarge: { dims: [384, 768, 1536, 3072], depths: [3, 4, 30, 3], eps: 1e-5 },
};

/**
 * ConvNextConfig from one of:
 * - an open_clip model config (`{vision_cfg: {timm_model_name: 'convnext_large', image_size: 320}}`, as in
 *   `convnext_large_d_320.json`) or its `vision_cfg` alone;
 * - explicit `{dims, depths, layer_norm_eps | norm_eps, image_size | image, in_chans}` (timm kwargs; the
 *   golden manifest's format). Explicit keys override the named variant's.
 * MG-LLaVA feeds the trunk its aux image, so pass `imageSize` when the config's image size is not it
 * (open_clip says 320; MG-LLaVA runs the same weights at 768).
 */
export function convNextConfigFrom(json: Record<string, unknown>, overrides: Partial<ConvNextConfig> = {}): ConvNextConfig {
  const src = (typeof json.vision_cfg === 'object' && json.vision_cfg !== null ? json.vision_cfg : json) as Record<string, unknown>;
  const where = 'ConvNeXt config';
  const name = src.timm_model_name;
  let base: { dims: number[]; depths: number[]; eps: number } | undefined;
  if (name !== undefined) {
    const stem = String(name).split('.')[0]!; // 'convnext_large.fb_in22k' -> 'convnext_large'
    base = TIMM_CONVNEXT[stem];
    if (!base) throw new Error(`${where}: unknown timm_model_name '${String(name)}' (known: ${Object.keys(TIMM_CONVNEXT).join(', ')})`);
  }
  const numList = (key: string): number[] | undefined => {
    const v = src[key];
    if (v === undefined) return undefined;
    if (!Array.isArray(v) || !v.every((x) => typeof x === 'number')) throw new Error(`${where}: '${key}' must be a list of numbers, got ${JSON.stringify(v)}`);
    return v as number[];
  };
  const num = (...keys: string[]): number | undefined => {
    for (const k of keys) {
      const v = src[k];
      if (v === undefined) continue;
      if (typeof v !== 'number') throw new Error(`${where}: '${k}' must be a number, got ${JSON.stringify(v)}`);
      return v;
    }
    return undefined;
  };
  const dims = overrides.dims ?? numList('dims') ?? base?.dims;
  const depths = overrides.depths ?? numList('depths') ?? base?.depths;
  if (!dims || !depths) throw new Error(`${where}: needs 'dims' and 'depths' or a known 'timm_model_name'`);
  const imageSize = overrides.imageSize ?? num('image_size', 'image');
  if (imageSize === undefined) throw new Error(`${where}: needs 'image_size' (or 'image')`);
  return validateConvNextConfig({
    dims: [...dims],
    depths: [...depths],
    layerNormEps: overrides.layerNormEps ?? num('layer_norm_eps', 'norm_eps') ?? base?.eps ?? 1e-6,
    imageSize,
    inChannels: overrides.inChannels ?? num('in_chans', 'num_channels') ?? 3,
  });
}

export function validateConvNextConfig(c: ConvNextConfig): ConvNextConfig {
  const bad = (msg: string) => new Error(`ConvNeXt config: ${msg}`);
  if (!Array.isArray(c.dims) || c.dims.length === 0) throw bad(`dims must be a non-empty list`);
  if (!Array.isArray(c.depths) || c.depths.length !== c.dims.length) throw bad(`depths [${c.depths}] must have one entry per stage (dims [${c.dims}])`);
  if (!c.dims.every((d) => Number.isInteger(d) && d > 0)) throw bad(`dims must be positive integers, got [${c.dims}]`);
  if (!c.depths.every((d) => Number.isInteger(d) && d >= 0)) throw bad(`depths must be integers >= 0, got [${c.depths}]`);
  if (!Number.isInteger(c.inChannels) || c.inChannels < 1) throw bad(`inChannels must be a positive integer, got ${c.inChannels}`);
  if (!(c.layerNormEps > 0)) throw bad(`layerNormEps must be > 0, got ${c.layerNormEps}`);
  const stride = 4 * 2 ** (c.dims.length - 1);
  if (!Number.isInteger(c.imageSize) || c.imageSize < stride) throw bad(`imageSize ${c.imageSize} must be an integer >= the total stride ${stride}`);
  return c;
}

interface BlockConfig {
  dim: number;
  eps: number;
}

/** x + gamma * fc2(gelu(fc1(norm(conv_dw(x))))), all on [B,H,W,C]. */
class ConvNextBlock extends Module<BlockConfig> {
  readonly convDw: Conv2d;
  readonly norm: LayerNorm;
  readonly fc1: Linear;
  readonly fc2: Linear;
  readonly gamma: tf.Variable; // [C] layer scale

  constructor(c: BlockConfig, ctx: InitContext) {
    super(c);
    const d = c.dim;
    this.gamma = this.addWeight('gamma', [d], { kind: 'constant', value: 1e-6 }, ctx); // timm ls_init_value
    this.convDw = this.addChild('conv_dw', new Conv2d({ inChannels: d, outChannels: d, kernelSize: 7, stride: 1, padding: 3, groups: d, bias: true }, ctx));
    this.norm = this.addChild('norm', new LayerNorm({ dim: d, eps: c.eps }, ctx));
    this.fc1 = this.addChild('mlp.fc1', new Linear({ inFeatures: d, outFeatures: 4 * d, bias: true }, ctx));
    this.fc2 = this.addChild('mlp.fc2', new Linear({ inFeatures: 4 * d, outFeatures: d, bias: true }, ctx));
  }

  apply(x: tf.Tensor4D): tf.Tensor4D {
    return tf.tidy(() => {
      const y = this.norm.apply(this.convDw.apply(x)); // [B,H,W,C]
      const m = this.fc2.apply(geluErf(this.fc1.apply(y))); // [B,H,W,4C] -> [B,H,W,C]
      return tf.add(x, tf.mul(m, this.gamma)) as tf.Tensor4D;
    });
  }
}

interface StageConfig {
  inDim: number;
  dim: number;
  depth: number;
  downsample: boolean;
  eps: number;
}

/** Optional LayerNorm + conv 2x2 s2, then `depth` blocks. */
class ConvNextStage extends Module<StageConfig> {
  readonly downNorm: LayerNorm | null;
  readonly downConv: Conv2d | null;
  readonly blocks: ConvNextBlock[] = [];

  constructor(c: StageConfig, ctx: InitContext) {
    super(c);
    if (c.downsample) {
      this.downNorm = this.addChild('downsample.0', new LayerNorm({ dim: c.inDim, eps: c.eps }, ctx));
      this.downConv = this.addChild(
        'downsample.1',
        new Conv2d({ inChannels: c.inDim, outChannels: c.dim, kernelSize: 2, stride: 2, padding: 0, groups: 1, bias: true }, ctx),
      );
    } else {
      if (c.inDim !== c.dim) throw new Error(`ConvNeXt stage without downsample needs inDim == dim, got ${c.inDim} -> ${c.dim}`);
      this.downNorm = null;
      this.downConv = null;
    }
    for (let m = 0; m < c.depth; m++) this.blocks.push(this.addChild(`blocks.${m}`, new ConvNextBlock({ dim: c.dim, eps: c.eps }, ctx)));
  }

  /** `checkpoint`: each block keeps only its input for the backward pass and recomputes itself there. */
  apply(x: tf.Tensor4D, checkpoint = false): tf.Tensor4D {
    return tf.tidy(() => {
      let h = x;
      if (this.downNorm && this.downConv) h = this.downConv.apply(this.downNorm.apply(h) as tf.Tensor4D); // [B,H/2,W/2,dim]
      for (const b of this.blocks) {
        h = checkpoint ? (checkpointed((y: tf.Tensor4D) => b.apply(y), h, [...b.namedWeights()].map(([, v]) => v)) as tf.Tensor4D) : b.apply(h);
      }
      return h;
    });
  }
}

export interface ConvNextOutput {
  /** Raw output of each stage, NHWC: [B, S/4, S/4, dims[0]], [B, S/8, S/8, dims[1]], ... */
  stages: tf.Tensor4D[];
  /** The last stage's map (the same tensor as `stages[stages.length - 1]`): the fusion input. */
  last: tf.Tensor4D;
  /** All stages resized to stage 0's size and concatenated on channels: [B, S/4, S/4, sum(dims)] (roi input). */
  concat?: tf.Tensor4D;
}

export interface ConvNextApplyOptions {
  /** Build the concat map (large: 2880 x 192 x 192 floats per image at full size). Default true. */
  concat?: boolean;
}

export class ConvNext extends Module<ConvNextConfig> {
  readonly stemConv: Conv2d;
  readonly stemNorm: LayerNorm;
  readonly stages: ConvNextStage[] = [];
  /** Recompute each block in the backward pass instead of keeping its activations (train.activation_checkpointing). */
  activationCheckpointing = false;

  constructor(config: ConvNextConfig, ctx: InitContext) {
    super(validateConvNextConfig({ ...config, dims: [...config.dims], depths: [...config.depths] }));
    const c = this.config;
    const eps = c.layerNormEps;
    this.stemConv = this.addChild(
      'stem.0',
      new Conv2d({ inChannels: c.inChannels, outChannels: c.dims[0]!, kernelSize: 4, stride: 4, padding: 0, groups: 1, bias: true }, ctx),
    );
    this.stemNorm = this.addChild('stem.1', new LayerNorm({ dim: c.dims[0]!, eps }, ctx));
    c.dims.forEach((dim, s) => {
      const inDim = s === 0 ? dim : c.dims[s - 1]!;
      this.stages.push(this.addChild(`stages.${s}`, new ConvNextStage({ inDim, dim, depth: c.depths[s]!, downsample: s > 0, eps }, ctx)));
    });
  }

  /** pixels [B,S,S,C] (NHWC, normalised) -> stage maps, last map and (optionally) the concat map. */
  apply(pixels: tf.Tensor4D, opts: ConvNextApplyOptions = {}): ConvNextOutput {
    const c = this.config;
    const [, hgt, wid, ch] = pixels.shape;
    if (pixels.rank !== 4 || hgt !== c.imageSize || wid !== c.imageSize || ch !== c.inChannels) {
      throw new Error(`ConvNext.apply: expected pixels [B,${c.imageSize},${c.imageSize},${c.inChannels}] (NHWC), got [${pixels.shape}]`);
    }
    const wantConcat = opts.concat ?? true;
    return tf.tidy(() => {
      let h = this.stemNorm.apply(this.stemConv.apply(pixels)) as tf.Tensor4D; // [B,S/4,S/4,dims0]
      const stages: tf.Tensor4D[] = [];
      for (const st of this.stages) {
        h = st.apply(h, this.activationCheckpointing);
        stages.push(h);
      }
      const last = stages[stages.length - 1]!;
      if (!wantConcat) return { stages, last };
      return { stages, last, concat: concatStages(stages) };
    });
  }
}

/**
 * Every stage bilinearly resized to stage 0's size (torch `interpolate(bilinear, align_corners=False)`
 * = tfjs half-pixel centres, with a corrected gradient) and concatenated on channels: [B, H0, W0, sum(C)].
 */
export function concatStages(stages: tf.Tensor4D[]): tf.Tensor4D {
  return tf.tidy(() => {
    const [, h0, w0] = stages[0]!.shape;
    const resized = stages.map((s, i) => (i === 0 ? s : resizeBilinearHalfPixel(s, [h0, w0])));
    return tf.concat(resized, 3) as tf.Tensor4D;
  });
}
