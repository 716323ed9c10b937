/** One pre-norm LLaMA block: x += attn(ln1(x)); x += mlp(ln2(x)). */
import * as tf from '@tensorflow/tfjs';
import { Module, type InitContext } from '../../nn/module.js';
import { RMSNorm } from '../../nn/norm.js';
import { LlamaAttention, type AttentionContext, type LlamaAttentionConfig, type QueryRows } from './llama-attention.js';
import { LlamaMLP } from './mlp.js';

export interface LlamaDecoderLayerConfig extends LlamaAttentionConfig {
  intermediateSize: number;
  rmsNormEps: number;
}

export class LlamaDecoderLayer extends Module<LlamaDecoderLayerConfig> {
  readonly inputLayernorm: RMSNorm;
  readonly selfAttn: LlamaAttention;
  readonly postAttentionLayernorm: RMSNorm;
  readonly mlp: LlamaMLP;

  constructor(config: LlamaDecoderLayerConfig, ctx: InitContext) {
    super(config);
    const { hiddenSize, intermediateSize, rmsNormEps: eps, initStd } = config;
    const { numHeads, numKvHeads, headDim, bias } = config;
    this.inputLayernorm = this.addChild('input_layernorm', new RMSNorm({ dim: hiddenSize, eps }, ctx));
    this.selfAttn = this.addChild('self_attn', new LlamaAttention({ hiddenSize, numHeads, numKvHeads, headDim, bias, initStd }, ctx));
    this.postAttentionLayernorm = this.addChild('post_attention_layernorm', new RMSNorm({ dim: hiddenSize, eps }, ctx));
    this.mlp = this.addChild('mlp', new LlamaMLP({ hiddenSize, intermediateSize, initStd }, ctx));
  }

  /** x [N = B*T, H] -> [N, H], or [B*Mq, H] with `rows` (keys/values still from every row). */
  apply(x: tf.Tensor2D, ctx: AttentionContext, layer: number, rows?: QueryRows): tf.Tensor2D {
    return tf.tidy(() => {
      const attn = this.selfAttn.apply(this.inputLayernorm.apply(x) as tf.Tensor2D, ctx, layer, rows);
      const h = tf.add(rows ? tf.gather(x, rows.index) : x, attn) as tf.Tensor2D;
      return tf.add(h, this.mlp.apply(this.postAttentionLayernorm.apply(h) as tf.Tensor2D, ctx.adapters, layer)) as tf.Tensor2D;
    });
  }
}
