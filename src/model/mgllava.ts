/**
 * MG-LLaVA: the composition of the parts, with the stage policies.
 *
 *   low-res image ─► CLIP ViT (frozen) ─► selected hidden state, CLS dropped ─┐
 *   aux image ────► ConvNeXt (frozen) ─► last stage map ──────────────────────┴► Conv-Gate fusion ─► projector ─► image tokens
 *                                    └► 4-stage concat map ─► RoI means over boxes ─► bbox projector ─► object tokens
 *   text ids ─► embeddings; splice [text | image tokens | object tokens | text] ─► LLM ─► logits ─► CE
 *
 * The forward pass is split at the frozen/trainable boundary: `encodeFrozen` computes everything that
 * depends only on frozen weights (ViT features, last map, RoI means of the concat map), outside any
 * gradient tape; `loss` runs the trainable rest. With frozen encoders the first half is a pure function
 * of the image and its boxes, so it can be cached per image.
 *
 * Weight names are the reference checkpoint's: `visual_encoder.vision_model.*`, `visual_encoder_aux.*`,
 * `fuse_module.*`, `projector.*`, `bbox_projector.*` (+ `multi_level_linear.*`), `llm.*`.
 */
import * as tf from '@tensorflow/tfjs';
import { Module, type InitContext } from '../nn/module.js';
import { ClipVit, type ClipVitConfig } from './vision/clip-vit.js';
import { ConvNext, type ConvNextConfig } from './vision/convnext.js';
import { ConvGateFusion, type FusionVariant } from './fusion.js';
import { ObjectFeatures } from './objects.js';
import { Projector } from './projector.js';
import { LlamaForCausalLM } from './llm/llama.js';
import type { LlamaConfig } from './llm/config.js';
import type { LoraConfig } from './llm/lora.js';
import { spliceMultimodal, type SpliceResult } from './splice.js';
import { causalLmLossOnRows, shiftedTargets } from './loss.js';
import type { IntMatrixLike } from './llm/int-matrix.js';
import type { Boxes } from './roi-align.js';

export interface MGLLaVAConfig {
  /** Low-resolution encoder (`visual_encoder.*`). */
  vision: ClipVitConfig;
  /** High-resolution encoder (`visual_encoder_aux.*`); null = low-res only (no fusion, no object tokens). */
  visionAux: ConvNextConfig | null;
  /** Conv-Gate fusion of the last aux map into the ViT tokens (`fuse_module.*`); null = none. Needs visionAux. */
  fusion: { variant: FusionVariant; zeroInit: boolean } | null;
  /** Object tokens from boxes (`bbox_projector.*`); null = none. Needs visionAux. */
  objects: {
    /** roi_align bins per axis (56). */
    outputSize: number;
    /** -1: adaptive, as MG-LLaVA. */
    samplingRatio: number;
    projectorDepth: number;
    /** `use_multi_level`: per-stage Linears to this width before the bbox projector; null = off. */
    multiLevelDim: number | null;
  } | null;
  /** Image-token projector depth (`projector.model.*`, 2). */
  projectorDepth: number;
  llm: LlamaConfig;
  /** LoRA adapters on the LLM's decoder linears (`llm.model.layers.N.*.lora_{A,B}.weight`); absent/null = none. */
  lora?: LoraConfig | null;
}

/**
 * The image sides a model takes: the aux (ConvNeXt) image and the low-res (ViT) image. A low-res-only model
 * has no aux encoder; its aux image (which still carries the box coordinates) is made at the low-res size.
 */
export function imageSizesOf(c: MGLLaVAConfig): { auxSize: number; lowresSize: number } {
  return { auxSize: c.visionAux?.imageSize ?? c.vision.imageSize, lowresSize: c.vision.imageSize };
}

/** Which weights learn. `pretrain`: fusion + projectors. `finetune`: + the whole LLM, or only its LoRA adapters. */
export type Stage = 'pretrain' | 'finetune';

