/**
 * LLaMA-family causal LM with HF `LlamaForCausalLM` weight names:
 *   model.embed_tokens.weight [V,H]; model.layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj,
 *   post_attention_layernorm, mlp.{gate,up,down}_proj}.weight; model.norm.weight; lm_head.weight [V,H]
 *   (absent when tied: logits = h @ embed_tokens^T).
 *
 * Activations run folded to 2-D [B*T, H] between the attention cores (plain 2-D matmuls; tfjs' gradient of
 * a rank-3 x rank-2 matmul is wrong). Masks, position ids and RoPE tables are planned on the host.
 */
import * as tf from '@tensorflow/tfjs';
import { Module, type InitContext } from '../../nn/module.js';
import { Linear } from '../../nn/linear.js';
import { RMSNorm } from '../../nn/norm.js';
import { headDimOf, validateLlamaConfig, type LlamaConfig } from './config.js';
import { Embedding } from './embedding.js';
import { LlamaDecoderLayer } from './decoder-layer.js';
import type { AttentionContext, QueryRows } from './llama-attention.js';
import { KvCache } from './kv-cache.js';
import { attentionBias, defaultPositionIds } from './mask.js';
import { RopeTable, ropeKernelTables, rotateHalfMatrix, type RopeOperands } from './rope.js';
import { expectShape, filledIntMatrix, toIntMatrix, type IntMatrix, type IntMatrixLike } from './int-matrix.js';

export type { LlamaConfig } from './config.js';

/** `model.*`: embeddings, decoder layers, final norm. */
export class LlamaModel extends Module<LlamaConfig> {
  readonly embedTokens: Embedding;
  readonly layers: LlamaDecoderLayer[] = [];
  readonly norm: RMSNorm;

  constructor(config: LlamaConfig, ctx: InitContext) {
    super(config);
    const initStd = config.initializerRange ?? 0.02;
    this.embedTokens = this.addChild('embed_tokens', new Embedding({ numEmbeddings: config.vocabSize, dim: config.hiddenSize, initStd }, ctx));
    const layerConfig = {
      hiddenSize: config.hiddenSize,
      intermediateSize: config.intermediateSize,
      numHeads: config.numHeads,
      numKvHeads: config.numKvHeads,
      headDim: headDimOf(config),
      bias: config.attentionBias ?? false,
      rmsNormEps: config.rmsNormEps,
      initStd,
    };
    for (let i = 0; i < config.numLayers; i++) {
      this.layers.push(this.addChild(`layers.${i}`, new LlamaDecoderLayer(layerConfig, ctx)));
    }
    this.norm = this.addChild('norm', new RMSNorm({ dim: config.hiddenSize, eps: config.rmsNormEps }, ctx));
  }
}

export interface LlamaForwardOptions {
  /** Token ids [B,T] on the host (checked to lie in [0, V)). Give exactly one of inputIds / inputsEmbeds. */
  inputIds?: IntMatrixLike;
  /** Input embeddings [B,T,H] (e.g. the multimodal splice). */
  inputsEmbeds?: tf.Tensor3D;
  /** [B,T] 1 = real, 0 = padding, for the T new positions. Default: all real. */
  attentionMask?: IntMatrixLike;
  /** [B,T]. Default: `defaultPositionIds` (count of earlier real tokens in the row, 0 on padding). */
  positionIds?: IntMatrixLike;
  /** Incremental decoding: attend to the cached positions and append the new ones (see KvCache). */
  cache?: KvCache;
  /** Also return [embeddings, output of layer 1..L, after the final norm], each [B,T,H]. */
  outputHiddenStates?: boolean;
  /**
   * Compute logits only for these rows of the flattened [B*T] positions (e.g. the supervised positions
   * of the loss, `shiftedTargets(labels).rows`): logits are then [M, V]. Default: all, [B,T,V].
   */
  logitRows?: Int32Array;
}

export interface LlamaForwardResult {
  /** [B,T,V], or [M,V] with `logitRows`. */
  logits: tf.Tensor;
  /** With `outputHiddenStates`: numLayers + 2 tensors [B,T,H]. */
  hiddenStates?: tf.Tensor3D[];
}

