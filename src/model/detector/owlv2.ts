/**
 * OWLv2 open-vocabulary detector (HF `Owlv2ForObjectDetection`): the root of the HF checkpoint, so weights
 * load by their Hugging Face names:
 *
 *   owlv2.text_model.*, owlv2.text_projection.weight       text queries -> L2-normalised query embeddings
 *   owlv2.vision_model.*, layer_norm.*                     image -> feature map [B,Hp,Wp,Dv]
 *   class_head.*, box_head.*, objectness_head.*            per-patch logits, boxes, objectness
 *   owlv2.visual_projection.weight, owlv2.logit_scale      kept for strict loading; they serve only the
 *                                                          contrastive image-text head, never detection
 *
 * Data flow for one image and Q queries (large: N = 72*72 = 5184 patches, Dv 1024, Dt = P = 768):
 *   queries [Q,16] -> text tower -> pooled [Q,Dt] -> text_projection -> /||.|| -> q [1,Q,P]
 *   pixels [1,1008,1008,3] -> vision tower [1,1+N,Dv] -> post_layernorm (all tokens) -> patches x CLS
 *     -> layer_norm -> f [1,N,Dv] -> class head (logits [1,N,Q]), box head (pred_boxes [1,N,4])
 */
import * as tf from '@tensorflow/tfjs';
import { Module, type InitContext } from '../../nn/module.js';
import { Linear } from '../../nn/linear.js';
import { LayerNorm } from '../../nn/norm.js';
import { gridOf, validateOwlv2Config, type Owlv2Config } from './config.js';
import { Owlv2TextTower, type QueryTokens, type TextTowerOutput } from './text-tower.js';
import { Owlv2VisionTower, type VisionTowerOutput } from './vision-tower.js';
import { Owlv2ClassHead, Owlv2MlpHead, boxBias, predictBoxes, type ClassHeadOutput } from './heads.js';

/**
 * Default largest attention score block: 32 Mi scores (128 MiB). At large size one head of 5185^2 scores
 * (108 MB) fits, 16 do not; the text tower and small models run unblocked.
 */
export const DEFAULT_MAX_ATTENTION_SCORES = 1 << 25;

/** text_projection(pooled) and its L2 normalisation without epsilon (Owlv2Model's text_embeds). */
export function projectQueries(pooled: tf.Tensor2D, projection: Linear): { unnormalized: tf.Tensor2D; embeds: tf.Tensor2D } {
  return tf.tidy(() => {
    const unnormalized = projection.apply(pooled) as tf.Tensor2D; // [n,P]
    return { unnormalized, embeds: tf.div(unnormalized, tf.norm(unnormalized, 'euclidean', -1, true)) as tf.Tensor2D };
  });
}

export interface ImageFeatures {
  /** layer_norm(patches x CLS) [B,N,Dv], N = Hp*Wp row-major (= feature map [B,Hp,Wp,Dv] reshaped). */
  feats: tf.Tensor3D;
  /** post_layernorm of all 1+N tokens [B,1+N,Dv] (only with `outputParts`). */
  postLayernormTokens?: tf.Tensor3D;
  /** patches x CLS before layer_norm [B,N,Dv] (only with `outputParts`). */
  merged?: tf.Tensor3D;
}

/**
 * The detector's image-feature path on a vision tower output: post_layernorm on ALL tokens, every patch token
 * times the CLS token, then the detector's own layer_norm.
 */
export function imageFeaturesFrom(tower: Owlv2VisionTower, layerNorm: LayerNorm, lastHidden: tf.Tensor3D, outputParts = false): ImageFeatures {
  return tf.tidy(() => {
    const [b, t, d] = lastHidden.shape;
    const tokens = tower.postLayernorm.apply(lastHidden) as tf.Tensor3D; // [B,1+N,Dv]
    const cls = tf.slice(tokens, [0, 0, 0], [b, 1, d]);
    const merged = tf.mul(tf.slice(tokens, [0, 1, 0], [b, t - 1, d]), cls) as tf.Tensor3D; // [B,N,Dv]
    const feats = layerNorm.apply(merged) as tf.Tensor3D;
    return outputParts ? { feats, postLayernormTokens: tokens, merged } : { feats };
  });
}

