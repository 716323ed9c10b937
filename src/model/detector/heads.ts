/**
 * OWLv2 detection heads on the image features f [B,N,Dv] (N = Hp*Wp patches, row-major):
 *
 *   class head (`class_head.*`)   logits [B,N,Q] = (ê·q̂ + logit_shift(f)) * (elu(logit_scale(f)) + 1)
 *   box head (`box_head.*`)       pred_boxes [B,N,4] = sigmoid(mlp(f) + box_bias), (cx, cy, w, h) of the padded square
 *   objectness (`objectness_head.*`) logits [B,N] = mlp(f)[..., 0] (MG-LLaVA does not use them)
 *
 * The normalisations put the epsilon on the norm, not inside the square root: x / (||x|| + 1e-6). Masked
 * queries get exactly finfo(float32).min. The box bias is a fixed function of the grid computed in float32
 * with the patch's bottom-right corner as its position (OWLV2.md §5-7).
 */
import * as tf from '@tensorflow/tfjs';
import { Module, type InitContext } from '../../nn/module.js';
import { Linear } from '../../nn/linear.js';
import { geluErf } from '../../nn/activations.js';
import { F32_MIN } from './text-tower.js';

export interface ClassHeadConfig {
  /** Vision width Dv (input). */
  visionHidden: number;
  /** Text width Dt (dense0's output; the queries' width must equal it). */
  textHidden: number;
}

export interface ClassHeadOutput {
  /** [B,N,Q]; F32_MIN where the query is masked. */
  logits: tf.Tensor3D;
  /** dense0(f) / (||dense0(f)|| + 1e-6): [B,N,Dt]. */
  classEmbeds: tf.Tensor3D;
  /** Intermediates: cosine ê·q̂ [B,N,Q], logit_shift [B,N,1], logit_scale = elu(.)+1 [B,N,1]. */
  cosine: tf.Tensor3D;
  shift: tf.Tensor3D;
  scale: tf.Tensor3D;
}

/** x / (||x||_2 + 1e-6) over the last axis. */
function normalizeEps(x: tf.Tensor): tf.Tensor {
  return tf.tidy(() => tf.div(x, tf.add(tf.norm(x, 'euclidean', -1, true), 1e-6)));
}

export class Owlv2ClassHead extends Module<ClassHeadConfig> {
  readonly dense0: Linear;
  readonly logitShift: Linear;
  readonly logitScale: Linear;

  constructor(c: ClassHeadConfig, ctx: InitContext) {
    super(c);
    this.dense0 = this.addChild('dense0', new Linear({ inFeatures: c.visionHidden, outFeatures: c.textHidden, bias: true }, ctx));
    this.logitShift = this.addChild('logit_shift', new Linear({ inFeatures: c.visionHidden, outFeatures: 1, bias: true }, ctx));
    this.logitScale = this.addChild('logit_scale', new Linear({ inFeatures: c.visionHidden, outFeatures: 1, bias: true }, ctx));
  }

  /**
   * feats [B,N,Dv], queries [B,Q,Dt] (the text embeddings), queryMask [B*Q] row-major (0 = masked) or null.
   */
  apply(feats: tf.Tensor3D, queries: tf.Tensor3D, queryMask: ArrayLike<number> | null): ClassHeadOutput {
    const [b, , dt] = queries.shape;
    const q = queries.shape[1];
    if (dt !== this.config.textHidden) throw new Error(`Owlv2ClassHead: queries are ${dt} wide, dense0 gives ${this.config.textHidden}`);
    if (queryMask && queryMask.length !== b * q) throw new Error(`Owlv2ClassHead: query mask has ${queryMask.length} entries for [${b},${q}] queries`);
    return tf.tidy(() => {
      const classEmbeds = normalizeEps(this.dense0.apply(feats)) as tf.Tensor3D; // [B,N,Dt]
      const qHat = normalizeEps(queries); // [B,Q,Dt]
      const cosine = tf.matMul(classEmbeds, qHat, false, true) as tf.Tensor3D; // [B,N,Q]
      const shift = this.logitShift.apply(feats) as tf.Tensor3D; // [B,N,1]
      const scale = tf.add(tf.elu(this.logitScale.apply(feats)), 1) as tf.Tensor3D; // [B,N,1], > 0
      let logits = tf.mul(tf.add(cosine, shift), scale) as tf.Tensor3D; // [B,N,Q]
      if (queryMask && Array.prototype.some.call(queryMask, (m: number) => m === 0)) {
        const keep = tf.broadcastTo(tf.tensor3d(Int32Array.from(queryMask, (m) => (m === 0 ? 0 : 1)), [b, 1, q], 'int32').cast('bool'), logits.shape);
        logits = tf.where(keep, logits, tf.fill(logits.shape, F32_MIN)) as tf.Tensor3D;
      }
      return { logits, classEmbeds, cosine, shift, scale };
    });
  }
}

