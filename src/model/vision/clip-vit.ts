/**
 * CLIP ViT vision tower (HF `CLIPVisionModel`), the low-resolution encoder of MG-LLaVA.
 *
 * Weights are named as in HF checkpoints relative to the model root: `vision_model.embeddings.*`,
 * `vision_model.pre_layrnorm.*` (sic), `vision_model.encoder.layers.N.*`, `vision_model.post_layernorm.*`.
 * `post_layernorm` is kept only so checkpoints load strictly: LLaVA-style feature selection takes a raw
 * hidden state and never applies it. Layers after the selected hidden state are not computed.
 */
import * as tf from '@tensorflow/tfjs';
import { checkpointed } from '../../nn/checkpoint.js';
import { Module, type InitContext } from '../../nn/module.js';
import { Linear } from '../../nn/linear.js';
import { LayerNorm } from '../../nn/norm.js';
import { Conv2d } from '../../nn/conv.js';
import { quickGelu } from '../../nn/activations.js';
import { blockedAttention, mergeHeads, splitHeads } from '../../nn/attention.js';

export interface ClipVitConfig {
  /** Side of the square input image in pixels (336 for ViT-L/14-336). */
  imageSize: number;
  /** Side of a square patch; the patch embedding is a conv with kernel = stride = patchSize. */
  patchSize: number;
  /** Token width D. */
  hiddenSize: number;
  /** MLP width (4 D in CLIP). */
  intermediateSize: number;
  /** Number of encoder layers L (hidden states 0..L). */
  numLayers: number;
  /** Attention heads; hiddenSize must be a multiple of it. */
  numHeads: number;
  /** LayerNorm epsilon (1e-5 in CLIP). */
  layerNormEps: number;
  /** Input channels (3). */
  numChannels: number;
  /**
   * Which hidden state is the feature map, Python-style index into the L+1 hidden states
   * (LLaVA `mm_vision_select_layer`, default -2: the output of the penultimate layer).
   */
  selectLayer: number;
  /** Drop the CLS token from the selected state (LLaVA `select_feature='patch'`, the default). */
  dropCls: boolean;
}

/** What one pre-LN CLIP encoder layer needs: the vision tower and a CLIP-style text tower (OWLv2) share the layer. */
export type ClipLayerConfig = Pick<ClipVitConfig, 'hiddenSize' | 'intermediateSize' | 'numHeads' | 'layerNormEps'>;

/** Per-call attention options of a CLIP encoder layer. */
export interface ClipAttentionOptions {
  /** Additive attention bias broadcastable to [B,H,T,T] (a text tower's causal + padding mask); none: full attention. */
  bias?: tf.Tensor | null;
  /** Largest score block [B,h,t,T] materialised at once (see blockedAttention); default: all heads at once. */
  maxScores?: number;
}

export const CLIP_VIT_DEFAULTS = { layerNormEps: 1e-5, numChannels: 3, selectLayer: -2, dropCls: true } as const;

/**
 * Map an HF `config.json` (a `CLIPVisionConfig`, or a full `CLIPConfig` holding `vision_config`) to
 * ClipVitConfig. HF omits keys equal to its defaults when saving, so absent keys take HF's
 * CLIPVisionConfig defaults. `select_layer` / `mm_vision_select_layer` and `drop_cls` are read when
 * present (LLaVA keeps them in its own config). Any activation other than quick_gelu is refused.
 */
