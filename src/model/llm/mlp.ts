/** LLaMA's SwiGLU feed-forward: down( silu(gate(x)) * up(x) ), no biases. */
import * as tf from '@tensorflow/tfjs';
import { Module, type InitContext } from '../../nn/module.js';
import { Linear } from '../../nn/linear.js';
import { silu } from '../../nn/activations.js';
import { ADAPTERS_ON, BlockLora, withDelta, type AdapterPass, type LoraConfig, type LoraTarget } from './lora.js';

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
  /** LoRA adapters (attachLora), null without. */
  private lora: BlockLora | null = null;

  constructor(config: LlamaMLPConfig, ctx: InitContext) {
    super(config);
    const { hiddenSize: h, intermediateSize: i } = config;
    const init = { weight: { kind: 'normal', std: config.initStd } as const };
    this.gateProj = this.addChild('gate_proj', new Linear({ inFeatures: h, outFeatures: i, bias: false }, ctx, init));
    this.upProj = this.addChild('up_proj', new Linear({ inFeatures: h, outFeatures: i, bias: false }, ctx, init));
    this.downProj = this.addChild('down_proj', new Linear({ inFeatures: i, outFeatures: h, bias: false }, ctx, init));
  }

  /** Add LoRA adapters to the modules of `modules` this block has (gate/up/down_proj, or Phi-3's gate_up_proj). */
  attachLora(modules: readonly LoraTarget[], config: LoraConfig, ctx: InitContext): void {
    if (this.lora) throw new Error('LlamaMLP: LoRA adapters are already attached');
    const linears = { gate_proj: this.gateProj, up_proj: this.upProj, down_proj: this.downProj };
    this.lora = new BlockLora(linears, modules, config, ctx, (name, child) => this.addChild(name, child));
  }

  get loraAdapters(): BlockLora | null {
    return this.lora;
  }

  /** x [N, H] -> [N, H] (callers fold the batch into N: 2-D matmuls only); `layer` seeds LoRA dropout. */
  apply(x: tf.Tensor2D, adapters: AdapterPass = ADAPTERS_ON, layer = 0): tf.Tensor2D {
    return tf.tidy(() => {
      const lp = this.lora?.begin(adapters, layer) ?? null;
      const gate = withDelta(this.gateProj.apply(x), lp, 'gate_proj', x);
      const up = withDelta(this.upProj.apply(x), lp, 'up_proj', x);
      const gated = tf.mul(silu(gate), up) as tf.Tensor2D; // [N,I]
      return withDelta(this.downProj.apply(gated), lp, 'down_proj', gated);
    });
  }
}
