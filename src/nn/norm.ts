/** LayerNorm (CLIP eps 1e-5, ConvNeXt 1e-6) and RMSNorm (LLaMA), normalising the last axis. */
import * as tf from '@tensorflow/tfjs';
import { Module, type InitContext } from './module.js';
import { ones, zeros } from './init.js';

export interface LayerNormConfig {
  dim: number;
  eps: number;
}

export class LayerNorm extends Module<LayerNormConfig> {
  readonly weight: tf.Variable;
  readonly bias: tf.Variable;

  constructor(config: LayerNormConfig, ctx: InitContext) {
    super(config);
    this.weight = this.addWeight('weight', [config.dim], ones, ctx);
    this.bias = this.addWeight('bias', [config.dim], zeros, ctx);
  }

  /** x [..., dim] -> [..., dim] (biased variance, as torch). */
  apply(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const mean = tf.mean(x, -1, true);
      const centered = tf.sub(x, mean);
      const variance = tf.mean(tf.square(centered), -1, true);
      const normed = tf.mul(centered, tf.rsqrt(tf.add(variance, this.config.eps)));
      return tf.add(tf.mul(normed, this.weight), this.bias);
    });
  }
}

export interface RMSNormConfig {
  dim: number;
  eps: number;
}

export class RMSNorm extends Module<RMSNormConfig> {
  readonly weight: tf.Variable;

  constructor(config: RMSNormConfig, ctx: InitContext) {
    super(config);
    this.weight = this.addWeight('weight', [config.dim], ones, ctx);
  }

  /** w * x / sqrt(mean(x^2) + eps) over the last axis. */
  apply(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const ms = tf.mean(tf.square(x), -1, true);
      return tf.mul(tf.mul(x, tf.rsqrt(tf.add(ms, this.config.eps))), this.weight);
    });
  }
}