export function clipVitConfigFromHf(json: Record<string, unknown>): ClipVitConfig {
  const src = (typeof json.vision_config === 'object' && json.vision_config !== null ? json.vision_config : json) as Record<
    string,
    unknown
  >;
  const num = (key: string, fallback: number): number => {
    const v = src[key] ?? json[key];
    if (v === undefined) return fallback;
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`CLIP vision config: '${key}' must be a number, got ${JSON.stringify(v)}`);
    return v;
  };
  const act = src.hidden_act ?? src.activation ?? 'quick_gelu';
  if (act !== 'quick_gelu') throw new Error(`CLIP vision config: activation '${String(act)}' is not supported (only quick_gelu)`);
  const dropCls = src.drop_cls ?? json.drop_cls ?? (json.mm_vision_select_feature === 'cls_patch' ? false : CLIP_VIT_DEFAULTS.dropCls);
  if (typeof dropCls !== 'boolean') throw new Error(`CLIP vision config: 'drop_cls' must be a boolean, got ${JSON.stringify(dropCls)}`);
  return validateClipVitConfig({
    imageSize: num('image_size', 224),
    patchSize: num('patch_size', 32),
    hiddenSize: num('hidden_size', 768),
    intermediateSize: num('intermediate_size', 3072),
    numLayers: num('num_hidden_layers', 12),
    numHeads: num('num_attention_heads', 12),
    layerNormEps: num('layer_norm_eps', CLIP_VIT_DEFAULTS.layerNormEps),
    numChannels: num('num_channels', CLIP_VIT_DEFAULTS.numChannels),
    selectLayer: num('select_layer', num('mm_vision_select_layer', CLIP_VIT_DEFAULTS.selectLayer)),
    dropCls,
  });
}

/** Check the config is buildable; returns it unchanged. */
export function validateClipVitConfig(c: ClipVitConfig): ClipVitConfig {
  const bad = (msg: string) => new Error(`CLIP ViT config: ${msg}`);
  for (const k of ['imageSize', 'patchSize', 'hiddenSize', 'intermediateSize', 'numLayers', 'numHeads', 'numChannels'] as const) {
    if (!Number.isInteger(c[k]) || c[k] < 1) throw bad(`${k} must be a positive integer, got ${c[k]}`);
  }
  if (c.patchSize > c.imageSize) throw bad(`patchSize ${c.patchSize} > imageSize ${c.imageSize}`);
  if (c.hiddenSize % c.numHeads !== 0) throw bad(`hiddenSize ${c.hiddenSize} is not a multiple of numHeads ${c.numHeads}`);
  if (!(c.layerNormEps > 0)) throw bad(`layerNormEps must be > 0, got ${c.layerNormEps}`);
  selectedIndex(c); // throws on an out-of-range selectLayer
  return c;
}

/** Index in 0..L of the selected hidden state. */
function selectedIndex(c: ClipVitConfig): number {
  const n = c.numLayers + 1;
  const i = c.selectLayer < 0 ? n + c.selectLayer : c.selectLayer;
  if (!Number.isInteger(c.selectLayer) || i < 0 || i >= n) {
    throw new Error(`CLIP ViT config: selectLayer ${c.selectLayer} is out of range for ${c.numLayers} layers (hidden states 0..${c.numLayers})`);
  }
  return i;
}

export class ClipEmbeddings extends Module<ClipVitConfig> {
  readonly classEmbedding: tf.Variable; // [D]
  readonly patchEmbedding: Conv2d; // [D, C, p, p], no bias
  readonly positionEmbedding: tf.Variable; // [1 + G*G, D]

  constructor(c: ClipVitConfig, ctx: InitContext) {
    super(c);
    const grid = Math.floor(c.imageSize / c.patchSize);
    // HF initialises both embeddings with std = D^-0.5 (initializer_factor 1).
    const std = c.hiddenSize ** -0.5;
    this.classEmbedding = this.addWeight('class_embedding', [c.hiddenSize], { kind: 'normal', std }, ctx);
    this.patchEmbedding = this.addChild(
      'patch_embedding',
      new Conv2d(
        { inChannels: c.numChannels, outChannels: c.hiddenSize, kernelSize: c.patchSize, stride: c.patchSize, padding: 0, groups: 1, bias: false },
        ctx,
      ),
    );
    this.positionEmbedding = this.addWeight('position_embedding.weight', [grid * grid + 1, c.hiddenSize], { kind: 'normal', std }, ctx);
  }

