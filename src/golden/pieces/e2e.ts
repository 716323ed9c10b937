/**
 * Golden runner for `e2e`: the whole tiny MG-LLaVA built from the manifest's config, loaded by
 * checkpoint names, run end to end (intermediates, logits, loss), differentiated in finetune mode, and
 * one clipped AdamW step taken in both modes (pretrain / sft trainable sets differ, so do their norms).
 */
import * as tf from '@tensorflow/tfjs';
import type { GoldenPiece } from '../manifest.js';
import { ioTensor } from '../manifest.js';
import { compareExact, Checks, type CheckResult } from '../compare.js';
import { toTf } from '../../io/host-tensor.js';
import { loadWeights } from '../../nn/module.js';
import { nchwToNhwc, nhwcToNchw } from '../../nn/conv.js';
import { Rng } from '../../util/rng.js';
import { MGLLaVA, disposeFrozen, type MGLLaVAConfig, type Stage } from '../../model/mgllava.js';
import { clipVitConfigFromHf } from '../../model/vision/clip-vit.js';
import { convNextConfigFrom } from '../../model/vision/convnext.js';
import { fromHfConfig } from '../../model/llm/config.js';
import { AdamW, clipByGlobalNorm } from '../../train/adamw.js';
import { namedGrads } from './variable-grads.js';

interface E2eConfig {
  vit: Record<string, unknown>;
  convnext: Record<string, unknown>;
  llm: Record<string, unknown>;
  image_size_aux: number;
  box_feat_size: number;
  adam: { lr: number; betas: [number, number]; eps: number; weight_decay: number; max_norm: number };
  trainable_pretrain?: string[];
}

/** The MG-LLaVA config the reference's e2e piece describes (DualPathFuse, single-level objects). */
export function e2eModelConfig(c: E2eConfig): MGLLaVAConfig {
  return {
    vision: clipVitConfigFromHf(c.vit),
    visionAux: convNextConfigFrom(c.convnext, { imageSize: c.image_size_aux }),
    fusion: { variant: 0, zeroInit: true },
    objects: { outputSize: c.box_feat_size, samplingRatio: -1, projectorDepth: 2, multiLevelDim: null },
    projectorDepth: 2,
    llm: fromHfConfig({ model_type: 'llama', ...c.llm }), // the manifest gives LlamaConfig fields without model_type
    lora: null,
  };
}

function boxesOf(piece: GoldenPiece, batch: number): Float32Array[] {
  return Array.from({ length: batch }, (_, i) => ioTensor(piece, `input.gt_boxes_${i}`).data as Float32Array);
}

