/**
 * Golden runners for roi_align and the object tokens.
 * - `roi_align`: every `output.pooled_<P>[_sr<n>]` case of the piece: pooled map, bin mean,
 *   interpolation matrices Ay/Ax, and grad_input.feat_<tag> where the piece has a loss weight for it.
 * - `object_features` / `object_features_multilevel`: RoI means (where stored), object tokens per image,
 *   gradients of sum_i sum(obj_i * loss_weight_i) w.r.t. every parameter.
 * Golden maps are NCHW; the model takes NHWC.
 */
import * as tf from '@tensorflow/tfjs';
import type { GoldenPiece } from '../manifest.js';
import { ioTensor } from '../manifest.js';
import { Checks, type CheckResult } from '../compare.js';
import { toTf } from '../../io/host-tensor.js';
import { loadWeights } from '../../nn/module.js';
import { nchwToNhwc, nhwcToNchw } from '../../nn/conv.js';
import { Rng } from '../../util/rng.js';
import { roiAlign, roiAlignMatrices, roiMean, type RoiAlignOptions } from '../../model/roi-align.js';
import { ObjectFeatures, type ObjectFeaturesConfig } from '../../model/objects.js';
import { namedGrads } from './variable-grads.js';

function configNumber(piece: GoldenPiece, key: string): number {
  const v = piece.config[key];
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`piece '${piece.name}': config.${key} must be a number, got ${JSON.stringify(v)}`);
  return v;
}

function configIntList(piece: GoldenPiece, key: string): number[] {
  const v = piece.config[key];
  if (!Array.isArray(v) || !v.every((x) => Number.isInteger(x))) throw new Error(`piece '${piece.name}': config.${key} must be a list of integers`);
  return v as number[];
}

/** One image's NCHW map from the file as NHWC without the batch axis: [H, W, C]. */
function mapNhwc(piece: GoldenPiece, key: string): tf.Tensor4D {
  return tf.tidy(() => nchwToNhwc(toTf(ioTensor(piece, key))));
}

export async function runRoiAlign(piece: GoldenPiece): Promise<CheckResult[]> {
  const featHost = ioTensor(piece, 'input.feat');
  if (featHost.shape.length !== 4 || featHost.shape[0] !== 1) throw new Error(`piece '${piece.name}': input.feat must be [1,C,H,W]`);
  const boxes = ioTensor(piece, 'input.boxes').data as Float32Array;
  const spatialScale = configNumber(piece, 'spatial_scale');
  const feat = tf.tidy(() => tf.variable(mapNhwc(piece, 'input.feat').squeeze([0]))) as tf.Variable<tf.Rank.R3>; // [H,W,C]
  const [H, W] = feat.shape;
  const checks = new Checks();
  try {
    const cases = [...piece.io.keys()].map((k) => /^output\.pooled_((\d+)(?:_sr(\d+))?)$/.exec(k)).filter((m) => m !== null);
    if (cases.length === 0) throw new Error(`piece '${piece.name}': no output.pooled_* tensors`);
    for (const m of cases) {
      const tag = m[1]!;
      const opts: RoiAlignOptions = { outputSize: Number(m[2]), spatialScale, samplingRatio: m[3] ? Number(m[3]) : -1 };
      const mats = roiAlignMatrices(boxes, H, W, opts);
      checks.tensor(`intermediate.Ay_${tag}`, mats.ay, ioTensor(piece, `intermediate.Ay_${tag}`), piece.forward);
      checks.tensor(`intermediate.Ax_${tag}`, mats.ax, ioTensor(piece, `intermediate.Ax_${tag}`), piece.forward);
      tf.tidy(() => {
        const pooled = nhwcToNchw(roiAlign(feat, boxes, opts)); // [K,C,P,P]
        checks.tensor(`output.pooled_${tag}`, pooled, ioTensor(piece, `output.pooled_${tag}`), piece.forward);
        checks.tensor(`output.mean_${tag}`, roiMean(feat, boxes, opts), ioTensor(piece, `output.mean_${tag}`), piece.forward);
      });
      const lwHost = piece.io.get(`input.loss_weight_${tag}`);
      if (!lwHost) continue;
      const lw = toTf(lwHost);
      const grads = namedGrads(() => tf.tidy(() => tf.sum(tf.mul(nhwcToNchw(roiAlign(feat, boxes, opts)), lw))) as tf.Scalar, new Map([['feat', feat]]));
      lw.dispose();
      const g = grads.get('feat')!;
      tf.tidy(() => {
        const gNchw = g.expandDims(0).transpose([0, 3, 1, 2]); // [1,C,H,W]
        checks.tensor(`grad_input.feat_${tag}`, gNchw, ioTensor(piece, `grad_input.feat_${tag}`), piece.grads);
      });
      g.dispose();
    }
  } finally {
    feat.dispose();
  }
  return await checks.results();
}