export class LlamaForCausalLM extends Module<LlamaConfig> {
  readonly model: LlamaModel;
  /** null when the head is tied to the embeddings. */
  readonly lmHead: Linear | null;
  readonly headDim: number;
  private readonly rope: RopeTable;

  constructor(config: LlamaConfig, ctx: InitContext) {
    validateLlamaConfig(config);
    super(config);
    this.headDim = headDimOf(config);
    this.model = this.addChild('model', new LlamaModel(config, ctx));
    this.lmHead = config.tieWordEmbeddings
      ? null
      : this.addChild(
          'lm_head',
          new Linear({ inFeatures: config.hiddenSize, outFeatures: config.vocabSize, bias: false }, ctx, {
            weight: { kind: 'normal', std: config.initializerRange ?? 0.02 },
          }),
        );
    this.rope = new RopeTable(this.headDim, config.ropeTheta);
  }

  /** A fresh, empty KV cache sized for this model. */
  createCache(): KvCache {
    return new KvCache(this.config.numLayers);
  }

  /** Token embeddings: ids (int32 tensor, any shape) -> [..., H]. Ids are not range-checked here. */
  embed(ids: tf.Tensor): tf.Tensor {
    return this.model.embedTokens.apply(ids);
  }

  /** The RoPE cos/sin for position ids [B,T], each Float32Array [B*T*hd] (= [B,T,hd]). */
  ropeCosSin(positionIds: IntMatrixLike): { cos: Float32Array; sin: Float32Array } {
    return this.rope.rows(toIntMatrix(positionIds, 'positionIds').data);
  }

  /** The weight that maps hidden states to logits, [V,H]. */
  get outputWeight(): tf.Variable {
    return this.lmHead ? this.lmHead.weight : this.model.embedTokens.weight;
  }

  forward(opts: LlamaForwardOptions): LlamaForwardResult {
    const { ids, b, t } = this.checkInputs(opts);
    const mask = opts.attentionMask ? toIntMatrix(opts.attentionMask, 'attentionMask') : filledIntMatrix(b, t, 1);
    expectShape(mask, b, t, 'LlamaForCausalLM.forward attentionMask');
    const cache = opts.cache ?? null;
    cache?.checkBatch(b);
    const positions = opts.positionIds ? toIntMatrix(opts.positionIds, 'positionIds') : defaultPositionIds(mask, cache);
    expectShape(positions, b, t, 'LlamaForCausalLM.forward positionIds');
    if (opts.logitRows) {
      for (const r of opts.logitRows) {
        if (!(r >= 0 && r < b * t)) throw new Error(`LlamaForCausalLM.forward: logit row ${r} is outside [0, ${b * t})`);
      }
    }
    // Only some rows' logits wanted (the loss): the last layer runs on those rows alone (its keys and
    // values still come from every row). Not with a cache or hidden states, which need every row.
    const plan = opts.logitRows && !cache && !opts.outputHiddenStates ? planQueryRows(opts.logitRows, b, t) : null;
    const hd = this.headDim;
    const { cos, sin } = this.rope.rows(positions.data); // [B*T, hd]
    // The queries' RoPE also applies the score scale 1/sqrt(hd) (RoPE is linear in q): one multiply less per layer.
    const scale = 1 / Math.sqrt(hd);
    const scaled = { cos: cos.map((c) => c * scale), sin: sin.map((s) => s * scale) };
    const result = tf.tidy(() => {
      const rotate = rotateHalfMatrix(hd);
      const operands = (c: Float32Array, s: Float32Array): RopeOperands => ({
        cos: tf.tensor3d(c, [b * t, 1, hd]),
        sin: tf.tensor3d(s, [b * t, 1, hd]),
        rotate,
        kernelTables: ropeKernelTables(s, b * t, hd),
      });
      const ctx: AttentionContext = {
        batch: b,
        seq: t,
        ropeQ: operands(scaled.cos, scaled.sin),
        ropeK: operands(cos, sin),
        bias: attentionBias(mask, cache),
        cache,
      };
      const h0 = opts.inputsEmbeds ?? this.embed(tf.tensor2d(ids!.data, ids!.shape, 'int32')); // [B,T,H]
      const hidden: tf.Tensor3D[] = [];
      const keepHidden = (x: tf.Tensor) => {
        if (opts.outputHiddenStates) hidden.push(x.reshape([b, t, this.config.hiddenSize]));
      };
      keepHidden(h0);
      let h = h0.reshape([b * t, this.config.hiddenSize]) as tf.Tensor2D; // [N,H]
      const lastRows: QueryRows | undefined = plan
        ? { index: tf.tensor1d(plan.index, 'int32'), positions: tf.tensor1d(plan.index.map((r) => r % t), 'int32'), perBatch: plan.perBatch }
        : undefined;
      const last = this.model.layers.length - 1;
      this.model.layers.forEach((layer, i) => {
        h = layer.apply(h, ctx, i, i === last ? lastRows : undefined); // last: [B*Mq,H] with a plan
        keepHidden(h);
      });
      h = this.model.norm.apply(h) as tf.Tensor2D;
      keepHidden(h);
      let rows: tf.Tensor2D = h; // [M,H]
      if (plan && last >= 0) {
        if (plan.back) rows = tf.gather(h, tf.tensor1d(plan.back, 'int32'));
      } else if (opts.logitRows) {
        rows = tf.gather(h, tf.tensor1d(opts.logitRows, 'int32'));
      }
      const logits = tf.matMul(rows, this.outputWeight, false, true); // [M,V]
      return {
        logits: opts.logitRows ? logits : logits.reshape([b, t, this.config.vocabSize]),
        hiddenStates: hidden,
      };
    });
    if (cache) cache.commit(mask);
    return opts.outputHiddenStates ? result : { logits: result.logits };
  }

