/**
 * Choosing the next token from one row of logits, on the host: greedy (argmax) or temperature + nucleus
 * (top-p) sampling with a seeded `Rng`, so a seed reproduces a generation exactly.
 *
 * Only the first `allowed` ids are candidates: a model's vocabulary may be larger than its tokenizer's
 * (padded embedding tables, or an untrained tiny model) and an id the tokenizer cannot decode must never be
 * produced.
 */
import type { Rng } from '../util/rng.js';

export interface SamplingOptions {
  /** 0 = greedy (default). Logits are divided by it before the softmax. */
  temperature?: number;
  /** Nucleus mass in (0, 1]: sample among the most likely ids whose probabilities sum to at least topP. */
  topP?: number;
  /** Required when temperature > 0. */
  rng?: Rng;
}

export function checkSampling(o: SamplingOptions): void {
  const t = o.temperature ?? 0;
  const p = o.topP ?? 1;
  if (!(Number.isFinite(t) && t >= 0)) throw new Error(`sampling: temperature must be a finite number >= 0, got ${t}`);
  if (!(p > 0 && p <= 1)) throw new Error(`sampling: top-p must be in (0, 1], got ${p}`);
  if (t > 0 && !o.rng) throw new Error('sampling: temperature > 0 needs a seeded rng');
}

/** Index of the largest value among the first `n` (the first one on ties). */
export function argmax(row: ArrayLike<number>, n = row.length): number {
  let best = 0;
  let bestV = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = row[i]!;
    if (v > bestV) {
      bestV = v;
      best = i;
    }
  }
  return best;
}

/** The next token id for one logits row. */
export function chooseToken(row: ArrayLike<number>, allowed: number, o: SamplingOptions): number {
  const t = o.temperature ?? 0;
  if (t === 0) return argmax(row, allowed);
  const topP = o.topP ?? 1;
  const max = row[argmax(row, allowed)]!;
  // Softmax of logits / t, unnormalised (max subtracted: exp never overflows).
  const probs = new Float64Array(allowed);
  let sum = 0;
  for (let i = 0; i < allowed; i++) {
    const e = Math.exp((row[i]! - max) / t);
    probs[i] = e;
    sum += e;
  }
  // Descending by probability, ties by id: a deterministic order for the nucleus and the draw.
  const order = Array.from({ length: allowed }, (_, i) => i).sort((a, b) => probs[b]! - probs[a]! || a - b);
  let keep = allowed;
  if (topP < 1) {
    let mass = 0;
    for (let k = 0; k < allowed; k++) {
      mass += probs[order[k]!]! / sum;
      if (mass >= topP) {
        keep = k + 1;
        break;
      }
    }
  }
  let kept = 0;
  for (let k = 0; k < keep; k++) kept += probs[order[k]!]!;
  let u = o.rng!.next() * kept;
  for (let k = 0; k < keep; k++) {
    u -= probs[order[k]!]!;
    if (u < 0) return order[k]!;
  }
  return order[keep - 1]!; // u landed on the rounding remainder
}
