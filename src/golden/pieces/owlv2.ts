/**
 * Golden runners for the OWLv2 model pieces (../shared/golden/owlv2-public): text_encoder, vision_encoder,
 * image_embedder, class_head, box_head, objectness, detector. Each builds its part from the piece's own config
 * (the detector from the manifest's `model_config`, which is the HF config of the model every piece shares),
 * loads the piece's parameters by their HF names, runs it and compares outputs and intermediates. No gradients:
 * OWLv2 is a frozen box generator.
 */
import * as tf from '@tensorflow/tfjs';
import { Checks, type CheckResult } from '../compare.js';
import { ioTensor, paramTensor, readManifest, type GoldenPiece } from '../manifest.js';
import { loadWeights, type Module } from '../../nn/module.js';
import { Linear } from '../../nn/linear.js';
import { LayerNorm } from '../../nn/norm.js';
import { nchwToNhwc } from '../../nn/conv.js';
import { toTf } from '../../io/host-tensor.js';
import { toIntMatrix } from '../../model/llm/int-matrix.js';
import { Rng } from '../../util/rng.js';
import { owlv2ConfigFromHf, type Owlv2Config } from '../../model/detector/config.js';
import { Owlv2TextTower } from '../../model/detector/text-tower.js';
import { Owlv2VisionTower } from '../../model/detector/vision-tower.js';
import { Owlv2ClassHead, Owlv2MlpHead, boxBias, predictBoxes } from '../../model/detector/heads.js';
import { Owlv2Detector, imageFeaturesFrom, projectQueries } from '../../model/detector/owlv2.js';

const INIT = { rng: new Rng(0), skipInit: true };

/** Load `parts` (module, HF prefix) from the piece's params; every parameter of the piece must be used. */
function loadParts(piece: GoldenPiece, parts: [Module, string][]): void {
  const used = new Set<string>();
  for (const [m, prefix] of parts) for (const n of loadWeights(m, piece.params, { prefix, origin: `golden '${piece.name}' params` })) used.add(n);
  const unused = [...piece.params.keys()].filter((k) => !used.has(k));
  if (unused.length) throw new Error(`golden piece '${piece.name}': parameters not used by the model: ${unused.join(', ')}`);
}

/** A piece config holding one tower's HF keys -> that tower's config (the other tower at HF defaults). */
function towerConfig(piece: GoldenPiece, tower: 'text_config' | 'vision_config', projectionDim?: number): Owlv2Config {
  const textHidden = tower === 'text_config' ? piece.config.hidden_size : undefined;
  return owlv2ConfigFromHf({ [tower]: piece.config, projection_dim: projectionDim ?? textHidden ?? 512 }, `golden '${piece.name}' config`);
}

/** Every `<prefix>N` tensor of the piece (hidden states), in order. */
function indexedKeys(piece: GoldenPiece, prefix: string): string[] {
  const keys = [...piece.io.keys()].filter((k) => k.startsWith(prefix) && /^\d+$/.test(k.slice(prefix.length)));
  return keys.sort((a, b) => Number(a.slice(prefix.length)) - Number(b.slice(prefix.length)));
}

function compareStates(checks: Checks, piece: GoldenPiece, states: tf.Tensor[], prefix: string): void {
  const keys = indexedKeys(piece, prefix);
  if (keys.length !== states.length) throw new Error(`golden piece '${piece.name}': ${keys.length} hidden states in the file, model has ${states.length}`);
  states.forEach((h, i) => checks.tensor(keys[i]!, h, ioTensor(piece, keys[i]!), piece.forward));
}

export async function runOwlv2TextEncoder(piece: GoldenPiece): Promise<CheckResult[]> {
  const projectionDim = paramTensor(piece, 'owlv2.text_projection.weight').shape[0]!;
  const cfg = towerConfig(piece, 'text_config', projectionDim);
  const tower = new Owlv2TextTower(cfg.text, INIT);
  const projection = new Linear({ inFeatures: cfg.text.hiddenSize, outFeatures: projectionDim, bias: false }, INIT);
  const checks = new Checks();
  try {
    loadParts(piece, [
      [tower, 'owlv2.text_model.'],
      [projection, 'owlv2.text_projection.'],
    ]);
    const tokens = {
      ids: toIntMatrix(ioTensor(piece, 'input.input_ids'), 'input.input_ids'),
      mask: toIntMatrix(ioTensor(piece, 'input.attention_mask'), 'input.attention_mask'),
    };
    tf.tidy(() => {
      const out = tower.apply(tokens, { outputHiddenStates: true });
      const q = projectQueries(out.pooled, projection);
      checks.tensor('output.last_hidden_state', out.lastHidden, ioTensor(piece, 'output.last_hidden_state'), piece.forward);
      checks.tensor('output.pooled_output', out.pooled, ioTensor(piece, 'output.pooled_output'), piece.forward);
      checks.tensor('output.text_embeds_unnormalized', q.unnormalized, ioTensor(piece, 'output.text_embeds_unnormalized'), piece.forward);
      checks.tensor('output.text_embeds', q.embeds, ioTensor(piece, 'output.text_embeds'), piece.forward);
      checks.exact('intermediate.eos_index', out.eosIndex, ioTensor(piece, 'intermediate.eos_index'));
      compareStates(checks, piece, out.hiddenStates!, 'intermediate.hidden_states.');
    });
    return await checks.results();
  } finally {
    checks.dispose();
    tower.dispose();
    projection.dispose();
  }
}

