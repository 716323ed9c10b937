/** Numeric comparison of our outputs with golden tensors (numpy `allclose` semantics). */
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

type Values = tf.Tensor | Float32Array | Int32Array | number[] | number;

function toArray(v: Values): { data: ArrayLike<number>; shape: number[] | null } {
  if (v instanceof tf.Tensor) return { data: v.dataSync(), shape: v.shape };
  if (typeof v === 'number') return { data: [v], shape: [] };
  return { data: v, shape: null };
}

/** Compare `actual` to `expected` elementwise: |a - e| <= atol + rtol * |e|. Shapes must agree. */
export function compareTensor(name: string, actual: Values, expected: HostTensor, tol: Tolerance): CheckResult {
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
export function compareExact(name: string, actual: Values, expected: HostTensor): CheckResult {
  return compareTensor(name, actual, expected, { atol: 0, rtol: 0 });
}
