/**
 * Golden runner for `clip_vit`: every hidden state and the selected features (no gradients: the tower
 * is frozen). The features are also checked on the default path, which stops at the selected layer.
 */
import * as tf from '@tensorflow/tfjs';
import { Checks, type CheckResult } from '../compare.js';
import { ioTensor, type GoldenPiece } from '../manifest.js';
import { loadWeights } from '../../nn/module.js';
import { nchwToNhwc } from '../../nn/conv.js';
import { toTf } from '../../io/host-tensor.js';
import { Rng } from '../../util/rng.js';
import { ClipVit, clipVitConfigFromHf } from '../../model/vision/clip-vit.js';

export async function runClipVit(piece: GoldenPiece): Promise<CheckResult[]> {
  const model = new ClipVit(clipVitConfigFromHf(piece.config), { rng: new Rng(0), skipInit: true });
  try {
    loadWeights(model, piece.params, { origin: `golden '${piece.name}' params` });
    const checks = new Checks();
    tf.tidy(() => {
      const pixels = nchwToNhwc(toTf(ioTensor(piece, 'input.pixel_values'))); // [B,S,S,C]
      const all = model.apply(pixels, { outputHiddenStates: true });
      const states = all.hiddenStates!;
      const goldenStates = [...piece.io.keys()].filter((k) => k.startsWith('output.hidden_states.'));
      if (goldenStates.length !== states.length) {
        throw new Error(`golden piece '${piece.name}': ${goldenStates.length} hidden states in the file, model has ${states.length}`);
      }
      states.forEach((h, i) => checks.tensor(`output.hidden_states.${i}`, h, ioTensor(piece, `output.hidden_states.${i}`), piece.forward));
      const expected = ioTensor(piece, 'output.features');
      checks.tensor('output.features', all.features, expected, piece.forward);
      checks.tensor('output.features (stop at selected layer)', model.apply(pixels).features, expected, piece.forward);
    });
    return await checks.results();
  } finally {
    model.dispose();
  }
}