/** The CLIP-like backbone under `owlv2.*`. */
export class Owlv2Backbone extends Module<Owlv2Config> {
  readonly textModel: Owlv2TextTower;
  readonly visionModel: Owlv2VisionTower;
  readonly visualProjection: Linear;
  readonly textProjection: Linear;
  readonly logitScale: tf.Variable; // [] (0-d), unused by detection

  constructor(c: Owlv2Config, ctx: InitContext) {
    super(c);
    this.textModel = this.addChild('text_model', new Owlv2TextTower(c.text, ctx));
    this.visionModel = this.addChild('vision_model', new Owlv2VisionTower(c.vision, ctx));
    this.visualProjection = this.addChild('visual_projection', new Linear({ inFeatures: c.vision.hiddenSize, outFeatures: c.projectionDim, bias: false }, ctx));
    this.textProjection = this.addChild('text_projection', new Linear({ inFeatures: c.text.hiddenSize, outFeatures: c.projectionDim, bias: false }, ctx));
    this.logitScale = this.addWeight('logit_scale', [], { kind: 'constant', value: 2.6592 }, ctx, false);
  }
}

export interface QueryEmbeddings {
  /** L2-normalised text embeddings [n,P] (the detector's query embeddings). */
  embeds: tf.Tensor2D;
  unnormalized: tf.Tensor2D;
  text: TextTowerOutput;
}

export interface DetectorOutput {
  logits: tf.Tensor3D; // [B,N,Q]
  predBoxes: tf.Tensor3D; // [B,N,4]
  objectnessLogits: tf.Tensor2D; // [B,N]
  textEmbeds: tf.Tensor3D; // [B,Q,P]
  imageEmbeds: tf.Tensor4D; // [B,Hp,Wp,Dv]
  classEmbeds: tf.Tensor3D; // [B,N,P]
  /** [B*Q]: 1 where the query's first token id is > 0. */
  queryMask: Int32Array;
}

export class Owlv2Detector extends Module<Owlv2Config> {
  readonly owlv2: Owlv2Backbone;
  readonly classHead: Owlv2ClassHead;
  readonly boxHead: Owlv2MlpHead;
  readonly objectnessHead: Owlv2MlpHead;
  readonly layerNorm: LayerNorm;
  /** Largest attention score block materialised at once (lower it when memory is short). */
  maxAttentionScores = DEFAULT_MAX_ATTENTION_SCORES;
  private bias: tf.Tensor2D | null = null;

  constructor(config: Owlv2Config, ctx: InitContext) {
    super(validateOwlv2Config(structuredClone(config)));
    const c = this.config;
    const dv = c.vision.hiddenSize;
    this.owlv2 = this.addChild('owlv2', new Owlv2Backbone(c, ctx));
    this.classHead = this.addChild('class_head', new Owlv2ClassHead({ visionHidden: dv, textHidden: c.text.hiddenSize }, ctx));
    this.boxHead = this.addChild('box_head', new Owlv2MlpHead({ width: dv, out: 4 }, ctx));
    this.objectnessHead = this.addChild('objectness_head', new Owlv2MlpHead({ width: dv, out: 1 }, ctx));
    this.layerNorm = this.addChild('layer_norm', new LayerNorm({ dim: dv, eps: c.vision.layerNormEps }, ctx));
  }

  /** Patches per side. */
  get grid(): number {
    return gridOf(this.config.vision);
  }