/** Frozen-path outputs for a batch of B images (pure functions of image + boxes when encoders are frozen). */
export interface FrozenFeatures {
  /** [B, N, D] selected ViT hidden state. */
  vit: tf.Tensor3D;
  /** [B, h, w, C] last ConvNeXt stage (fusion input), or null without fusion. */
  lastMap: tf.Tensor4D | null;
  /** [sum K_b, Cc] RoI means of the concat map, or null without object tokens. */
  roiMeans: tf.Tensor2D | null;
  /** K_b per image (empty without object tokens). */
  boxCounts: number[];
}

export interface TextBatch {
  /** [B, L] ids with IMAGE_TOKEN_INDEX (-200) at the image position. */
  inputIds: IntMatrixLike;
  /** [B, L] labels, IGNORE_INDEX (-100) where unsupervised. */
  labels: IntMatrixLike;
  /** [B, L] 1 real / 0 padding. */
  attentionMask: IntMatrixLike;
}

export interface MGLLaVALoss {
  /** Mean CE over the supervised tokens of the batch. */
  loss: tf.Scalar;
  /** Number of supervised tokens (gradient accumulation weight). */
  supervisedTokens: number;
  /** Positions the LLM ran on, B x T (for tokens/s). */
  positions: number;
}

export function disposeFrozen(f: FrozenFeatures): void {
  f.vit.dispose();
  f.lastMap?.dispose();
  f.roiMeans?.dispose();
}

/** Init of the whole model; `pretrained` names the parts a pretrained directory will overwrite. */
export interface MGLLaVAInitContext extends InitContext {
  pretrained?: { vision?: boolean; visionAux?: boolean; llm?: boolean };
}

/** How the parts fit together (each part validates itself): throws an Error naming the mismatch. */
export function validateMgllavaConfig(c: MGLLaVAConfig): void {
  if ((c.fusion || c.objects) && !c.visionAux) {
    throw new Error('MG-LLaVA config: fusion and object tokens need the high-resolution encoder (visionAux)');
  }
  if (c.fusion && c.visionAux) {
    // The fusion consumes the last aux map position by position: it must be the ViT's patch grid.
    const grid = c.vision.imageSize / c.vision.patchSize;
    const last = c.visionAux.imageSize / 2 ** (c.visionAux.dims.length + 1);
    if (last !== grid) {
      const px = (v: number) => (Number.isInteger(v) ? String(v) : v.toFixed(2));
      throw new Error(
        `MG-LLaVA config: the aux image ${c.visionAux.imageSize} px gives a ${px(last)}x${px(last)} last ConvNeXt map, ` +
          `but the fusion needs the ${px(grid)}x${px(grid)} ViT grid (${c.vision.imageSize} px / patch ${c.vision.patchSize}); ` +
          `full size uses 768 px aux for 336 px / 14`,
      );
    }
  }
}

export class MGLLaVA extends Module<MGLLaVAConfig> {
  readonly vision: ClipVit;
  readonly visionAux: ConvNext | null;
  readonly fusion: ConvGateFusion | null;
  readonly projector: Projector;
  readonly objects: ObjectFeatures | null;
  readonly llm: LlamaForCausalLM;

