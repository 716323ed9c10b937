/**
 * Parameter initialisers, PyTorch's conventions (the reference's defaults), drawn from a seeded Rng.
 * Each returns the values for a parameter of `shape` in checkpoint layout.
 */
import type { Rng } from '../util/rng.js';

export type Initializer =
  | { kind: 'zeros' }
  | { kind: 'ones' }
  | { kind: 'constant'; value: number }
  | { kind: 'uniform'; bound: number }
  | { kind: 'normal'; std: number }
  /** PyTorch nn.Linear / nn.Conv default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform a=sqrt(5)). */
  | { kind: 'torchDefault'; fanIn: number }
  /** xavier_uniform on a PyTorch-layout weight ([out, in, ...kernel]). */
  | { kind: 'xavierUniform' };

export const zeros: Initializer = { kind: 'zeros' };
export const ones: Initializer = { kind: 'ones' };

/** fan_in / fan_out of a PyTorch-layout weight [out, in, ...kernel]. */
export function fans(shape: number[]): { fanIn: number; fanOut: number } {
  const receptive = shape.slice(2).reduce((a, b) => a * b, 1);
  return { fanIn: (shape[1] ?? 1) * receptive, fanOut: (shape[0] ?? 1) * receptive };
}

export function initValues(init: Initializer, shape: number[], rng: Rng): Float32Array {
  const n = shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  switch (init.kind) {
    case 'zeros':
      return out;
    case 'ones':
      return out.fill(1);
    case 'constant':
      return out.fill(init.value);
    case 'normal':
      for (let i = 0; i < n; i++) out[i] = rng.normal() * init.std;
      return out;
    case 'uniform':
    case 'torchDefault':
    case 'xavierUniform': {
      let bound: number;
      if (init.kind === 'uniform') bound = init.bound;
      else if (init.kind === 'torchDefault') bound = init.fanIn > 0 ? 1 / Math.sqrt(init.fanIn) : 0;
      else {
        const { fanIn, fanOut } = fans(shape);
        bound = Math.sqrt(6 / (fanIn + fanOut));
      }
      for (let i = 0; i < n; i++) out[i] = (2 * rng.next() - 1) * bound;
      return out;
    }
  }
}
