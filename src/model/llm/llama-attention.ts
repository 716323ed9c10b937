/**
 * LLaMA self-attention with RoPE and grouped-query attention (GQA).
 *
 * GQA without repeating k/v: query heads j*r .. j*r+r-1 all use kv head j (HF repeat_kv /
 * repeat_interleave), so the queries are regrouped as [B*kvH, r*T, hd] (a free reshape of
 * [B, H, T, hd]) and multiplied with the unrepeated keys/values [B*kvH, S, hd]: one batched matmul each.
 */
import * as tf from '@tensorflow/tfjs';
import { Module, type InitContext } from '../../nn/module.js';
import { Linear } from '../../nn/linear.js';
import { applyRope, type RopeOperands } from './rope.js';
import type { KvCache } from './kv-cache.js';
import { ADAPTERS_ON, BlockLora, withDelta, type AdapterPass, type LoraConfig, type LoraTarget } from './lora.js';

export interface LlamaAttentionConfig {
  hiddenSize: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  /** q/k/v/o biases (HF `attention_bias`). */
  bias: boolean;
  /** Std of the normal weight initialiser. */
  initStd: number;
}

/**
 * The queries one layer keeps (the last layer of a pass that only needs some rows' logits, e.g. the
 * supervised positions of the loss): keys and values still come from every row, the rest of the layer
 * runs on these rows only. Mq rows per batch element, batch-major; a batch element with fewer selected
 * rows repeats one of them (planned by `planQueryRows`).
 */
export interface QueryRows {
  /** [B*Mq] int32 rows of the flattened [B*T] positions. */
  index: tf.Tensor1D;
  /** [B*Mq] int32 positions of those rows within their batch element (index mod T). */
  positions: tf.Tensor1D;
  /** Mq: queries per batch element. */
  perBatch: number;
}

/** What every layer of one forward pass shares. */
export interface AttentionContext {
  batch: number;
  /** New positions T in this pass. */
  seq: number;
  /** RoPE for queries, with the 1/sqrt(hd) score scale folded into cos/sin. */
  ropeQ: RopeOperands;
  /** RoPE for keys (unscaled). */
  ropeK: RopeOperands;
  /** Additive mask [B or 1, 1, T, S]. */
  bias: tf.Tensor4D;
  cache: KvCache | null;
  /** LoRA adapters on/off and the pass's dropout seed (default: on, no dropout). */
  adapters?: AdapterPass;
}

export class LlamaAttention extends Module<LlamaAttentionConfig> {
  readonly qProj: Linear;
  readonly kProj: Linear;
  readonly vProj: Linear;
  readonly oProj: Linear;
  /** LoRA adapters (attachLora), null without. */
  private lora: BlockLora | null = null;

  constructor(config: LlamaAttentionConfig, ctx: InitContext) {
    super(config);
    const { hiddenSize: h, numHeads, numKvHeads, headDim, bias } = config;
    if (numHeads % numKvHeads !== 0) throw new Error(`LlamaAttention: numHeads ${numHeads} is not a multiple of numKvHeads ${numKvHeads}`);
    const init = { weight: { kind: 'normal', std: config.initStd } as const, bias: { kind: 'zeros' } as const };
    this.qProj = this.addChild('q_proj', new Linear({ inFeatures: h, outFeatures: numHeads * headDim, bias }, ctx, init));
    this.kProj = this.addChild('k_proj', new Linear({ inFeatures: h, outFeatures: numKvHeads * headDim, bias }, ctx, init));
    this.vProj = this.addChild('v_proj', new Linear({ inFeatures: h, outFeatures: numKvHeads * headDim, bias }, ctx, init));
    this.oProj = this.addChild('o_proj', new Linear({ inFeatures: numHeads * headDim, outFeatures: h, bias }, ctx, init));
  }

  /** Add LoRA adapters to the modules of `modules` this block has (q/k/v/o_proj, or Phi-3's qkv_proj). */
  attachLora(modules: readonly LoraTarget[], config: LoraConfig, ctx: InitContext): void {
    if (this.lora) throw new Error('LlamaAttention: LoRA adapters are already attached');
    const linears = { q_proj: this.qProj, k_proj: this.kProj, v_proj: this.vProj, o_proj: this.oProj };
    this.lora = new BlockLora(linears, modules, config, ctx, (name, child) => this.addChild(name, child));
  }

