/** Golden runner for `convnext`: the four stage maps and the 4-stage concat map (NCHW in the file). */
import * as tf from '@tensorflow/tfjs';
import { Checks, type CheckResult } from '../compare.js';
import { ioTensor, type GoldenPiece } from '../manifest.js';
import { loadWeights } from '../../nn/module.js';
import { nchwToNhwc, nhwcToNchw } from '../../nn/conv.js';
import { toTf } from '../../io/host-tensor.js';
import { Rng } from '../../util/rng.js';
import { ConvNext, convNextConfigFrom } from '../../model/vision/convnext.js';

export async function runConvNext(piece: GoldenPiece): Promise<CheckResult[]> {
  const model = new ConvNext(convNextConfigFrom(piece.config), { rng: new Rng(0), skipInit: true });
  try {
    loadWeights(model, piece.params, { origin: `golden '${piece.name}' params` });
    const checks = new Checks();
    tf.tidy(() => {
      const pixels = nchwToNhwc(toTf(ioTensor(piece, 'input.pixel_values'))); // [B,S,S,C]
      const out = model.apply(pixels, { concat: true });
      out.stages.forEach((s, i) => checks.tensor(`output.stage_${i}`, nhwcToNchw(s), ioTensor(piece, `output.stage_${i}`), piece.forward));
      checks.tensor('output.concat', nhwcToNchw(out.concat!), ioTensor(piece, 'output.concat'), piece.forward);
    });
    return await checks.results();
  } finally {
    model.dispose();
  }
}