export interface MlpHeadConfig {
  width: number;
  out: number;
}

/** dense0 -> GELU(erf) -> dense1 -> GELU(erf) -> dense2: the box head (out 4) and the objectness head (out 1). */
export class Owlv2MlpHead extends Module<MlpHeadConfig> {
  readonly dense0: Linear;
  readonly dense1: Linear;
  readonly dense2: Linear;

  constructor(c: MlpHeadConfig, ctx: InitContext) {
    super(c);
    this.dense0 = this.addChild('dense0', new Linear({ inFeatures: c.width, outFeatures: c.width, bias: true }, ctx));
    this.dense1 = this.addChild('dense1', new Linear({ inFeatures: c.width, outFeatures: c.width, bias: true }, ctx));
    this.dense2 = this.addChild('dense2', new Linear({ inFeatures: c.width, outFeatures: c.out, bias: true }, ctx));
  }

  /** feats [B,N,Dv] -> out [B,N,out]; `first` = gelu(dense0(f)) [B,N,Dv] (a golden intermediate). */
  apply(feats: tf.Tensor3D): { out: tf.Tensor3D; first: tf.Tensor3D } {
    return tf.tidy(() => {
      const first = geluErf(this.dense0.apply(feats)) as tf.Tensor3D;
      const out = this.dense2.apply(geluErf(this.dense1.apply(first))) as tf.Tensor3D;
      return { out, first };
    });
  }
}

/** pred_boxes [B,N,4] = sigmoid(box_head(f) + bias) with bias [N,4] from boxBias; also the raw head output. */
export function predictBoxes(head: Owlv2MlpHead, feats: tf.Tensor3D, bias: tf.Tensor2D): { predBoxes: tf.Tensor3D; headOut: tf.Tensor3D } {
  return tf.tidy(() => {
    const headOut = head.apply(feats).out; // [B,N,4]
    return { predBoxes: tf.sigmoid(tf.add(headOut, bias)) as tf.Tensor3D, headOut };
  });
}

/**
 * The box head's fixed bias [Hp*Wp, 4] (cx, cy, w, h) in logit space, token n = row*Wp + col, computed in
 * float32 as HF does (every operation rounded to float32):
 *   cx = (col+1)/Wp, cy = (row+1)/Hp (the patch's bottom-right corner), w = 1/Wp, h = 1/Hp
 *   bias(v) = log(v + 1e-4) - log1p(-v + 1e-4)
 * In float32, -1 + 1e-4 rounds, so the last column/row gets 9.21017 (9.21034 in float64).
 */
export function boxBias(hp: number, wp: number): Float32Array {
  const f = Math.fround;
  const eps = f(1e-4);
  const logit = (v: number) => f(f(Math.log(f(v + eps))) - f(Math.log1p(f(-v + eps))));
  const out = new Float32Array(hp * wp * 4);
  const w = f(1 / wp);
  const h = f(1 / hp);
  for (let row = 0; row < hp; row++) {
    const cy = Math.min(1, Math.max(0, f((row + 1) / hp)));
    for (let col = 0; col < wp; col++) {
      const cx = Math.min(1, Math.max(0, f((col + 1) / wp)));
      out.set([logit(cx), logit(cy), logit(w), logit(h)], (row * wp + col) * 4);
    }
  }
  return out;
}
