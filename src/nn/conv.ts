/**
 * 2-D convolutions on NHWC activations with weights in PyTorch layout `[out, in/groups, kh, kw]`.
 * Dense (groups = 1) and depthwise (groups = in = out) cover ConvNeXt, CLIP's patch embedding and the
 * fusion; 1x1 convolutions go through a plain matmul, which is what they are.
 */
import * as tf from '@tensorflow/tfjs';
import { Module, type InitContext } from './module.js';
import { fans, type Initializer } from './init.js';

export interface Conv2dConfig {
  inChannels: number;
  outChannels: number;
  kernelSize: number;
  stride: number;
  padding: number;
  /** 1 (dense) or inChannels (depthwise; outChannels must equal inChannels). */
  groups: number;
  bias: boolean;
}

export class Conv2d extends Module<Conv2dConfig> {
  readonly weight: tf.Variable; // [out, in/groups, k, k]
  readonly bias: tf.Variable | null; // [out]

  constructor(config: Conv2dConfig, ctx: InitContext, init?: { weight?: Initializer; bias?: Initializer }) {
    super(config);
    const { inChannels, outChannels, kernelSize: k, groups } = config;
    if (groups !== 1 && !(groups === inChannels && outChannels === inChannels)) {
      throw new Error(`Conv2d supports groups=1 or depthwise (groups=in=out), got in=${inChannels} out=${outChannels} groups=${groups}`);
    }
    const shape = [outChannels, inChannels / groups, k, k];
    const { fanIn } = fans(shape);
    this.weight = this.addWeight('weight', shape, init?.weight ?? { kind: 'torchDefault', fanIn }, ctx);
    this.bias = config.bias ? this.addWeight('bias', [outChannels], init?.bias ?? { kind: 'torchDefault', fanIn }, ctx) : null;
  }

  /** x [B,H,W,in] -> [B,H',W',out] */
  apply(x: tf.Tensor4D): tf.Tensor4D {
    return tf.tidy(() => conv2dNHWC(x, this.weight, this.bias, this.config));
  }
}

/** The convolution of `Conv2d` as a function of its weights (used by modules that own raw weights). */
export function conv2dNHWC(
  x: tf.Tensor4D,
  weight: tf.Tensor,
  bias: tf.Tensor | null,
  cfg: Pick<Conv2dConfig, 'kernelSize' | 'stride' | 'padding' | 'groups'>,
): tf.Tensor4D {
  return tf.tidy(() => {
    const [b, h, w, cin] = x.shape;
    const k = cfg.kernelSize;
    let y: tf.Tensor4D;
    if (cfg.groups > 1) {
      // depthwise: [C,1,k,k] -> [k,k,C,1]
      const filter = weight.transpose([2, 3, 0, 1]) as tf.Tensor4D;
      const pad = cfg.padding;
      const padded = pad > 0 ? tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]]) : x;
      y = tf.depthwiseConv2d(padded, filter, cfg.stride, 'valid');
    } else if (k === 1 && cfg.stride === 1 && cfg.padding === 0) {
      // 1x1: a matmul over pixels. [B*H*W, in] x [out, in]^T
      const cout = weight.shape[0]!;
      y = tf.matMul(x.reshape([b * h * w, cin]), weight.reshape([cout, cin]), false, true).reshape([b, h, w, cout]);
    } else if (k === cfg.stride && cfg.padding === 0 && h % k === 0 && w % k === 0) {
      // Non-overlapping patches (ViT patch embedding, ConvNeXt stem/downsample): im2col is a reshape.
      const cout = weight.shape[0]!;
      const ho = h / k;
      const wo = w / k;
      const patches = x
        .reshape([b, ho, k, wo, k, cin])
        .transpose([0, 1, 3, 2, 4, 5]) // [B,ho,wo,ky,kx,in]
        .reshape([b * ho * wo, k * k * cin]);
      const filter = weight.transpose([0, 2, 3, 1]).reshape([cout, k * k * cin]); // [out, ky*kx*in]
      y = tf.matMul(patches, filter, false, true).reshape([b, ho, wo, cout]);
    } else {
      const filter = weight.transpose([2, 3, 1, 0]) as tf.Tensor4D; // [k,k,in,out]
      const pad = cfg.padding;
      const padded = pad > 0 ? tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]]) : x;
      y = tf.conv2d(padded, filter, cfg.stride, 'valid');
    }
    return (bias ? tf.add(y, bias) : y) as tf.Tensor4D;
  });
}

/** NCHW (PyTorch activations, golden files) <-> NHWC (tfjs convolutions). */
export function nchwToNhwc(x: tf.Tensor): tf.Tensor4D {
  return tf.tidy(() => x.transpose([0, 2, 3, 1]) as tf.Tensor4D);
}

export function nhwcToNchw(x: tf.Tensor): tf.Tensor4D {
  return tf.tidy(() => x.transpose([0, 3, 1, 2]) as tf.Tensor4D);
}
