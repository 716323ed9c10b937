/**
 * The warm-up model: MG-LLaVA's two encoders, every weight trainable, plus throw-away linear heads.
 *
 *   low-res image -> ViT (selected layer, CLS dropped) [B,N,D] -> presence head on every token     [B,N,P]
 *   aux image -> ConvNeXt -> last map [B,h,w,C4]                -> presence head on every cell      [B,h*w,P]
 *                         -> concat map [B,H,W,Cc] -> RoI mean per box [sum K,Cc] -> one head per attribute
 *
 * The RoI mean is the model's own (roi-align.ts: the bin mean u^T F v of roi_align with the object
 * features' output size and spatial scale), so the features the heads shape are the ones the bbox
 * projector reads later. Presence is multi-label ("colours present", "shapes present") with the image's
 * targets at every cell and token: both image paths get the same supervision.
 *
 * Names: `visual_encoder.*` and `visual_encoder_aux.*` exactly as in MGLLaVA (built in the same order from
 * the same Rng, so the initial encoders equal those of `new MGLLaVA(config, {rng: new Rng(seed)})`), heads
 * under `warmup_heads.*`.
 *
 * Losses are sums divided by step-wide counts (`WarmupNorm`), so micro-batches accumulate to exactly the
 * loss of the big batch.
 */
import * as tf from '@tensorflow/tfjs';
import { Module, type InitContext } from '../nn/module.js';
import { Linear } from '../nn/linear.js';
import { ClipVit } from '../model/vision/clip-vit.js';
import { ConvNext } from '../model/vision/convnext.js';
import { batchRoiMeans, DEFAULT_OBJECT_FEATURES } from '../model/objects.js';

import type { MGLLaVAConfig } from '../model/mgllava.js';
import { isEncoderWeight } from '../model/factory.js';
import { presenceTargets, type HeadSpec, type WarmupBatch } from './warmup-data.js';

export const HEADS_PREFIX = 'warmup_heads.';

interface HeadsConfig {
  spec: HeadSpec;
  roiChannels: number;
  lastChannels: number;
  vitChannels: number;
}

class WarmupHeads extends Module<HeadsConfig> {
  readonly box: Linear[];
  readonly presenceAux: Linear | null;
  readonly presenceVit: Linear | null;

  constructor(c: HeadsConfig, ctx: InitContext) {
    super(c);
    this.box = c.spec.box.map((h) => this.addChild(`box.${h.attr}`, new Linear({ inFeatures: c.roiChannels, outFeatures: h.classes.length, bias: true }, ctx)));
    const P = c.spec.presenceSize;
    this.presenceAux = P ? this.addChild('presence_aux', new Linear({ inFeatures: c.lastChannels, outFeatures: P, bias: true }, ctx)) : null;
    this.presenceVit = P ? this.addChild('presence_vit', new Linear({ inFeatures: c.vitChannels, outFeatures: P, bias: true }, ctx)) : null;
  }
}

/** Step-wide element counts the summed losses are divided by. */
export interface WarmupNorm {
  boxes: number;
  images: number;
}

export interface HeadOutputs {
  /** Per box head [sum K, classes]. */
  box: tf.Tensor2D[];
  /** [B, h*w, P] and [B, N, P] presence logits (null without presence heads). */
  presenceAux: tf.Tensor3D | null;
  presenceVit: tf.Tensor3D | null;
}

export class WarmupModel extends Module<MGLLaVAConfig> {
  readonly vision: ClipVit;
  readonly visionAux: ConvNext;
  readonly heads: WarmupHeads;
  readonly spec: HeadSpec;
  /** roi_align bins and sampling of the model's object features (objects.output_size / sampling_ratio). */
  private readonly roi: { outputSize: number; samplingRatio: number };

  constructor(config: MGLLaVAConfig, spec: HeadSpec, ctx: InitContext) {
    super(config);
    const aux = config.visionAux;
    if (!aux) throw new Error('warm-up model: needs the high-resolution encoder (model.vision_aux)');
    this.spec = spec;
    this.vision = this.addChild('visual_encoder', new ClipVit(config.vision, ctx));
    this.visionAux = this.addChild('visual_encoder_aux', new ConvNext(aux, ctx));
    this.roi = {
      outputSize: config.objects?.outputSize ?? DEFAULT_OBJECT_FEATURES.outputSize,
      samplingRatio: config.objects?.samplingRatio ?? DEFAULT_OBJECT_FEATURES.samplingRatio,
    };
    const roiChannels = aux.dims.reduce((a, b) => a + b, 0);
    this.heads = this.addChild('warmup_heads', new WarmupHeads({ spec, roiChannels, lastChannels: aux.dims[aux.dims.length - 1]!, vitChannels: config.vision.hiddenSize }, ctx));
  }