/** ObjectFeaturesConfig from the golden keys of object_features / object_features_multilevel. */
export function objectFeaturesConfigFrom(piece: GoldenPiece, concatChannels: number): ObjectFeaturesConfig {
  const depth = [...piece.params.keys()].filter((k) => /^bbox_projector\.model\.\d+\.weight$/.test(k)).length;
  if (depth === 0) throw new Error(`piece '${piece.name}': no bbox_projector.model.*.weight parameters`);
  const multi = 'level_channels' in piece.config;
  return {
    inChannels: concatChannels,
    hidden: configNumber(piece, 'llm_hidden'),
    imageSizeAux: configNumber(piece, 'image_size_aux'),
    outputSize: configNumber(piece, 'output_size'),
    samplingRatio: -1,
    projectorDepth: depth,
    multiLevel: multi ? { levelChannels: configIntList(piece, 'level_channels'), commonDim: configNumber(piece, 'common_dim') } : null,
  };
}

export async function runObjectFeatures(piece: GoldenPiece): Promise<CheckResult[]> {
  const concatHost = ioTensor(piece, 'input.concat');
  const B = concatHost.shape[0]!;
  const boxes = Array.from({ length: B }, (_, b) => ioTensor(piece, `input.boxes_${b}`).data as Float32Array);
  const model = new ObjectFeatures(objectFeaturesConfigFrom(piece, concatHost.shape[1]!), { rng: new Rng(0), skipInit: true });
  const concat = mapNhwc(piece, 'input.concat'); // [B,H,W,C]
  const lossWeight = tf.tidy(() => tf.concat(boxes.map((_, b) => toTf(ioTensor(piece, `input.loss_weight_${b}`))))); // [sum K, hidden]
  const checks = new Checks();
  try {
    loadWeights(model, piece.params, { origin: `${piece.name}.params` });
    if (piece.config.spatial_scale !== undefined) {
      const scale = model.roiOptions(concat.shape[1]).spatialScale;
      if (scale !== piece.config.spatial_scale) throw new Error(`piece '${piece.name}': spatial scale ${scale} != config ${piece.config.spatial_scale}`);
    }
    tf.tidy(() => {
      const means = model.roiMeans(concat, boxes);
      const rows = tf.split(means.means, means.counts, 0);
      rows.forEach((r, b) => {
        const golden = piece.io.get(`intermediate.roi_mean_${b}`);
        if (golden) checks.tensor(`intermediate.roi_mean_${b}`, r, golden, piece.forward);
      });
      model.apply(concat, boxes).forEach((obj, b) => {
        checks.tensor(`output.obj_${b}`, obj, ioTensor(piece, `output.obj_${b}`), piece.forward);
      });
    });
    const grads = namedGrads(() => tf.tidy(() => tf.sum(tf.mul(model.applyFlat(concat, boxes).tokens, lossWeight))) as tf.Scalar, model.weightMap());
    for (const [name, g] of grads) {
      checks.tensor(`grad.${name}`, g, ioTensor(piece, `grad.${name}`), piece.grads);
      g.dispose();
    }
  } finally {
    model.dispose();
    concat.dispose();
    lossWeight.dispose();
  }
  return await checks.results();
}
