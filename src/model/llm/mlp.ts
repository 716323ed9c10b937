/** LLaMA's SwiGLU feed-forward: down( silu(gate(x)) * up(x) ), no biases. */
import * as tf from '@tensorflow/tfjs';
import { Module, type InitContext } from '../../nn/module.js';
import { Linear } from '../../nn/linear.js';
import { silu } from '../../nn/activations.js';

export interface LlamaMLPConfig {
  hiddenSize: number;
  intermediateSize: number;
  /** Std of the normal weight initialiser. */
  initStd: number;
}

export class LlamaMLP extends Module<LlamaMLPConfig> {
  readonly gateProj: Linear;
  readonly upProj: Linear;
  readonly downProj: Linear;

  constructor(config: LlamaMLPConfig, ctx: InitContext) {
    super(config);
    const { hiddenSize: h, intermediateSize: i } = config;
    const init = { weight: { kind: 'normal', std: config.initStd } as const };
    this.gateProj = this.addChild('gate_proj', new Linear({ inFeatures: h, outFeatures: i, bias: false }, ctx, init));
    this.upProj = this.addChild('up_proj', new Linear({ inFeatures: h, outFeatures: i, bias: false }, ctx, init));
    this.downProj = this.addChild('down_proj', new Linear({ inFeatures: i, outFeatures: h, bias: false }, ctx, init));
  }

  /** x [N, H] -> [N, H] (callers fold the batch into N: 2-D matmuls only). */
  apply(x: tf.Tensor2D): tf.Tensor2D {
    return tf.tidy(() => {
      const gated = tf.mul(silu(this.gateProj.apply(x)), this.upProj.apply(x)); // [N,I]
      return this.downProj.apply(gated) as tf.Tensor2D;
    });
  }
}
