/**
 * Numeric comparison of our outputs with golden tensors (numpy `allclose` semantics). Runners collect their
 * comparisons in a `Checks` list, which reads the tensors asynchronously at the end: on webgpu a synchronous
 * read (`dataSync`) is impossible in Node.
 */
import * as tf from '@tensorflow/tfjs';
import type { HostTensor } from '../io/safetensors.js';

export interface Tolerance {
  atol: number;
  rtol: number;
}

export interface CheckResult {
  name: string;
  ok: boolean;
  maxAbsErr: number;
  /** max |a - e| / max |e| over the tensor (a scale-free summary; `ok` uses atol + rtol*|e| per element). */
  maxRelErr: number;
  note?: string;
}

/** Host values (a tensor goes through `Checks`, which reads it asynchronously). */
type HostValues = Float32Array | Int32Array | number[] | number;
type Values = tf.Tensor | HostValues;

function toArray(v: HostValues): { data: ArrayLike<number>; shape: number[] | null } {
  if (typeof v === 'number') return { data: [v], shape: [] };
  return { data: v, shape: null };
}

/** Compare host values `actual` to `expected` elementwise: |a - e| <= atol + rtol * |e|. Sizes must agree. */
export function compareTensor(name: string, actual: HostValues, expected: HostTensor, tol: Tolerance): CheckResult {
  const a = toArray(actual);
  const e = expected.data;
  if (a.shape && (a.shape.length !== expected.shape.length || a.shape.some((d, i) => d !== expected.shape[i]))) {
    return { name, ok: false, maxAbsErr: Infinity, maxRelErr: Infinity, note: `shape [${a.shape}] != golden [${expected.shape}]` };
  }
  if (a.data.length !== e.length) {
    return { name, ok: false, maxAbsErr: Infinity, maxRelErr: Infinity, note: `size ${a.data.length} != golden ${e.length}` };
  }
  let maxAbs = 0;
  let maxRef = 0;
  let ok = true;
  for (let i = 0; i < e.length; i++) {
    const ai = a.data[i]!;
    const ei = e[i]!;
    const d = Math.abs(ai - ei);
    if (!(d <= tol.atol + tol.rtol * Math.abs(ei))) ok = false; // NaN fails too
    if (!(d <= maxAbs)) maxAbs = d;
    maxRef = Math.max(maxRef, Math.abs(ei));
  }
  return { name, ok, maxAbsErr: maxAbs, maxRelErr: maxAbs / Math.max(maxRef, 1e-12) };
}

/** Integer tensors (ids, labels, masks) must match exactly. */
export function compareExact(name: string, actual: HostValues, expected: HostTensor): CheckResult {
  return compareTensor(name, actual, expected, { atol: 0, rtol: 0 });
}

interface PendingCheck {
  name: string;
  /** A clone kept alive until `results()` reads it (the original may be disposed or, for a variable, reassigned). */
  actual: tf.Tensor;
  expected: HostTensor;
  tol: Tolerance;
}

/**
 * The comparisons of one golden piece, in order. Tensors are cloned (no copy: the data is shared) and kept past
 * the caller's `tf.tidy`; `results()` reads them all with `await data()` and disposes the clones.
 */
export class Checks {
  private readonly items: (CheckResult | PendingCheck)[] = [];

  /** Compare a tensor (read later) or host values (now) with a golden tensor. */
  tensor(name: string, actual: Values, expected: HostTensor, tol: Tolerance): void {
    if (actual instanceof tf.Tensor) this.items.push({ name, actual: tf.keep(actual.clone()), expected, tol });
    else this.items.push(compareTensor(name, actual, expected, tol));
  }

  /** Integer tensors (ids, labels, masks): exact. */
  exact(name: string, actual: Values, expected: HostTensor): void {
    this.tensor(name, actual, expected, { atol: 0, rtol: 0 });
  }

  /** A result computed elsewhere (a structural check, a missing intermediate). */
  push(result: CheckResult): void {
    this.items.push(result);
  }

  /** Read every pending tensor, compare, and free the clones (also when a read fails). */
  async results(): Promise<CheckResult[]> {
    const out: CheckResult[] = [];
    try {
      for (const item of this.items) {
        if (!('actual' in item)) {
          out.push(item);
          continue;
        }
        const data = (await item.actual.data()) as Float32Array | Int32Array;
        const shapeOk = item.actual.shape.length === item.expected.shape.length && item.actual.shape.every((d, i) => d === item.expected.shape[i]);
        out.push(
          shapeOk
            ? compareTensor(item.name, data, item.expected, item.tol)
            : { name: item.name, ok: false, maxAbsErr: Infinity, maxRelErr: Infinity, note: `shape [${item.actual.shape}] != golden [${item.expected.shape}]` },
        );
      }
    } finally {
      this.dispose();
    }
    return out;
  }

  /** Free the kept tensors without reading them (a runner that throws). */
  dispose(): void {
    for (const item of this.items) if ('actual' in item) item.actual.dispose();
    this.items.length = 0;
  }
}
