/**
 * Golden runner for `fuse_v0` .. `fuse_v3`: ConvGateFusion built from the piece's config, forward with
 * the intermediates, and gradients of sum(out * loss_weight) w.r.t. every parameter and both inputs.
 * `input.high` is NCHW in the file; the module takes NHWC.
 */
import * as tf from '@tensorflow/tfjs';
import type { GoldenPiece } from '../manifest.js';
import { ioTensor } from '../manifest.js';
import { Checks, type CheckResult } from '../compare.js';
import { toTf } from '../../io/host-tensor.js';
import { loadWeights } from '../../nn/module.js';
import { nchwToNhwc, nhwcToNchw } from '../../nn/conv.js';
import { Rng } from '../../util/rng.js';
import { ConvGateFusion, type FusionVariant } from '../../model/fusion.js';
import { namedGrads } from './variable-grads.js';

const PREFIX = 'fuse_module.';

function configInt(piece: GoldenPiece, key: string): number {
  const v = piece.config[key];
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new Error(`piece '${piece.name}': config.${key} must be an integer, got ${JSON.stringify(v)}`);
  return v;
}

export async function runFusion(piece: GoldenPiece): Promise<CheckResult[]> {
  const variant = configInt(piece, 'variant') as FusionVariant;
  const fusion = new ConvGateFusion(
    { lowDim: configInt(piece, 'low_dim'), highDim: configInt(piece, 'high_dim'), variant, zeroInit: true },
    { rng: new Rng(0), skipInit: true },
  );
  const low = tf.tidy(() => tf.variable(toTf(ioTensor(piece, 'input.low'))));
  const high = tf.tidy(() => tf.variable(nchwToNhwc(toTf(ioTensor(piece, 'input.high'))))); // [B,H,W,C]
  const lossWeight = toTf(ioTensor(piece, 'input.loss_weight'));
  const checks = new Checks();
  try {
    loadWeights(fusion, piece.params, { prefix: PREFIX, origin: `${piece.name}.params` });
    const grid = configInt(piece, 'grid');
    if (high.shape[1] !== grid || high.shape[2] !== grid) throw new Error(`piece '${piece.name}': input.high is not ${grid}x${grid}`);

    tf.tidy(() => {
      const r = fusion.forward(low as tf.Tensor3D, high as tf.Tensor4D);
      checks.tensor('output.out', r.out, ioTensor(piece, 'output.out'), piece.forward);
      const inter: [string, tf.Tensor | null][] = [['hi', r.hi], ['lo', r.lo], ['gate_tanh', r.gateTanh]];
      for (const [key, t] of inter) {
        const golden = piece.io.get(`intermediate.${key}`);
        if (!golden) continue;
        if (t) checks.tensor(`intermediate.${key}`, t, golden, piece.forward);
        else checks.push({ name: `intermediate.${key}`, ok: false, maxAbsErr: Infinity, maxRelErr: Infinity, note: `variant ${variant} has no ${key}` });
      }
    });

    const vars = new Map<string, tf.Variable>(fusion.weightMap(PREFIX));
    vars.set('input.low', low);
    vars.set('input.high', high);
    const grads = namedGrads(() => tf.tidy(() => tf.sum(tf.mul(fusion.apply(low as tf.Tensor3D, high as tf.Tensor4D), lossWeight))) as tf.Scalar, vars);
    for (const [name, g] of grads) {
      tf.tidy(() => {
        const key = name.startsWith('input.') ? `grad_input.${name.slice(6)}` : `grad.${name}`;
        const actual = name === 'input.high' ? nhwcToNchw(g) : g;
        checks.tensor(key, actual, ioTensor(piece, key), piece.grads);
      });
      g.dispose();
    }
  } finally {
    fusion.dispose();
    low.dispose();
    high.dispose();
    lossWeight.dispose();
  }
  return await checks.results();
}
