import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { ADAMW_KERNEL } from '../src/backend/kernels/adamw.js';
import { adamwComposite, adamwUpdate, type AdamWStep } from '../src/nn/adamw-update.js';

const onWasm = process.env.MGLLAVA_BACKEND == null || process.env.MGLLAVA_BACKEND === 'wasm';

function step(t: number, lr: number, wd: number, gradScale?: number): AdamWStep {
  const [b1, b2] = [0.9, 0.999];
  return { beta1: b1, beta2: b2, bc2Sqrt: Math.sqrt(1 - b2 ** t), eps: 1e-8, stepSize: lr / (1 - b1 ** t), decay: 1 - lr * wd, gradScale };
}

describe.runIf(onWasm)('wasm kernel pack: MgllavaAdamW', () => {
  it('is registered for wasm', () => {
    expect(tf.getKernel(ADAMW_KERNEL, 'wasm')).toBeDefined();
  });

  for (const n of [1, 3, 4, 7, 1000, 4099]) {
    it(`is bit-identical to the tfjs composite over 3 steps (${n} elements, with and without weight decay, gradient scale)`, () => {
      for (const [wd, scale] of [[0, undefined], [0.1, undefined], [0, 0.37]] as const) {
        const before = tf.memory().numTensors;
        const init = () => tf.randomNormal([n], 0, 1, 'float32', 1);
        let [pk, mk, vk] = [init(), tf.zeros([n]), tf.zeros([n])];
        let [pc, mc, vc] = [init(), tf.zeros([n]), tf.zeros([n])];
        for (let t = 1; t <= 3; t++) {
          // gradients with tiny and zero entries, like real ones
          const g = tf.tidy(() => tf.mul(tf.randomNormal([n], 0, 1, 'float32', 10 + t), tf.randomUniform([n], 0, t === 2 ? 1e-6 : 1, 'float32', 20 + t)));
          const k = adamwUpdate(pk, mk, vk, g, step(t, 1e-3, wd, scale));
          const c = adamwComposite(pc, mc, vc, g, step(t, 1e-3, wd, scale));
          tf.dispose([pk, mk, vk, pc, mc, vc, g]);
          [pk, mk, vk] = [k.p, k.m, k.v];
          [pc, mc, vc] = [c.p, c.m, c.v];
          for (const [a, b] of [[pk, pc], [mk, mc], [vk, vc]] as const) expect(Array.from(a.dataSync())).toEqual(Array.from(b.dataSync()));
        }
        tf.dispose([pk, mk, vk, pc, mc, vc]);
        expect(tf.memory().numTensors).toBe(before);
      }
    });
  }

  it('rejects moments of another size', () => {
    const [p, m] = [tf.zeros([4]), tf.zeros([5])];
    expect(() => adamwUpdate(p, m, p, p, step(1, 1e-3, 0))).toThrow(/m must be float32 of 4 elements/);
    tf.dispose([p, m]);
  });
});