  get loraAdapters(): BlockLora | null {
    return this.lora;
  }

  /**
   * x [N = B*T, H] -> [N, H], or [B*Mq, H] for the `rows` given. With a cache, this layer's keys/values
   * are appended to it (`layer` is the index of this layer in the cache).
   */
  apply(x: tf.Tensor2D, ctx: AttentionContext, layer: number, rows?: QueryRows): tf.Tensor2D {
    return tf.tidy(() => {
      const { numHeads: nh, numKvHeads: nkv, headDim: hd } = this.config;
      const { batch: b } = ctx;
      const n = b * ctx.seq;
      const t = rows ? rows.perBatch : ctx.seq; // queries per batch element
      const r = nh / nkv;
      const xq = rows ? tf.gather(x, rows.index) : x; // [B*t, H]
      const ropeQ = rows ? ropeRows(ctx.ropeQ, rows.index) : ctx.ropeQ;
      const lp = this.lora?.begin(ctx.adapters ?? ADAPTERS_ON, layer) ?? null; // LoRA deltas (adapters share x)
      const qx = withDelta(this.qProj.apply(xq), lp, 'q_proj', x, rows?.index); // [B*t, nh*hd]
      const q = applyRope(qx.reshape([b * t, nh, hd]) as tf.Tensor3D, ropeQ); // [B*t,nh,hd], pre-scaled
      const kNew = applyRope(withDelta(this.kProj.apply(x), lp, 'k_proj', x).reshape([n, nkv, hd]) as tf.Tensor3D, ctx.ropeK); // [N,nkv,hd]
      const vNew = withDelta(this.vProj.apply(x), lp, 'v_proj', x).reshape([b, ctx.seq, nkv, hd]);
      let k = kNew.reshape([b, ctx.seq, nkv, hd]).transpose([0, 2, 1, 3]) as tf.Tensor4D; // [B,nkv,T,hd]
      let v = vNew.transpose([0, 2, 1, 3]) as tf.Tensor4D; // [B,nkv,T,hd]
      if (ctx.cache) ({ k, v } = ctx.cache.append(layer, k, v)); // [B,nkv,S,hd]
      const s = k.shape[2];
      // [B,T,nh,hd] -> [B,nh,T,hd] = [B, nkv, r, T, hd] -> [B*nkv, r*T, hd]: the r query heads of a kv head.
      const qg = q.reshape([b, t, nh, hd]).transpose([0, 2, 1, 3]).reshape([b * nkv, r * t, hd]);
      const scores = tf.matMul(qg, k.reshape([b * nkv, s, hd]), false, true); // [B*nkv, r*T, S]
      const masked = tf.add(scores.reshape([b, nh, t, s]), rows ? queryBias(ctx.bias, rows, b) : ctx.bias); // [B,nh,t,S]
      const probs = tf.softmax(masked, -1).reshape([b * nkv, r * t, s]);
      const out = tf.matMul(probs, v.reshape([b * nkv, s, hd])); // [B*nkv, r*T, hd]
      const merged = out.reshape([b, nh, t, hd]).transpose([0, 2, 1, 3]).reshape([b * t, nh * hd]) as tf.Tensor2D; // [B*t, nh*hd]
      return withDelta(this.oProj.apply(merged), lp, 'o_proj', merged);
    });
  }
}

/** The RoPE operands of the kept queries (every [N,1,hd] table gathered at `index`). */
function ropeRows(r: RopeOperands, index: tf.Tensor1D): RopeOperands {
  const rows = (t: tf.Tensor3D) => tf.gather(t, index) as tf.Tensor3D;
  const k = r.kernelTables;
  return { ...r, cos: rows(r.cos), sin: rows(r.sin), kernelTables: k && { signed: rows(k.signed), swapped: rows(k.swapped) } };
}

/** The mask rows of the kept queries: bias [B or 1, 1, T, S] -> [B, 1, Mq, S]. */
function queryBias(bias: tf.Tensor4D, rows: QueryRows, b: number): tf.Tensor4D {
  const [bb, , t, s] = bias.shape;
  // A row-independent mask is indexed by position within the row, a per-row one by the flat row.
  const index = bb === 1 ? rows.positions : rows.index;
  return tf.gather(bias.reshape([bb * t, s]), index).reshape([b, 1, rows.perBatch, s]) as tf.Tensor4D;
}