  constructor(config: MGLLaVAConfig, ctx: MGLLaVAInitContext) {
    super(config);
    const c = config;
    validateMgllavaConfig(c);
    // Parts about to be overwritten by pretrained weights draw no random numbers (minutes at 7B).
    const part = (skip: boolean | undefined): InitContext => (skip ? { ...ctx, skipInit: true } : ctx);
    this.vision = this.addChild('visual_encoder', new ClipVit(c.vision, part(ctx.pretrained?.vision)));
    this.visionAux = c.visionAux ? this.addChild('visual_encoder_aux', new ConvNext(c.visionAux, part(ctx.pretrained?.visionAux))) : null;
    const d = c.vision.hiddenSize;
    const aux = c.visionAux;
    this.fusion =
      c.fusion && aux
        ? this.addChild(
            'fuse_module',
            new ConvGateFusion({ lowDim: d, highDim: aux.dims[aux.dims.length - 1]!, variant: c.fusion.variant, zeroInit: c.fusion.zeroInit }, ctx),
          )
        : null;
    this.projector = this.addChild(
      'projector',
      new Projector({ inDim: this.fusion ? this.fusion.outDim : d, outDim: c.llm.hiddenSize, depth: c.projectorDepth }, ctx),
    );
    if (c.objects && aux) {
      this.objects = new ObjectFeatures(
        {
          inChannels: aux.dims.reduce((a, b) => a + b, 0),
          hidden: c.llm.hiddenSize,
          imageSizeAux: aux.imageSize,
          outputSize: c.objects.outputSize,
          samplingRatio: c.objects.samplingRatio,
          projectorDepth: c.objects.projectorDepth,
          multiLevel: c.objects.multiLevelDim ? { levelChannels: [...aux.dims], commonDim: c.objects.multiLevelDim } : null,
        },
        ctx,
      );
      this.adoptChildren(this.objects); // bbox_projector.*, multi_level_linear.* at the top level
    } else {
      this.objects = null;
    }
    this.llm = this.addChild('llm', new LlamaForCausalLM(c.llm, part(ctx.pretrained?.llm)));
    // Adapters draw after every base weight (the base init is the same with or without LoRA), and are drawn
    // even when the LLM comes from a pretrained directory.
    if (c.lora) this.llm.attachLora(c.lora, ctx);
    this.vision.setTrainable(false);
    this.visionAux?.setTrainable(false);
  }

  /**
   * The weights a stage trains, by checkpoint name (encoders never, unless `unfreezeEncoders`). Also marks
   * exactly these `trainable` (tf.Variable.trainable) and the rest frozen: activation checkpointing recomputes a
   * block with gradients for its trainable weights only (a frozen LLM's or LoRA's base weights get none).
   */
  trainableWeights(stage: Stage, opts: { unfreezeEncoders?: boolean } = {}): Map<string, tf.Variable> {
    const parts: [string, Module | null][] = [
      ['fuse_module.', this.fusion],
      ['projector.', this.projector],
    ];
    const out = new Map<string, tf.Variable>();
    for (const [prefix, m] of parts) if (m) for (const [n, v] of m.namedWeights(prefix)) out.set(n, v);
    if (this.objects) for (const [n, v] of this.objects.namedWeights()) out.set(n, v);
    if (stage === 'finetune') {
      const lora = this.config.lora != null;
      for (const [n, v] of this.llm.namedWeights('llm.')) if (!lora || this.llm.isAdapterWeight(n, 'llm.')) out.set(n, v);
    }
    if (opts.unfreezeEncoders) {
      for (const [n, v] of this.vision.namedWeights('visual_encoder.')) out.set(n, v);
      if (this.visionAux) for (const [n, v] of this.visionAux.namedWeights('visual_encoder_aux.')) out.set(n, v);
    }
    for (const [n, v] of this.namedWeights()) v.trainable = out.has(n);
    return out;
  }

  /**
   * The frozen path. pixels [B,S,S,3] and pixelsAux [B,A,A,3] are NHWC normalised images (pixelsAux may be
   * null for a low-res-only model); boxes[b] are image b's boxes in aux-image pixels (dummy rule applied).
   */
  encodeFrozen(pixels: tf.Tensor4D, pixelsAux: tf.Tensor4D | null, boxes: Boxes[] | null): FrozenFeatures {
    if (this.visionAux && !pixelsAux) throw new Error('MG-LLaVA: this model has a high-resolution encoder; pixelsAux is required');
    if (this.objects && !boxes) throw new Error('MG-LLaVA: this model makes object tokens; boxes are required');
    const withLast = this.fusion !== null;
    const withObjects = this.objects !== null;
    let boxCounts: number[] = [];
    // tidy returns a plain list (tracked by any enclosing scope); which entries exist follows the config.
    const [vit, ...rest] = tf.tidy(() => {
      const list: tf.Tensor[] = [this.vision.apply(pixels).features]; // [B,N,D]
      if (!this.visionAux || !pixelsAux) return list;
      // The concat map is never built: the RoI means pull their weights back to each stage's grid.
      const aux = this.visionAux.apply(pixelsAux, { concat: false });
      if (withLast) list.push(aux.last); // [B,h,w,C]
      if (withObjects) {
        const { means, counts } = this.objects!.roiMeansFromStages(aux.stages, boxes!); // [sum K, Cc]
        list.push(means);
        boxCounts = counts;
      }
      return list;
    });
    return {
      vit: vit as tf.Tensor3D,
      lastMap: withLast ? (rest[0] as tf.Tensor4D) : null,
      roiMeans: withObjects ? (rest[withLast ? 1 : 0] as tf.Tensor2D) : null,
      boxCounts,
    };
  }

