/** nn.Embedding: a [V, H] table looked up by token id (`tf.gather`; its gradient is UnsortedSegmentSum). */
import * as tf from '@tensorflow/tfjs';
import { Module, type InitContext } from '../../nn/module.js';

export interface EmbeddingConfig {
  numEmbeddings: number;
  dim: number;
  /** Std of the normal initialiser (HF LLaMA: initializer_range 0.02). */
  initStd: number;
}

export class Embedding extends Module<EmbeddingConfig> {
  readonly weight: tf.Variable; // [V, H]

  constructor(config: EmbeddingConfig, ctx: InitContext) {
    super(config);
    this.weight = this.addWeight('weight', [config.numEmbeddings, config.dim], { kind: 'normal', std: config.initStd }, ctx);
  }

  /** ids (int32, any shape [...]) -> [..., H]. Ids must be in [0, V): gather does not check on every backend. */
  apply(ids: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const flat = ids.reshape([-1]);
      return tf.gather(this.weight, flat.dtype === 'int32' ? flat : flat.toInt()).reshape([...ids.shape, this.config.dim]);
    });
  }
}