  /** pixels [B,S,S,C] -> [B, 1+G*G, D]: CLS first, patches row-major, plus learned positions. */
  apply(pixels: tf.Tensor4D): tf.Tensor3D {
    return tf.tidy(() => {
      const b = pixels.shape[0];
      const d = this.config.hiddenSize;
      const patches = this.patchEmbedding.apply(pixels); // [B,G,G,D]
      const tokens = patches.reshape([b, -1, d]); // [B,G*G,D] row-major, as torch's flatten(2).T
      const cls = tf.broadcastTo(this.classEmbedding.reshape([1, 1, d]), [b, 1, d]);
      return tf.add(tf.concat([cls, tokens], 1), this.positionEmbedding) as tf.Tensor3D; // [B,1+G*G,D]
    });
  }
}

class ClipAttention extends Module<ClipLayerConfig> {
  readonly qProj: Linear;
  readonly kProj: Linear;
  readonly vProj: Linear;
  readonly outProj: Linear;

  constructor(c: ClipLayerConfig, ctx: InitContext) {
    super(c);
    const lin = { inFeatures: c.hiddenSize, outFeatures: c.hiddenSize, bias: true };
    this.qProj = this.addChild('q_proj', new Linear(lin, ctx));
    this.kProj = this.addChild('k_proj', new Linear(lin, ctx));
    this.vProj = this.addChild('v_proj', new Linear(lin, ctx));
    this.outProj = this.addChild('out_proj', new Linear(lin, ctx));
  }

  /** x [B,N,D] -> [B,N,D]; without a bias every token sees every token (the vision tower). */
  apply(x: tf.Tensor3D, opts: ClipAttentionOptions = {}): tf.Tensor3D {
    return tf.tidy(() => {
      const h = this.config.numHeads;
      const hd = this.config.hiddenSize / h;
      const q = splitHeads(this.qProj.apply(x), h); // [B,H,N,hd]
      const k = splitHeads(this.kProj.apply(x), h);
      const v = splitHeads(this.vProj.apply(x), h);
      const o = blockedAttention(q, k, v, opts.bias ?? null, hd ** -0.5, opts.maxScores); // [B,H,N,hd]
      return this.outProj.apply(mergeHeads(o)) as tf.Tensor3D; // [B,N,D]
    });
  }
}

class ClipMlp extends Module<ClipLayerConfig> {
  readonly fc1: Linear;
  readonly fc2: Linear;

  constructor(c: ClipLayerConfig, ctx: InitContext) {
    super(c);
    this.fc1 = this.addChild('fc1', new Linear({ inFeatures: c.hiddenSize, outFeatures: c.intermediateSize, bias: true }, ctx));
    this.fc2 = this.addChild('fc2', new Linear({ inFeatures: c.intermediateSize, outFeatures: c.hiddenSize, bias: true }, ctx));
  }

  apply(x: tf.Tensor3D): tf.Tensor3D {
    return tf.tidy(() => this.fc2.apply(quickGelu(this.fc1.apply(x))) as tf.Tensor3D);
  }
}

/** Pre-LN encoder layer: x += attn(ln1(x)); x += mlp(ln2(x)). */
export class ClipEncoderLayer extends Module<ClipLayerConfig> {
  readonly selfAttn: ClipAttention;
  readonly layerNorm1: LayerNorm;
  readonly mlp: ClipMlp;
  readonly layerNorm2: LayerNorm;

  constructor(c: ClipLayerConfig, ctx: InitContext) {
    super(c);
    const ln = { dim: c.hiddenSize, eps: c.layerNormEps };
    this.selfAttn = this.addChild('self_attn', new ClipAttention(c, ctx));
    this.layerNorm1 = this.addChild('layer_norm1', new LayerNorm(ln, ctx));
    this.mlp = this.addChild('mlp', new ClipMlp(c, ctx));
    this.layerNorm2 = this.addChild('layer_norm2', new LayerNorm(ln, ctx));
  }

  apply(x: tf.Tensor3D, opts: ClipAttentionOptions = {}): tf.Tensor3D {
    return tf.tidy(() => {
      const h = tf.add(x, this.selfAttn.apply(this.layerNorm1.apply(x) as tf.Tensor3D, opts)) as tf.Tensor3D;
      return tf.add(h, this.mlp.apply(this.layerNorm2.apply(h) as tf.Tensor3D)) as tf.Tensor3D;
    });
  }
}

