/**
 * Small helpers over the project's seeded generator (`src/util/rng.ts`) for data/: independent sub-streams
 * (one per epoch, per synthetic image) and integer/choice draws. Math.random is never used in data/.
 */
import { Rng } from '../util/rng.js';

/**
 * Mix a seed with stream coordinates (epoch, split, index...) into one 32-bit seed, so each sub-stream is
 * independent: drawing more numbers in one never shifts another.
 */
export function deriveSeed(...parts: number[]): number {
  let h = 0x9e3779b9;
  for (const p of parts) {
    if (!Number.isInteger(p)) throw new Error(`deriveSeed: parts must be integers, got ${p}`);
    h = Math.imul(h ^ (p >>> 0), 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    h ^= h >>> 16;
  }
  return h >>> 0;
}

export function streamRng(...parts: number[]): Rng {
  return new Rng(deriveSeed(...parts));
}

/** Integer uniform in [lo, hi], both inclusive. */
export function intIn(rng: Rng, lo: number, hi: number): number {
  return lo + rng.int(hi - lo + 1);
}

export function pick<T>(rng: Rng, items: readonly T[]): T {
  if (items.length === 0) throw new Error('pick: empty list');
  return items[rng.int(items.length)]!;
}