function visionParts(piece: GoldenPiece, withLayerNorm: boolean): { tower: Owlv2VisionTower; layerNorm: LayerNorm | null } {
  const cfg = towerConfig(piece, 'vision_config');
  const tower = new Owlv2VisionTower(cfg.vision, INIT);
  const layerNorm = withLayerNorm ? new LayerNorm({ dim: cfg.vision.hiddenSize, eps: cfg.vision.layerNormEps }, INIT) : null;
  try {
    loadParts(piece, layerNorm ? [[tower, 'owlv2.vision_model.'], [layerNorm, 'layer_norm.']] : [[tower, 'owlv2.vision_model.']]);
  } catch (e) {
    tower.dispose();
    layerNorm?.dispose();
    throw e;
  }
  return { tower, layerNorm };
}

export async function runOwlv2VisionEncoder(piece: GoldenPiece): Promise<CheckResult[]> {
  const { tower } = visionParts(piece, false);
  const checks = new Checks();
  try {
    tf.tidy(() => {
      const out = tower.apply(nchwToNhwc(toTf(ioTensor(piece, 'input.pixel_values'))), { outputHiddenStates: true });
      checks.tensor('output.last_hidden_state', out.lastHidden, ioTensor(piece, 'output.last_hidden_state'), piece.forward);
      checks.tensor('output.pooled_output', tower.pooled(out.lastHidden), ioTensor(piece, 'output.pooled_output'), piece.forward);
      compareStates(checks, piece, out.hiddenStates!, 'intermediate.hidden_states.');
      // The default path (no hidden states kept) must give the same last state.
      const plain = tower.apply(nchwToNhwc(toTf(ioTensor(piece, 'input.pixel_values'))));
      checks.tensor('output.last_hidden_state (default path)', plain.lastHidden, ioTensor(piece, 'output.last_hidden_state'), piece.forward);
    });
    return await checks.results();
  } finally {
    checks.dispose();
    tower.dispose();
  }
}

export async function runOwlv2ImageEmbedder(piece: GoldenPiece): Promise<CheckResult[]> {
  const { tower, layerNorm } = visionParts(piece, true);
  const checks = new Checks();
  try {
    tf.tidy(() => {
      const { lastHidden } = tower.apply(nchwToNhwc(toTf(ioTensor(piece, 'input.pixel_values'))));
      const f = imageFeaturesFrom(tower, layerNorm!, lastHidden, true);
      const expected = ioTensor(piece, 'output.feature_map');
      checks.tensor('output.feature_map', f.feats.reshape(expected.shape), expected, piece.forward);
      checks.tensor('intermediate.post_layernorm_tokens', f.postLayernormTokens!, ioTensor(piece, 'intermediate.post_layernorm_tokens'), piece.forward);
      checks.tensor('intermediate.merged', f.merged!, ioTensor(piece, 'intermediate.merged'), piece.forward);
    });
    return await checks.results();
  } finally {
    checks.dispose();
    tower.dispose();
    layerNorm!.dispose();
  }
}

function intConfig(piece: GoldenPiece, key: string): number {
  const v = piece.config[key];
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) throw new Error(`golden piece '${piece.name}': config.${key} must be a positive integer, got ${JSON.stringify(v)}`);
  return v;
}

export async function runOwlv2ClassHead(piece: GoldenPiece): Promise<CheckResult[]> {
  const head = new Owlv2ClassHead({ visionHidden: intConfig(piece, 'vision_hidden'), textHidden: intConfig(piece, 'text_hidden') }, INIT);
  const checks = new Checks();
  try {
    loadParts(piece, [[head, 'class_head.']]);
    const mask = ioTensor(piece, 'input.query_mask').data;
    tf.tidy(() => {
      const feats = toTf(ioTensor(piece, 'input.image_feats')) as tf.Tensor3D;
      const queries = toTf(ioTensor(piece, 'input.query_embeds')) as tf.Tensor3D;
      const out = head.apply(feats, queries, mask);
      checks.tensor('output.logits', out.logits, ioTensor(piece, 'output.logits'), piece.forward);
      checks.tensor('output.logits_no_mask', head.apply(feats, queries, null).logits, ioTensor(piece, 'output.logits_no_mask'), piece.forward);
      checks.tensor('output.class_embeds', out.classEmbeds, ioTensor(piece, 'output.class_embeds'), piece.forward);
      checks.tensor('intermediate.cosine', out.cosine, ioTensor(piece, 'intermediate.cosine'), piece.forward);
      checks.tensor('intermediate.logit_shift', out.shift, ioTensor(piece, 'intermediate.logit_shift'), piece.forward);
      checks.tensor('intermediate.logit_scale', out.scale, ioTensor(piece, 'intermediate.logit_scale'), piece.forward);
    });
    return await checks.results();
  } finally {
    checks.dispose();
    head.dispose();
  }
}

