/**
 * MG-LLaVA's Conv-Gate fusion (`fuse_module.*`, REFERENCE.md (a)): ViT tokens (low resolution, D wide)
 * enriched by the ConvNeXt last-stage map (high resolution, C wide), position by position.
 *
 *   hi  = slow_proj(gelu(slow_conv(high)))                 1x1 C->C, GELU, 1x1 C->D      [B,N,D]
 *   lo  = low + fast_proj(gelu(fast_conv(low as S x S)))   dw 7x7 pad 3, GELU, 1x1 D->D  [B,N,D]
 *   g   = gate(mean_n [lo, hi])                            Linear 2D->D/2, GELU, Linear D/2->1   [B,1]
 *   out = lo + hi * tanh(g)                                one scalar gate per image
 *
 * The four official variants differ only in how lo/hi are combined, so they are one module:
 *   0 = gate + sum (DualPathFuseModule, every released config)   out [B,N,D]
 *   1 = gate + concat [lo, hi*tanh(g)]                            out [B,N,2D]
 *   2 = concat [lo, hi], no gate parameters                       out [B,N,2D]
 *   3 = concat [low, high tokens], no parameters at all           out [B,N,D+C]
 * With the official zero init (slow_proj/fast_proj weights 0) variant 0 is the identity at step 0.
 */
import * as tf from '@tensorflow/tfjs';
import { Module, type InitContext } from '../nn/module.js';
import { Conv2d } from '../nn/conv.js';
import { Linear } from '../nn/linear.js';
import { geluErf } from '../nn/activations.js';
import { zeros, type Initializer } from '../nn/init.js';

export type FusionVariant = 0 | 1 | 2 | 3;

export interface ConvGateFusionConfig {
  /** D: width of the ViT tokens (1024 for CLIP ViT-L). */
  lowDim: number;
  /** C: channels of the ConvNeXt last-stage map (1536 for ConvNeXt-L). */
  highDim: number;
  /** How the two paths are combined (see the file comment); 0 is the released model. */
  variant: FusionVariant;
  /** Official init: zero slow_proj/fast_proj weights (identity at step 0). false: xavier-uniform. */
  zeroInit: boolean;
}

export const DEFAULT_FUSION: Pick<ConvGateFusionConfig, 'variant' | 'zeroInit'> = { variant: 0, zeroInit: true };

/** Output and the intermediates the golden compares (null where the variant has none). */
export interface FusionResult {
  /** [B, N, outDim] */
  out: tf.Tensor3D;
  /** High-res path after slow_proj, [B, N, D] (variants 0-2). */
  hi: tf.Tensor3D | null;
  /** Low-res path after the fast residual, [B, N, D] (variants 0-2). */
  lo: tf.Tensor3D | null;
  /** tanh(gate), [B, 1] (variants 0-1). */
  gateTanh: tf.Tensor2D | null;
}

const xavier: Initializer = { kind: 'xavierUniform' };

export class ConvGateFusion extends Module<ConvGateFusionConfig> {
  readonly slowConv: Conv2d | null;
  readonly slowProj: Conv2d | null;
  readonly fastConv: Conv2d | null;
  readonly fastProj: Conv2d | null;
  readonly gate0: Linear | null;
  readonly gate2: Linear | null;

  constructor(config: ConvGateFusionConfig, ctx: InitContext) {
    super(config);
    const { lowDim: D, highDim: C, variant } = config;
    if (![0, 1, 2, 3].includes(variant)) throw new Error(`ConvGateFusion: variant must be 0, 1, 2 or 3, got ${variant}`);
    for (const [k, v] of [['lowDim', D], ['highDim', C]] as const) {
      if (!(Number.isInteger(v) && v > 0)) throw new Error(`ConvGateFusion: ${k} must be a positive integer, got ${v}`);
    }
    if (variant <= 1 && D % 2 !== 0) throw new Error(`ConvGateFusion: the gate's hidden width is lowDim/2, lowDim=${D} is odd`);
    const proj: Initializer = config.zeroInit ? zeros : xavier;
    const conv = (inC: number, outC: number, k: number, groups: number, weight: Initializer) =>
      new Conv2d({ inChannels: inC, outChannels: outC, kernelSize: k, stride: 1, padding: (k - 1) / 2, groups, bias: true }, ctx, {
        weight,
        bias: zeros,
      });
    // Declaration order = checkpoint order.
    const hasConvs = variant !== 3;
    this.slowConv = hasConvs ? this.addChild('slow_conv', conv(C, C, 1, 1, xavier)) : null;
    this.slowProj = hasConvs ? this.addChild('slow_proj', conv(C, D, 1, 1, proj)) : null;
    this.fastConv = hasConvs ? this.addChild('fast_conv', conv(D, D, 7, D, xavier)) : null;
    this.fastProj = hasConvs ? this.addChild('fast_proj', conv(D, D, 1, 1, proj)) : null;
    const hasGate = variant <= 1;
    // The gate Linears keep PyTorch's default init (the official reset does not touch them).
    this.gate0 = hasGate ? this.addChild('gate.0', new Linear({ inFeatures: 2 * D, outFeatures: D / 2, bias: true }, ctx)) : null;
    this.gate2 = hasGate ? this.addChild('gate.2', new Linear({ inFeatures: D / 2, outFeatures: 1, bias: true }, ctx)) : null;
  }