  /** Trainable visual path: image tokens [B,N,H] and per-image object tokens [K_b,H] (null without objects). */
  visualTokens(f: FrozenFeatures): { image: tf.Tensor3D; objects: tf.Tensor2D[] | null } {
    const [image, ...objects] = tf.tidy(() => {
      const fused = this.fusion ? this.fusion.apply(f.vit, f.lastMap!) : f.vit; // [B,N,D']
      const img = this.projector.apply(fused); // [B,N,H]
      if (!this.objects || !f.roiMeans) return [img];
      const tokens = this.objects.project(f.roiMeans); // [sum K,H]
      return [img, ...(f.boxCounts.length === 1 ? [tokens] : tf.split(tokens, f.boxCounts, 0))];
    });
    return { image: image as tf.Tensor3D, objects: objects.length ? (objects as tf.Tensor2D[]) : null };
  }

  /** Splice visual tokens into the text embeddings (REFERENCE (g)). */
  splice(text: Omit<TextBatch, 'labels'> & { labels?: IntMatrixLike }, visual: { image: tf.Tensor3D; objects: tf.Tensor2D[] | null }): SpliceResult {
    return spliceMultimodal({
      inputIds: text.inputIds,
      labels: text.labels ?? null,
      attentionMask: text.attentionMask,
      embedTokens: (ids) => this.llm.embed(ids),
      imageEmbeds: visual.image,
      objectEmbeds: visual.objects,
      vocabSize: this.config.llm.vocabSize,
    });
  }

  /**
   * Recompute blocks in the backward pass instead of keeping their activations (`train.activation_checkpointing`):
   * every LLM decoder layer, and the encoders' blocks (they only see a tape when they train).
   */
  setActivationCheckpointing(on: boolean): void {
    this.llm.activationCheckpointing = on;
    this.vision.activationCheckpointing = on;
    if (this.visionAux) this.visionAux.activationCheckpointing = on;
  }

  /**
   * Trainable forward + loss from frozen features: call inside `tf.variableGrads`. `dropoutSeed`: this pass's
   * LoRA dropout seed (training; each micro-batch its own), null/absent = no dropout.
   */
  loss(f: FrozenFeatures, text: TextBatch, opts: { dropoutSeed?: number | null } = {}): MGLLaVALoss {
    let supervisedTokens = 0;
    let positions = 0;
    const loss = tf.tidy(() => {
      const visual = this.visualTokens(f);
      const s = this.splice(text, visual);
      const plan = shiftedTargets(s.labels, this.config.llm.vocabSize);
      supervisedTokens = plan.count;
      positions = s.labels.shape[0] * s.labels.shape[1];
      const { logits } = this.llm.forward({
        inputsEmbeds: s.inputsEmbeds,
        attentionMask: s.attentionMask,
        positionIds: s.positionIds,
        logitRows: plan.rows,
        dropoutSeed: opts.dropoutSeed ?? null,
      }); // [M,V]
      return causalLmLossOnRows(logits, plan).loss;
    });
    return { loss, supervisedTokens, positions };
  }
}
