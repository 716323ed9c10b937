/** Golden runner for `projector`: forward + grads of params and input for loss sum(y * loss_weight). */
import * as tf from '@tensorflow/tfjs';
import { Checks, type CheckResult } from '../compare.js';
import { ioTensor, type GoldenPiece } from '../manifest.js';
import { loadWeights } from '../../nn/module.js';
import { toTf } from '../../io/host-tensor.js';
import { Rng } from '../../util/rng.js';
import { Projector, projectorConfigFrom } from '../../model/projector.js';
import { namedGrads } from './variable-grads.js';

/** The checkpoint prefix of the projector in the piece's params (`projector.` or `bbox_projector.`). */
function projectorPrefix(piece: GoldenPiece): string {
  const keys = [...piece.params.keys()];
  const prefixes = new Set(keys.map((k) => k.slice(0, k.indexOf('model.'))));
  if (prefixes.size !== 1 || keys.some((k) => !k.includes('model.'))) {
    throw new Error(`golden piece '${piece.name}': expected params '<prefix>model.N.*', got ${keys.join(', ')}`);
  }
  return [...prefixes][0]!;
}

export async function runProjector(piece: GoldenPiece): Promise<CheckResult[]> {
  const prefix = projectorPrefix(piece);
  const model = new Projector(projectorConfigFrom(piece.config), { rng: new Rng(0), skipInit: true });
  const x = tf.tidy(() => tf.variable(toTf(ioTensor(piece, 'input.x')))); // [..., in]
  const lossWeight = toTf(ioTensor(piece, 'input.loss_weight')); // [..., out]
  const checks = new Checks();
  try {
    loadWeights(model, piece.params, { prefix, origin: `golden '${piece.name}' params` });
    tf.tidy(() => {
      checks.tensor('output.y', model.apply(x), ioTensor(piece, 'output.y'), piece.forward);
    });
    const vars = new Map<string, tf.Variable>(model.weightMap(prefix));
    vars.set('input.x', x);
    const grads = namedGrads(() => tf.tidy(() => tf.sum(tf.mul(model.apply(x), lossWeight))) as tf.Scalar, vars);
    for (const [name, g] of grads) {
      const key = name.startsWith('input.') ? `grad_input.${name.slice('input.'.length)}` : `grad.${name}`;
      checks.tensor(key, g, ioTensor(piece, key), piece.grads);
      g.dispose();
    }
  } finally {
    model.dispose();
    x.dispose();
    lossWeight.dispose();
  }
  return await checks.results();
}