export async function runE2e(piece: GoldenPiece): Promise<CheckResult[]> {
  const cfg = piece.config as unknown as E2eConfig;
  const model = new MGLLaVA(e2eModelConfig(cfg), { rng: new Rng(0), skipInit: true });
  const checks = new Checks();
  const fwd = (name: string, t: tf.Tensor, key = name) => checks.tensor(name, t, ioTensor(piece, key), piece.forward);
  try {
    loadWeights(model, piece.params, { origin: `${piece.name}.params` });
    const [pixels, pixelsAux] = tf.tidy(() => [
      nchwToNhwc(toTf(ioTensor(piece, 'input.pixel_values'))),
      nchwToNhwc(toTf(ioTensor(piece, 'input.pixel_values_aux'))),
    ]) as [tf.Tensor4D, tf.Tensor4D];
    const batch = pixels.shape[0];
    const text = {
      inputIds: ioTensor(piece, 'input.input_ids'),
      labels: ioTensor(piece, 'input.labels'),
      attentionMask: ioTensor(piece, 'input.attention_mask'),
    };
    const frozen = model.encodeFrozen(pixels, pixelsAux, boxesOf(piece, batch));

    // Forward, with every intermediate the golden stores.
    tf.tidy(() => {
      fwd('intermediate.vit_features', frozen.vit);
      fwd('intermediate.last_feat', nhwcToNchw(frozen.lastMap!));
      fwd('intermediate.concat', nhwcToNchw(model.visionAux!.apply(pixelsAux).concat!));
      fwd('intermediate.fused', model.fusion!.apply(frozen.vit, frozen.lastMap!));
      const visual = model.visualTokens(frozen);
      fwd('intermediate.image_tokens', visual.image);
      visual.objects!.forEach((t, i) => fwd(`intermediate.object_tokens_${i}`, t));
      const s = model.splice(text, visual);
      fwd('intermediate.inputs_embeds', s.inputsEmbeds);
      checks.push(compareExact('intermediate.labels', s.labels.data, ioTensor(piece, 'intermediate.labels')));
      checks.push(compareExact('intermediate.attention_mask', s.attentionMask.data, ioTensor(piece, 'intermediate.attention_mask')));
      checks.push(compareExact('intermediate.position_ids', s.positionIds.data, ioTensor(piece, 'intermediate.position_ids')));
      const { logits } = model.llm.forward({ inputsEmbeds: s.inputsEmbeds, attentionMask: s.attentionMask, positionIds: s.positionIds });
      fwd('output.logits', logits);
    });
    const lossOf = () => model.loss(frozen, text).loss;
    tf.tidy(() => fwd('output.loss', lossOf()));

    // Gradients of every finetune-trainable weight (fusion/projector grads are the same in pretrain).
    const sftVars = model.trainableWeights('finetune');
    const grads = namedGrads(lossOf, sftVars);
    for (const [name, g] of grads) checks.tensor(`grad.${name}`, g, ioTensor(piece, `grad.${name}`), piece.grads);
    const pretrainNames = [...model.trainableWeights('pretrain').keys()];
    if (cfg.trainable_pretrain) {
      const same = JSON.stringify([...pretrainNames].sort()) === JSON.stringify([...cfg.trainable_pretrain].sort());
      checks.push({ name: 'trainable set (pretrain)', ok: same, maxAbsErr: same ? 0 : 1, maxRelErr: 0, ...(same ? {} : { note: 'differs from config.trainable_pretrain' }) });
    }

    // One clipped AdamW step per mode, from the same starting weights. The optimizer is fed the golden
    // gradients: our own gradients are checked above, and Adam's first step (~lr*sign(g)) would turn
    // their 1e-6-relative differences on near-zero elements into large update differences.
    for (const mode of ['pretrain', 'sft'] as const) {
      const stage: Stage = mode === 'sft' ? 'finetune' : 'pretrain';
      const vars = model.trainableWeights(stage);
      const modeGrads = new Map([...vars.keys()].map((n) => [n, toTf(ioTensor(piece, `grad.${n}`))]));
      const clipped = await clipByGlobalNorm(modeGrads, cfg.adam.max_norm);
      checks.tensor(`${mode}.grad_norm`, clipped.norm, ioTensor(piece, `${mode}.grad_norm`), piece.forward);
      const ours = await clipByGlobalNorm(new Map([...vars.keys()].map((n) => [n, grads.get(n)!])), cfg.adam.max_norm);
      checks.tensor(`${mode}.grad_norm (our grads)`, ours.norm, ioTensor(piece, `${mode}.grad_norm`), piece.grads);
      const before = new Map([...vars].map(([n, v]) => [n, v.clone()]));
      const opt = new AdamW(vars, { betas: cfg.adam.betas, eps: cfg.adam.eps, weightDecay: cfg.adam.weight_decay });
      opt.apply(clipped.grads, cfg.adam.lr);
      for (const [n, v] of vars) {
        checks.tensor(`${mode}.updated.${n}`, v, ioTensor(piece, `${mode}.updated.${n}`), piece.forward);
        v.assign(before.get(n)!); // restore for the next mode
      }
      opt.dispose();
      for (const t of [...before.values(), ...modeGrads.values(), ...clipped.grads.values(), ...ours.grads.values()]) t.dispose();
    }
    for (const g of grads.values()) g.dispose();
    disposeFrozen(frozen);
    pixels.dispose();
    pixelsAux.dispose();
  } finally {
    model.dispose();
  }
  return await checks.results();
}