/** Every `output.box_bias_h<H>_w<W>` tensor: the bias of another grid, checked against boxBias(H, W). */
function extraBoxBiases(checks: Checks, piece: GoldenPiece): void {
  for (const key of piece.io.keys()) {
    const m = /^output\.box_bias_h(\d+)_w(\d+)$/.exec(key);
    if (m) checks.tensor(key, boxBias(Number(m[1]), Number(m[2])), ioTensor(piece, key), piece.forward);
  }
}

export async function runOwlv2BoxHead(piece: GoldenPiece): Promise<CheckResult[]> {
  const head = new Owlv2MlpHead({ width: intConfig(piece, 'vision_hidden'), out: 4 }, INIT);
  const checks = new Checks();
  try {
    loadParts(piece, [[head, 'box_head.']]);
    const gh = intConfig(piece, 'grid_h');
    const gw = intConfig(piece, 'grid_w');
    const bias = boxBias(gh, gw);
    checks.tensor('intermediate.box_bias', bias, ioTensor(piece, 'intermediate.box_bias'), piece.forward);
    extraBoxBiases(checks, piece);
    tf.tidy(() => {
      const out = predictBoxes(head, toTf(ioTensor(piece, 'input.image_feats')) as tf.Tensor3D, tf.tensor2d(bias, [gh * gw, 4]));
      checks.tensor('output.pred_boxes', out.predBoxes, ioTensor(piece, 'output.pred_boxes'), piece.forward);
      checks.tensor('intermediate.head_out', out.headOut, ioTensor(piece, 'intermediate.head_out'), piece.forward);
    });
    return await checks.results();
  } finally {
    checks.dispose();
    head.dispose();
  }
}

export async function runOwlv2Objectness(piece: GoldenPiece): Promise<CheckResult[]> {
  const head = new Owlv2MlpHead({ width: intConfig(piece, 'vision_hidden'), out: 1 }, INIT);
  const checks = new Checks();
  try {
    loadParts(piece, [[head, 'objectness_head.']]);
    tf.tidy(() => {
      const out = head.apply(toTf(ioTensor(piece, 'input.image_feats')) as tf.Tensor3D);
      checks.tensor('output.objectness_logits', out.out.squeeze([2]), ioTensor(piece, 'output.objectness_logits'), piece.forward);
      checks.tensor('intermediate.dense0_gelu', out.first, ioTensor(piece, 'intermediate.dense0_gelu'), piece.forward);
    });
    return await checks.results();
  } finally {
    checks.dispose();
    head.dispose();
  }
}

export async function runOwlv2Detector(piece: GoldenPiece): Promise<CheckResult[]> {
  const manifest = (await readManifest(piece.dir)) as { model_config?: Record<string, unknown> };
  const mc = manifest.model_config;
  if (!mc || typeof mc !== 'object') throw new Error(`golden piece '${piece.name}': the manifest has no model_config`);
  const cfg = owlv2ConfigFromHf(
    { text_config: mc.text, vision_config: mc.vision, projection_dim: mc.projection_dim },
    `golden '${piece.name}' model_config`,
  );
  const model = new Owlv2Detector(cfg, INIT);
  const checks = new Checks();
  try {
    loadParts(piece, [[model, '']]);
    const tokens = {
      ids: toIntMatrix(ioTensor(piece, 'input.input_ids'), 'input.input_ids'),
      mask: toIntMatrix(ioTensor(piece, 'input.attention_mask'), 'input.attention_mask'),
    };
    tf.tidy(() => {
      const out = model.forward(tokens, nchwToNhwc(toTf(ioTensor(piece, 'input.pixel_values'))));
      for (const [key, t] of [
        ['output.logits', out.logits],
        ['output.pred_boxes', out.predBoxes],
        ['output.objectness_logits', out.objectnessLogits],
        ['output.text_embeds', out.textEmbeds],
        ['output.image_embeds', out.imageEmbeds],
        ['output.class_embeds', out.classEmbeds],
      ] as const) {
        checks.tensor(key, t, ioTensor(piece, key), piece.forward);
      }
      checks.exact('intermediate.query_mask', out.queryMask, ioTensor(piece, 'intermediate.query_mask'));
      checks.tensor('intermediate.box_bias', boxBias(model.grid, model.grid), ioTensor(piece, 'intermediate.box_bias'), piece.forward);
    });
    return await checks.results();
  } finally {
    checks.dispose();
    model.dispose();
  }
}