  /** Width of the output tokens (the image projector's input width). */
  get outDim(): number {
    const { lowDim: D, highDim: C, variant } = this.config;
    return variant === 0 ? D : variant === 3 ? D + C : 2 * D;
  }

  /** low [B,N,D] ViT tokens, high [B,H,W,C] NHWC with H*W = N -> [B,N,outDim]. */
  apply(low: tf.Tensor3D, high: tf.Tensor4D): tf.Tensor3D {
    return tf.tidy(() => this.forward(low, high).out);
  }

  /** `apply` with the intermediates (for the golden and for inspection). */
  forward(low: tf.Tensor3D, high: tf.Tensor4D): FusionResult {
    const dims = this.checkInputs(low, high);
    // tidy keeps every tensor of the returned object (its typing just does not admit the nulls)
    return tf.tidy(() => this.compute(low, high, dims) as unknown as tf.TensorContainer) as unknown as FusionResult;
  }

  private compute(low: tf.Tensor3D, high: tf.Tensor4D, { B, N, S }: { B: number; N: number; S: number }): FusionResult {
    const { lowDim: D, highDim: C, variant } = this.config;
    if (variant === 3) {
      const out = tf.concat([low, high.reshape([B, N, C])], -1) as tf.Tensor3D; // [B,N,D+C]
      return { out, hi: null, lo: null, gateTanh: null };
    }
    // slow path: per-position MLP over channels (1x1 convs are matmuls)
    const slow = geluErf(this.slowConv!.apply(high)) as tf.Tensor4D; // [B,H,W,C]
    const hi = this.slowProj!.apply(slow).reshape([B, N, D]) as tf.Tensor3D; // [B,N,D], row-major positions
    // fast path on the token grid, residual: token n = row*S + col is NHWC order already
    const grid = low.reshape([B, S, S, D]) as tf.Tensor4D;
    const fast = this.fastProj!.apply(geluErf(this.fastConv!.apply(grid)) as tf.Tensor4D); // [B,S,S,D]
    const lo = tf.add(grid, fast).reshape([B, N, D]) as tf.Tensor3D; // [B,N,D]
    if (variant === 2) return { out: tf.concat([lo, hi], -1) as tf.Tensor3D, hi, lo, gateTanh: null };
    // gate sees the UPDATED lo; one scalar per image
    const pooled = tf.mean(tf.concat([lo, hi], -1), 1); // [B,2D]
    const g = this.gate2!.apply(geluErf(this.gate0!.apply(pooled))); // [B,1]
    const gateTanh = tf.tanh(g) as tf.Tensor2D;
    const gatedHi = tf.mul(hi, gateTanh.reshape([B, 1, 1])); // [B,N,D]
    const out = (variant === 0 ? tf.add(lo, gatedHi) : tf.concat([lo, gatedHi], -1)) as tf.Tensor3D;
    return { out, hi, lo, gateTanh };
  }

  private checkInputs(low: tf.Tensor, high: tf.Tensor): { B: number; N: number; S: number } {
    const { lowDim: D, highDim: C } = this.config;
    if (low.rank !== 3 || low.shape[2] !== D) {
      throw new Error(`ConvGateFusion: low must be [B,N,${D}] ViT tokens, got [${low.shape}]`);
    }
    if (high.rank !== 4 || high.shape[3] !== C) {
      throw new Error(`ConvGateFusion: high must be an NHWC map [B,H,W,${C}], got [${high.shape}]`);
    }
    const [B, N] = low.shape as [number, number, number];
    const [Bh, H, W] = high.shape as [number, number, number, number];
    if (Bh !== B) throw new Error(`ConvGateFusion: batch of low (${B}) and high (${Bh}) differ`);
    if (H * W !== N) {
      throw new Error(`ConvGateFusion: the high-res map has ${H}x${W} = ${H * W} positions but there are ${N} tokens (must be equal)`);
    }
    const S = Math.round(Math.sqrt(N));
    if (S * S !== N && this.config.variant !== 3) {
      throw new Error(`ConvGateFusion: ${N} tokens do not form a square grid (the fast path needs S x S)`);
    }
    return { B, N, S };
  }
}
