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
import { resolveLoraTargets, SAVED_MODULE_WEIGHT, type BlockLora, type LoraConfig, type LoraTarget } from './lora.js';
import { checkpointed } from '../../nn/checkpoint.js';

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
  /** LoRA adapters on (default) or off (the base model). */
  adapters?: boolean;
  /** A training pass's LoRA dropout seed; null/absent: no dropout (evaluation, generation). */
  dropoutSeed?: number | null;
  /**
   * Activation checkpointing per decoder layer (default: `activationCheckpointing` of the model): each layer
   * keeps only its input for the backward pass and recomputes itself there. Never with a cache.
   */
  checkpointLayers?: boolean;
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
  /** The adapters' config with the resolved module list, null without LoRA. */
  private loraState: { config: LoraConfig; modules: LoraTarget[] } | null = null;
  /** Default of `forward({ checkpointLayers })`: the trainer turns it on for `train.activation_checkpointing`. */
  activationCheckpointing = false;

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

  /**
   * Add LoRA adapters to the decoder layers' linears named by `config.targets` (never lm_head); A is drawn
   * from `ctx` (zeros with skipInit), B is zero. Returns the adapted module names.
   */
  attachLora(config: LoraConfig, ctx: InitContext): LoraTarget[] {
    if (this.loraState) throw new Error('LlamaForCausalLM: LoRA adapters are already attached');
    const modules = resolveLoraTargets(config, this.config.weightFormat ?? 'llama', this.config.tieWordEmbeddings);
    for (const layer of this.model.layers) {
      layer.selfAttn.attachLora(modules, config, ctx);
      layer.mlp.attachLora(modules, config, ctx);
    }
    this.loraState = { config: { ...config, targets: modules }, modules };
    return modules;
  }

  /** The LoRA config (targets resolved to module names), null without adapters. */
  get lora(): LoraConfig | null {
    return this.loraState ? { ...this.loraState.config } : null;
  }

  /** Whether a weight name (any prefix) is a LoRA adapter weight. */
  static isLoraWeight(name: string): boolean {
    return /\.lora_[AB]\.weight$/.test(name);
  }

  /**
   * Whether a weight (checkpoint name after `prefix`) belongs to the adapter: its LoRA weights and the modules it
   * saves in full (`modulesToSave`). What a LoRA finetune trains of the LLM and a PEFT adapter holds.
   */
  isAdapterWeight(name: string, prefix = ''): boolean {
    if (LlamaForCausalLM.isLoraWeight(name)) return true;
    const saved = this.loraState?.config.modulesToSave ?? [];
    return saved.some((m) => name === prefix + SAVED_MODULE_WEIGHT[m]);
  }

  /**
   * The adapted linears' weights with their adapters merged, W + scaling * B A, by checkpoint name
   * (`model.layers.N.self_attn.q_proj.weight`, after `prefix`): what a merged export holds. The caller
   * disposes the tensors. Empty without LoRA.
   */
  mergedWeights(prefix = ''): Map<string, tf.Tensor2D> {
    const out = new Map<string, tf.Tensor2D>();
    this.model.layers.forEach((layer, i) => {
      const blocks: { name: string; lora: BlockLora | null; linears: Record<string, Linear> }[] = [
        { name: 'self_attn', lora: layer.selfAttn.loraAdapters, linears: { q_proj: layer.selfAttn.qProj, k_proj: layer.selfAttn.kProj, v_proj: layer.selfAttn.vProj, o_proj: layer.selfAttn.oProj } },
        { name: 'mlp', lora: layer.mlp.loraAdapters, linears: { gate_proj: layer.mlp.gateProj, up_proj: layer.mlp.upProj, down_proj: layer.mlp.downProj } },
      ];
      for (const blk of blocks) {
        if (!blk.lora) continue;
        const deltas = blk.lora.mergedDeltas();
        for (const [member, d] of deltas) {
          const w = blk.linears[member]!.weight;
          out.set(`${prefix}model.layers.${i}.${blk.name}.${member}.weight`, tf.tidy(() => tf.add(w, d) as tf.Tensor2D));
          d.dispose();
        }
      }
    });
    return out;
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
        adapters: { enabled: opts.adapters ?? true, dropoutSeed: opts.dropoutSeed ?? null },
      };
      const checkpoint = (opts.checkpointLayers ?? this.activationCheckpointing) && !cache;
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
        const rows = i === last ? lastRows : undefined;
        h = checkpoint ? checkpointedLayer(layer, h, ctx, i, rows) : layer.apply(h, ctx, i, rows); // last: [B*Mq,H] with a plan
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

/**
 * One decoder layer under activation checkpointing: the context's tensors (RoPE tables, mask, kept rows) go
 * with the saved input, since the forward pass disposes its own handles before the backward pass runs.
 */
function checkpointedLayer(layer: LlamaDecoderLayer, x: tf.Tensor2D, ctx: AttentionContext, i: number, rows?: QueryRows): tf.Tensor2D {
  const rope = (r: RopeOperands) => [r.cos, r.sin, r.rotate, ...(r.kernelTables ? [r.kernelTables.signed, r.kernelTables.swapped] : [])];
  const consts: tf.Tensor[] = [...rope(ctx.ropeQ), ...rope(ctx.ropeK), ctx.bias, ...(rows ? [rows.index, rows.positions] : [])];
  const rebuild = (c: tf.Tensor[]): [AttentionContext, QueryRows | undefined] => {
    let k = 0;
    const take = <T extends tf.Tensor>() => c[k++] as T;
    const ropeFrom = (r: RopeOperands): RopeOperands => ({
      cos: take(),
      sin: take(),
      rotate: take(),
      ...(r.kernelTables ? { kernelTables: { signed: take(), swapped: take() } } : {}),
    });
    const ropeQ = ropeFrom(ctx.ropeQ);
    const ropeK = ropeFrom(ctx.ropeK);
    const bias = take<tf.Tensor4D>();
    const r = rows ? { index: take<tf.Tensor1D>(), positions: take<tf.Tensor1D>(), perBatch: rows.perBatch } : undefined;
    return [{ ...ctx, ropeQ, ropeK, bias }, r];
  };
  const params = [...layer.namedWeights()].map(([, v]) => v);
  return checkpointed((input: tf.Tensor2D, c) => {
    const [cx, r] = rebuild(c);
    return layer.apply(input, cx, i, r);
  }, x, params, consts) as tf.Tensor2D;
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
