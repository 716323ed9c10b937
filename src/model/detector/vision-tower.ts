/**
 * OWLv2 vision tower (HF `Owlv2VisionTransformer`, keys `owlv2.vision_model.*`): CLIP's patch embeddings and
 * encoder layers, with OWLv2's names and layer-norm placement:
 *
 *   pixels [B,S,S,3] -> embeddings (CLS + row-major patches + positions) -> pre_layernorm (spelled so, unlike
 *   CLIPVisionModel's pre_layrnorm) -> every encoder layer -> last hidden state WITHOUT post_layernorm
 *
 * `post_layernorm` is applied by the detector's image-feature path to all tokens (see imageEmbedder in
 * owlv2.ts) and to CLS alone for the contrastive `pooled` output.
 */
import * as tf from '@tensorflow/tfjs';
import { Module, type InitContext } from '../../nn/module.js';
import { LayerNorm } from '../../nn/norm.js';
import { ClipEmbeddings, ClipEncoderLayer, validateClipVitConfig } from '../vision/clip-vit.js';
import type { Owlv2VisionConfig } from './config.js';

export interface VisionTowerOutput {
  /** [B, 1+G*G, Dv], no post_layernorm. */
  lastHidden: tf.Tensor3D;
  /** [0] = pre_layernorm(embeddings), [i] = after layer i; only with `outputHiddenStates`. */
  hiddenStates?: tf.Tensor3D[];
}

export interface VisionTowerOptions {
  outputHiddenStates?: boolean;
  /** Largest attention score block (see blockedAttention): 5185 tokens x 16 heads do not fit at once. */
  maxScores?: number;
}

export class Owlv2VisionTower extends Module<Owlv2VisionConfig> {
  readonly embeddings: ClipEmbeddings;
  readonly preLayernorm: LayerNorm;
  readonly layers: ClipEncoderLayer[];
  readonly postLayernorm: LayerNorm;

  constructor(c: Owlv2VisionConfig, ctx: InitContext) {
    super(c);
    // The embeddings are CLIP's: the same weights, the same token order.
    const clip = validateClipVitConfig({ ...c, selectLayer: -1, dropCls: false });
    const ln = { dim: c.hiddenSize, eps: c.layerNormEps };
    this.embeddings = this.addChild('embeddings', new ClipEmbeddings(clip, ctx));
    this.preLayernorm = this.addChild('pre_layernorm', new LayerNorm(ln, ctx));
    this.layers = [];
    for (let i = 0; i < c.numLayers; i++) this.layers.push(this.addChild(`encoder.layers.${i}`, new ClipEncoderLayer(c, ctx)));
    this.postLayernorm = this.addChild('post_layernorm', new LayerNorm(ln, ctx));
  }

  /** pixels [B,S,S,C] (NHWC, normalised) -> last hidden state [B, 1+G*G, Dv]. */
  apply(pixels: tf.Tensor4D, opts: VisionTowerOptions = {}): VisionTowerOutput {
    const c = this.config;
    const [, hgt, wid, ch] = pixels.shape;
    if (pixels.rank !== 4 || hgt !== c.imageSize || wid !== c.imageSize || ch !== c.numChannels) {
      throw new Error(`Owlv2VisionTower: expected pixels [B,${c.imageSize},${c.imageSize},${c.numChannels}] (NHWC), got [${pixels.shape}]`);
    }
    // No outer tidy: each layer's input is freed as soon as the next state exists (24 x 21 MB at large size).
    let h = tf.tidy(() => this.preLayernorm.apply(this.embeddings.apply(pixels)) as tf.Tensor3D); // [B,1+N,Dv]
    const states: tf.Tensor3D[] = [h];
    try {
      for (const layer of this.layers) {
        const next = layer.apply(h, { maxScores: opts.maxScores });
        if (opts.outputHiddenStates) states.push(next);
        else h.dispose();
        h = next;
      }
    } catch (e) {
      tf.dispose(opts.outputHiddenStates ? states : h);
      throw e;
    }
    return opts.outputHiddenStates ? { lastHidden: h, hiddenStates: states } : { lastHidden: h };
  }

  /** The contrastive head's pooled output: post_layernorm(CLS) [B, Dv]. */
  pooled(lastHidden: tf.Tensor3D): tf.Tensor2D {
    return tf.tidy(() => this.postLayernorm.apply(tf.slice(lastHidden, [0, 0, 0], [-1, 1, -1]).squeeze([1])) as tf.Tensor2D);
  }
}