  /** `visual_encoder.*` + `visual_encoder_aux.*`: what a warm-up checkpoint's model.safetensors holds. */
  encoderWeights(): Map<string, tf.Variable> {
    return new Map([...this.namedWeights()].filter(([n]) => isEncoderWeight(n)));
  }

  headWeights(): Map<string, tf.Variable> {
    return this.heads.weightMap(HEADS_PREFIX);
  }

  /**
   * What the optimizer updates: every encoder weight the losses reach, and the heads. Not reached: the ViT
   * layers after the selected hidden state (never computed) and post_layernorm (never applied); with the
   * embedding output selected and CLS dropped, the class embedding too; without presence heads, the ViT.
   */
  trainableWeights(): Map<string, tf.Variable> {
    const sel = this.vision.selectedHiddenState;
    const unused = (n: string): boolean => {
      const m = /^visual_encoder\.vision_model\.encoder\.layers\.(\d+)\./.exec(n);
      if (m) return Number(m[1]) >= sel;
      if (n.startsWith('visual_encoder.vision_model.post_layernorm.')) return true;
      return sel === 0 && this.vision.config.dropCls && n === 'visual_encoder.vision_model.embeddings.class_embedding';
    };
    const vitUnused = this.spec.presenceSize === 0; // only the presence heads read the ViT
    const out = new Map<string, tf.Variable>();
    for (const [n, v] of this.namedWeights()) if (!unused(n) && !(vitUnused && n.startsWith('visual_encoder.'))) out.set(n, v);
    return out;
  }

  /** Encoders + heads on a batch (inside a tape for training). Box logits are [] when the batch has no box. */
  forward(b: WarmupBatch): HeadOutputs {
    const { box, presenceAux, presenceVit } = this.heads;
    const B = b.size;
    const withBoxes = box.length > 0 && b.numBoxes > 0;
    // Which outputs exist follows the heads and the batch; tidy returns them as one list in this order.
    const list = tf.tidy(() => {
      const out: tf.Tensor[] = [];
      if (presenceVit) {
        const lowres = tf.tensor4d(b.lowres, [B, b.lowresSize, b.lowresSize, 3]); // [B,S,S,3]
        out.push(presenceVit.apply(this.vision.apply(lowres).features)); // [B,N,P]
      }
      const auxPix = tf.tensor4d(b.aux, [B, b.auxSize, b.auxSize, 3]); // [B,A,A,3]
      const enc = this.visionAux.apply(auxPix, { concat: withBoxes });
      if (presenceAux) {
        const [, h, w, c] = enc.last.shape;
        out.push(presenceAux.apply(enc.last.reshape([B, h * w, c]))); // [B,h*w,P]
      }
      if (withBoxes) {
        const means = this.roiMeans(enc.concat!, b.boxes); // [sum K, Cc]
        for (const head of box) out.push(head.apply(means)); // [sum K, classes]
      }
      return out;
    });
    let i = 0;
    const vit = presenceVit ? (list[i++] as tf.Tensor3D) : null;
    const aux = presenceAux ? (list[i++] as tf.Tensor3D) : null;
    return { presenceVit: vit, presenceAux: aux, box: list.slice(i) as tf.Tensor2D[] };
  }

  /** RoI means of every image's boxes on the concat map [B,H,W,C] -> [sum K_b, C], images in order (the model's own). */
  roiMeans(concat: tf.Tensor4D, boxes: readonly Float32Array[]): tf.Tensor2D {
    return batchRoiMeans([concat], [...boxes], { ...this.roi, imageSizeAux: this.visionAux.config.imageSize }).means;
  }

  /**
   * Loss parts of one micro-batch, each a sum divided by the step's counts: `box_<attr>` (cross-entropy per
   * box), `present_aux` / `present_vit` (binary cross-entropy per cell/token and class). Total: the box parts
   * times `boxWeight` plus the presence parts times `presenceWeight`. Call inside a tape.
   */
  loss(b: WarmupBatch, norm: WarmupNorm, w: { box: number; presence: number }): { total: tf.Scalar; parts: Map<string, tf.Scalar> } {
    const parts = new Map<string, tf.Scalar>();
    const total = tf.tidy(() => {
      const out = this.forward(b);
      const terms: tf.Scalar[] = [];
      this.spec.box.forEach((h, j) => {
        const logits = out.box[j];
        const part = logits ? crossEntropySum(logits, b.boxLabels[j]!).div(Math.max(norm.boxes, 1)) : tf.scalar(0);
        parts.set(`box_${h.attr}`, tf.keep(part as tf.Scalar));
        terms.push(tf.mul(part, w.box));
      });
      for (const [name, logits] of [['present_aux', out.presenceAux], ['present_vit', out.presenceVit]] as const) {
        if (!logits) continue;
        const [, M, P] = logits.shape;
        const targets = tf.tensor3d(presenceTargets(b, this.spec, gridOf(M)), [b.size, M, P]); // [B,M,P]
        const part = bceWithLogitsSum(logits, targets).div(norm.images * M * P);
        parts.set(name, tf.keep(part as tf.Scalar));
        terms.push(tf.mul(part, w.presence));
      }
      return tf.addN(terms) as tf.Scalar;
    });
    return { total, parts };
  }
}

