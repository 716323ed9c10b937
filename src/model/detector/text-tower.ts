/**
 * OWLv2 text tower (HF `Owlv2TextTransformer`, keys `owlv2.text_model.*`): a causal CLIP text transformer.
 *
 *   ids [n,L] -> token_embedding[ids] + position_embedding[0..L-1] -> CLIP encoder layers with an additive
 *   causal + key-padding mask -> final_layer_norm -> pooled = row at argmax(ids)
 *
 * Pooling takes the FIRST position of the row's largest id, which is <|endoftext|> (49407, the largest id) for
 * real CLIP tokenisation: not the last real token and not a search for eos_token_id (OWLV2.md, pitfall 1).
 * Rows are queries (image-major in the detector: row b*Q+q is query q of image b).
 */
import * as tf from '@tensorflow/tfjs';
import { Module, type InitContext } from '../../nn/module.js';
import { LayerNorm } from '../../nn/norm.js';
import { Embedding } from '../llm/embedding.js';
import type { IntMatrix } from '../llm/int-matrix.js';
import { ClipEncoderLayer } from '../vision/clip-vit.js';
import type { Owlv2TextConfig } from './config.js';

/** float32's most negative finite value: HF's mask value (`finfo(float32).min`). */
export const F32_MIN = -3.4028234663852886e38;

/** Tokenised queries: ids and attention mask (1 real, 0 padding), both [n, L] with L <= maxPositions. */
export interface QueryTokens {
  ids: IntMatrix;
  mask: IntMatrix;
}

export interface TextTowerOutput {
  /** After final_layer_norm: [n, L, Dt]. Padded positions have defined but irrelevant values. */
  lastHidden: tf.Tensor3D;
  /** lastHidden at each row's argmax(ids): [n, Dt]. */
  pooled: tf.Tensor2D;
  /** The pooled position of each row. */
  eosIndex: Int32Array;
  /** [0] = embeddings, [i] = after layer i (before final_layer_norm); only with `outputHiddenStates`. */
  hiddenStates?: tf.Tensor3D[];
}

export interface TextTowerOptions {
  outputHiddenStates?: boolean;
  /** Largest attention score block (see blockedAttention). */
  maxScores?: number;
}

/** Each mask term: half of float32's most negative value, so that causal + padding stays finite (= F32_MIN). */
const MASK_TERM = F32_MIN / 2;

/**
 * Additive mask [n|1, 1, L, L]: causal (above the diagonal) + key padding (where mask is 0). HF adds
 * finfo.min twice, which overflows to -inf where both apply; here each term is finfo.min / 2, which gives the
 * same softmax weights (a key under one term is ~1.7e38 below any unmasked score, one under both another 1.7e38
 * below that: exp of either difference is 0, and a score added to either is lost to rounding) without an
 * infinity, which GPU backends do not promise to handle. A padding query then attends uniformly to the keys of
 * its causal prefix, and an all-padding row pools position 0, which attends only to itself, as in HF.
 */
export function textAttentionBias(mask: IntMatrix | null, length: number): tf.Tensor4D {
  const n = mask ? mask.shape[0] : 1;
  const out = new Float32Array(n * length * length);
  for (let r = 0; r < n; r++) {
    for (let i = 0; i < length; i++) {
      for (let j = 0; j < length; j++) {
        const causal = j > i ? MASK_TERM : 0;
        const pad = mask && mask.data[r * length + j] === 0 ? MASK_TERM : 0;
        out[(r * length + i) * length + j] = causal + pad;
      }
    }
  }
  return tf.tensor4d(out, [n, 1, length, length]);
}

/** First position of each row's largest id (torch.argmax semantics). */
export function argmaxRows(ids: IntMatrix): Int32Array {
  const [n, len] = ids.shape;
  const out = new Int32Array(n);
  for (let r = 0; r < n; r++) {
    let best = 0;
    for (let t = 1; t < len; t++) if (ids.data[r * len + t]! > ids.data[r * len + best]!) best = t;
    out[r] = best;
  }
  return out;
}

export class Owlv2TextTower extends Module<Owlv2TextConfig> {
  readonly tokenEmbedding: Embedding; // [V, Dt]
  readonly positionEmbedding: Embedding; // [maxPositions, Dt]
  readonly layers: ClipEncoderLayer[];
  readonly finalLayerNorm: LayerNorm;

  constructor(c: Owlv2TextConfig, ctx: InitContext) {
    super(c);
    // HF CLIP text init: token embeddings N(0, 0.02), positions N(0, 0.01).
    this.tokenEmbedding = this.addChild('embeddings.token_embedding', new Embedding({ numEmbeddings: c.vocabSize, dim: c.hiddenSize, initStd: 0.02 }, ctx));
    this.positionEmbedding = this.addChild(
      'embeddings.position_embedding',
      new Embedding({ numEmbeddings: c.maxPositions, dim: c.hiddenSize, initStd: 0.01 }, ctx),
    );
    const layer = { hiddenSize: c.hiddenSize, intermediateSize: c.intermediateSize, numHeads: c.numHeads, layerNormEps: c.layerNormEps };
    this.layers = [];
    for (let i = 0; i < c.numLayers; i++) this.layers.push(this.addChild(`encoder.layers.${i}`, new ClipEncoderLayer(layer, ctx)));
    this.finalLayerNorm = this.addChild('final_layer_norm', new LayerNorm({ dim: c.hiddenSize, eps: c.layerNormEps }, ctx));
  }

  apply(tokens: QueryTokens, opts: TextTowerOptions = {}): TextTowerOutput {
    const c = this.config;
    const { ids, mask } = tokens;
    const [n, len] = ids.shape;
    if (mask.shape[0] !== n || mask.shape[1] !== len) throw new Error(`Owlv2TextTower: attention mask [${mask.shape}] does not match ids [${ids.shape}]`);
    if (len < 1 || len > c.maxPositions) throw new Error(`Owlv2TextTower: queries of ${len} tokens (1..${c.maxPositions} fit the position embeddings)`);
    for (const id of ids.data) {
      if (!(id >= 0 && id < c.vocabSize)) throw new Error(`Owlv2TextTower: token id ${id} is outside the ${c.vocabSize}-entry vocabulary`);
    }
    const eosIndex = argmaxRows(ids);
    return tf.tidy(() => {
      const idsT = tf.tensor2d(ids.data, [n, len], 'int32');
      const positions = tf.slice(this.positionEmbedding.weight, [0, 0], [len, -1]); // [L,Dt]
      let h = tf.add(this.tokenEmbedding.apply(idsT), positions) as tf.Tensor3D; // [n,L,Dt]
      const bias = textAttentionBias(mask, len); // [n,1,L,L]
      const states: tf.Tensor3D[] = [h];
      for (const layer of this.layers) {
        h = layer.apply(h, { bias, maxScores: opts.maxScores });
        if (opts.outputHiddenStates) states.push(h);
      }
      const lastHidden = this.finalLayerNorm.apply(h) as tf.Tensor3D; // [n,L,Dt]
      const rows = Int32Array.from(eosIndex, (t, r) => r * len + t);
      const pooled = tf.gather(lastHidden.reshape([n * len, c.hiddenSize]), tf.tensor1d(rows, 'int32')) as tf.Tensor2D; // [n,Dt]
      return opts.outputHiddenStates ? { lastHidden, pooled, eosIndex, hiddenStates: states } : { lastHidden, pooled, eosIndex };
    });
  }
}