export interface ClipVitOutput {
  /** The selected hidden state, CLS dropped when `dropCls`: [B, G*G, D] (or [B, 1+G*G, D]). */
  features: tf.Tensor3D;
  /** All L+1 hidden states [B, 1+G*G, D] (only with `outputHiddenStates`); [0] = pre_layrnorm(embeddings). */
  hiddenStates?: tf.Tensor3D[];
}

export interface ClipVitApplyOptions {
  /** Also return every hidden state; this runs all layers, including those after the selected one. */
  outputHiddenStates?: boolean;
}

export class ClipVit extends Module<ClipVitConfig> {
  readonly embeddings: ClipEmbeddings;
  readonly preLayrnorm: LayerNorm;
  readonly layers: ClipEncoderLayer[];
  /** Loaded for strict checkpoint compatibility; never used in the forward pass. */
  readonly postLayernorm: LayerNorm;
  /** Recompute each encoder layer in the backward pass instead of keeping its activations (train.activation_checkpointing). */
  activationCheckpointing = false;

  constructor(config: ClipVitConfig, ctx: InitContext) {
    super(validateClipVitConfig({ ...config }));
    const c = this.config;
    const ln = { dim: c.hiddenSize, eps: c.layerNormEps };
    this.embeddings = this.addChild('vision_model.embeddings', new ClipEmbeddings(c, ctx));
    this.preLayrnorm = this.addChild('vision_model.pre_layrnorm', new LayerNorm(ln, ctx));
    this.layers = [];
    for (let i = 0; i < c.numLayers; i++) {
      this.layers.push(this.addChild(`vision_model.encoder.layers.${i}`, new ClipEncoderLayer(c, ctx)));
    }
    this.postLayernorm = this.addChild('vision_model.post_layernorm', new LayerNorm(ln, ctx));
  }

  /** Index (0..L) of the hidden state `apply` returns as features. */
  get selectedHiddenState(): number {
    return selectedIndex(this.config);
  }

  /** pixels [B,S,S,C] (NHWC, normalised) -> selected features [B, G*G, D] (+ all hidden states on request). */
  apply(pixels: tf.Tensor4D, opts: ClipVitApplyOptions = {}): ClipVitOutput {
    const c = this.config;
    const [, hgt, wid, ch] = pixels.shape;
    if (pixels.rank !== 4 || hgt !== c.imageSize || wid !== c.imageSize || ch !== c.numChannels) {
      throw new Error(
        `ClipVit.apply: expected pixels [B,${c.imageSize},${c.imageSize},${c.numChannels}] (NHWC), got [${pixels.shape}]`,
      );
    }
    const sel = this.selectedHiddenState;
    const last = opts.outputHiddenStates ? c.numLayers : sel; // layers after `sel` only feed hiddenStates
    return tf.tidy(() => {
      let h = this.preLayrnorm.apply(this.embeddings.apply(pixels)) as tf.Tensor3D; // [B,1+G*G,D]
      const states: tf.Tensor3D[] = [h];
      for (let i = 0; i < last; i++) {
        const layer = this.layers[i]!;
        // Activation checkpointing (when the encoder trains): the layer keeps only its input for the backward pass.
        h = this.activationCheckpointing ? (checkpointed((x: tf.Tensor3D) => layer.apply(x), h, [...layer.namedWeights()].map(([, v]) => v)) as tf.Tensor3D) : layer.apply(h);
        states.push(h);
      }
      const chosen = states[sel]!;
      const n = chosen.shape[1];
      // Dropping CLS is a slice of a token-major tensor: one contiguous copy per batch row.
      const features = c.dropCls ? (tf.slice(chosen, [0, 1, 0], [-1, n - 1, -1]) as tf.Tensor3D) : chosen;
      return opts.outputHiddenStates ? { features, hiddenStates: states } : { features };
    });
  }
}