  /** Tokenised queries [n,L] -> L2-normalised query embeddings [n,P]. */
  queryEmbeds(tokens: QueryTokens, outputHiddenStates = false): QueryEmbeddings {
    const text = this.owlv2.textModel.apply(tokens, { outputHiddenStates, maxScores: this.maxAttentionScores });
    return { ...projectQueries(text.pooled, this.owlv2.textProjection), text };
  }

  /** pixels [B,S,S,3] (NHWC, normalised) -> image features [B,N,Dv]. */
  /** With `outputParts` also the tower's hidden states and the intermediate tokens. */
  imageFeatures(pixels: tf.Tensor4D, outputParts = false): ImageFeatures & { vision?: VisionTowerOutput } {
    const vision = this.owlv2.visionModel.apply(pixels, { outputHiddenStates: outputParts, maxScores: this.maxAttentionScores });
    if (outputParts) return { ...imageFeaturesFrom(this.owlv2.visionModel, this.layerNorm, vision.lastHidden, true), vision };
    try {
      return imageFeaturesFrom(this.owlv2.visionModel, this.layerNorm, vision.lastHidden);
    } finally {
      vision.lastHidden.dispose();
    }
  }

  /** feats [B,N,Dv], queries [B,Q,P], queryMask [B*Q] or null -> class head outputs. */
  classPredictor(feats: tf.Tensor3D, queries: tf.Tensor3D, queryMask: ArrayLike<number> | null): ClassHeadOutput {
    return this.classHead.apply(feats, queries, queryMask);
  }

  /** feats [B,N,Dv] -> pred_boxes [B,N,4] = sigmoid(box_head(f) + box_bias), (cx, cy, w, h) in [0,1]. */
  boxPredictor(feats: tf.Tensor3D): tf.Tensor3D {
    const n = feats.shape[1];
    const g = this.grid;
    if (n !== g * g) throw new Error(`Owlv2Detector.boxPredictor: ${n} patches, the ${g}x${g} grid has ${g * g}`);
    this.bias ??= tf.keep(tf.tensor2d(boxBias(g, g), [g * g, 4]));
    return tf.tidy(() => predictBoxes(this.boxHead, feats, this.bias!).predBoxes);
  }

  /** feats [B,N,Dv] -> objectness logits [B,N] (no sigmoid). */
  objectness(feats: tf.Tensor3D): tf.Tensor2D {
    return tf.tidy(() => this.objectnessHead.apply(feats).out.squeeze([2]) as tf.Tensor2D);
  }

  /**
   * Owlv2ForObjectDetection.forward: queries [B*Q, L] (image-major), pixels [B,S,S,3]. The query mask is
   * "first token id > 0": only a query starting with padding is masked.
   */
  forward(tokens: QueryTokens, pixels: tf.Tensor4D): DetectorOutput {
    const b = pixels.shape[0];
    const [n, len] = tokens.ids.shape;
    if (n % b !== 0) throw new Error(`Owlv2Detector.forward: ${n} query rows for ${b} images (rows must be image-major, Q per image)`);
    const q = n / b;
    const queryMask = Int32Array.from({ length: n }, (_, r) => (tokens.ids.data[r * len]! > 0 ? 1 : 0));
    return tf.tidy(() => {
      const { embeds } = this.queryEmbeds(tokens); // the rest of its output is freed by this tidy
      const textEmbeds = embeds.reshape([b, q, -1]) as tf.Tensor3D;
      const { feats } = this.imageFeatures(pixels);
      const g = this.grid;
      const cls = this.classPredictor(feats, textEmbeds, queryMask);
      return {
        logits: cls.logits,
        predBoxes: this.boxPredictor(feats),
        objectnessLogits: this.objectness(feats),
        textEmbeds,
        imageEmbeds: feats.reshape([b, g, g, -1]) as tf.Tensor4D,
        classEmbeds: cls.classEmbeds,
        queryMask,
      };
    });
  }

  override dispose(): void {
    this.bias?.dispose();
    this.bias = null;
    super.dispose();
  }
}