  /** Exactly one input; host ids are checked to be vocabulary rows (the <image> id -200 is not). */
  private checkInputs(opts: LlamaForwardOptions): { ids: IntMatrix | null; b: number; t: number } {
    const hasIds = opts.inputIds !== undefined;
    if (hasIds === (opts.inputsEmbeds !== undefined)) {
      throw new Error('LlamaForCausalLM.forward: give exactly one of inputIds and inputsEmbeds');
    }
    if (!hasIds) {
      const e = opts.inputsEmbeds!;
      if (e.rank !== 3 || e.shape[2] !== this.config.hiddenSize) {
        throw new Error(`LlamaForCausalLM.forward: inputsEmbeds must be [B,T,${this.config.hiddenSize}], got [${e.shape}]`);
      }
      return { ids: null, b: e.shape[0], t: e.shape[1] };
    }
    const ids = toIntMatrix(opts.inputIds!, 'inputIds');
    const v = this.config.vocabSize;
    const [b, t] = ids.shape;
    for (let i = 0; i < ids.data.length; i++) {
      const id = ids.data[i]!;
      if (id < 0 || id >= v) {
        const hint = id === -200 ? ' (the <image> placeholder: splice the visual tokens first, model/splice.ts)' : '';
        throw new Error(`LlamaForCausalLM: token id ${id} at [${Math.floor(i / t)},${i % t}] is outside [0, ${v})${hint}`);
      }
    }
    return { ids, b, t };
  }
}

/** Which query rows the last layer keeps: `logitRows` grouped per batch element, padded to the same count. */
interface QueryRowsPlan {
  /** [B*Mq] flat rows, batch-major; padding repeats the element's last selected row (or its row 0). */
  index: Int32Array;
  perBatch: number;
  /** Position in `index` of each logit row, or null when `index` is exactly the logit rows. */
  back: Int32Array | null;
}

/** null when pruning would not save work (Mq = T). */
function planQueryRows(logitRows: Int32Array, b: number, t: number): QueryRowsPlan | null {
  const perRow: number[][] = Array.from({ length: b }, () => []);
  const slot = new Int32Array(logitRows.length);
  logitRows.forEach((r, i) => {
    const list = perRow[Math.floor(r / t)]!;
    slot[i] = list.length;
    list.push(r);
  });
  const mq = Math.max(1, ...perRow.map((l) => l.length));
  if (mq >= t) return null;
  const index = new Int32Array(b * mq);
  perRow.forEach((list, e) => {
    for (let j = 0; j < mq; j++) index[e * mq + j] = list.length ? list[Math.min(j, list.length - 1)]! : e * t;
  });
  const back = Int32Array.from(logitRows, (r, i) => Math.floor(r / t) * mq + slot[i]!);
  const identity = back.length === index.length && back.every((p, i) => p === i);
  return { index, perBatch: mq, back: identity ? null : back };
}
