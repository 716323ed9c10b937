/** nn.Linear with the weight in PyTorch layout `[out, in]`. */
import * as tf from '@tensorflow/tfjs';
import { Module, type InitContext } from './module.js';
import type { Initializer } from './init.js';

export interface LinearConfig {
  inFeatures: number;
  outFeatures: number;
  bias: boolean;
}

export class Linear extends Module<LinearConfig> {
  readonly weight: tf.Variable; // [out, in]
  readonly bias: tf.Variable | null; // [out]

  constructor(config: LinearConfig, ctx: InitContext, init?: { weight?: Initializer; bias?: Initializer }) {
    super(config);
    const fanIn = config.inFeatures;
    this.weight = this.addWeight('weight', [config.outFeatures, fanIn], init?.weight ?? { kind: 'torchDefault', fanIn }, ctx);
    this.bias = config.bias
      ? this.addWeight('bias', [config.outFeatures], init?.bias ?? { kind: 'torchDefault', fanIn }, ctx)
      : null;
  }

  /** x [..., in] -> [..., out]. Folded to 2-D: tfjs' gradient of a rank-3 x rank-2 matmul is wrong. */
  apply(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => linear(x, this.weight, this.bias));
  }
}

/** y = x W^T + b for x [..., in], W [out, in]. */
export function linear(x: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor | null): tf.Tensor {
  return tf.tidy(() => {
    const inF = x.shape[x.shape.length - 1]!;
    const outF = weight.shape[0]!;
    const lead = x.shape.slice(0, -1);
    const x2 = x.reshape([-1, inF]); // [M, in]
    let y = tf.matMul(x2, weight, false, true); // [M, out]
    if (bias) y = tf.add(y, bias);
    return y.reshape([...lead, outF]);
  });
}