/** sum_k -log softmax(logits_k)[label_k]; logits [K, n]. */
function crossEntropySum(logits: tf.Tensor2D, labels: Int32Array): tf.Scalar {
  return tf.tidy(() => {
    const logp = tf.logSoftmax(logits); // [K,n]
    const onehot = tf.oneHot(tf.tensor1d(labels, 'int32'), logits.shape[1]); // [K,n]
    return tf.neg(tf.sum(tf.mul(logp, onehot))) as tf.Scalar;
  });
}

/** sum of max(x,0) - x z + log(1 + exp(-|x|)) (the stable BCE with logits); targets broadcast over x. */
function bceWithLogitsSum(x: tf.Tensor, z: tf.Tensor): tf.Scalar {
  return tf.tidy(() => tf.sum(tf.add(tf.sub(tf.relu(x), tf.mul(x, z)), tf.softplus(tf.neg(tf.abs(x))))) as tf.Scalar);
}

/** Correct / total counts of an evaluation, keyed by metric name. */
export type Tally = Map<string, { correct: number; total: number }>;

function count(t: Tally, key: string, correct: number, total: number): void {
  const c = t.get(key) ?? { correct: 0, total: 0 };
  c.correct += correct;
  c.total += total;
  t.set(key, c);
}

/**
 * Accuracy counts of a batch (no tape): `box_<attr>` over every box, and `box_<attr>@<size>` per value of
 * the annotations' `size` attribute when they have one (WarmupBatch.boxGroups); `present_<path>_<attr>` per cell/token and class
 * (logit > 0 as "present"); `present_rate_<attr>.<class>`: how often the class is present (for the baseline).
 */
export async function tallyBatch(model: WarmupModel, b: WarmupBatch, into: Tally): Promise<void> {
  const out = model.forward(b);
  try {
    for (const [j, h] of model.spec.box.entries()) {
      const logits = out.box[j];
      if (!logits) continue;
      const argmax = tf.argMax(logits, 1);
      const pred = await argmax.data(); // asynchronous reads: webgpu cannot read synchronously
      argmax.dispose();
      b.boxLabels[j]!.forEach((l, r) => {
        const ok = pred[r] === l ? 1 : 0;
        count(into, `box_${h.attr}`, ok, 1);
        if (b.boxGroups.length) count(into, `box_${h.attr}@${b.boxGroups[r]}`, ok, 1);
      });
    }
    for (const [path, logits] of [['aux', out.presenceAux], ['vit', out.presenceVit]] as const) {
      if (!logits) continue;
      const [B, M, P] = logits.shape;
      const x = await logits.data();
      const z = presenceTargets(b, model.spec, gridOf(M)); // [B,M,P]
      for (const h of model.spec.presence) {
        for (let c = 0; c < h.classes.length; c++) {
          const p = h.offset + c;
          let ok = 0;
          let present = 0;
          for (let i = 0; i < B * M; i++) {
            const truth = z[i * P + p]! > 0.5;
            if (x[i * P + p]! > 0 === truth) ok++;
            if (truth) present++;
          }
          count(into, `present_${path}_${h.attr}`, ok, B * M);
          // What a head that ignores the image reaches: per class, the majority answer over these cells.
          count(into, `present_rate_${path}_${h.attr}.${h.classes[c]}`, present, B * M);
        }
      }
    }
  } finally {
    tf.dispose([...out.box, ...(out.presenceAux ? [out.presenceAux] : []), ...(out.presenceVit ? [out.presenceVit] : [])]);
  }
}

/** The side of a square grid of M cells (presence heads run on square maps: ViT patches, ConvNeXt's last map). */
function gridOf(M: number): number {
  const g = Math.round(Math.sqrt(M));
  if (g * g !== M) throw new Error(`warm-up presence: ${M} cells do not form a square grid`);
  return g;
}
