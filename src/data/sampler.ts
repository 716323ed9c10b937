/**
 * Sample orders per epoch. Every order is a pure function of (seed, epoch), so a resumed run recomputes the
 * order of its epoch and continues from a position (loader.ts) — no generator state needs saving.
 *
 * - `SequentialSampler`: 0..n-1 (evaluation).
 * - `ShuffleSampler`: a fresh random permutation each epoch (pretraining).
 * - `LengthGroupedSampler`: the finetuning order of xtuner's LengthGroupedSampler (REFERENCE §j): samples
 *   of similar length end up in the same batch, and batches do not mix image and text-only samples.
 */
import { streamRng } from './random.js';

export interface Sampler {
  /** Number of samples per epoch. */
  readonly size: number;
  /** A permutation of 0..size-1. */
  epochOrder(epoch: number): number[];
  /** For resume checks and logs. */
  describe(): string;
}

export class SequentialSampler implements Sampler {
  constructor(readonly size: number) {}
  epochOrder(): number[] {
    return Array.from({ length: this.size }, (_, i) => i);
  }
  describe(): string {
    return `sequential(${this.size})`;
  }
}

export class ShuffleSampler implements Sampler {
  constructor(
    readonly size: number,
    readonly seed: number,
  ) {}
  epochOrder(epoch: number): number[] {
    return streamRng(this.seed, epoch, 0x5eed).shuffle(Array.from({ length: this.size }, (_, i) => i));
  }
  describe(): string {
    return `shuffle(${this.size}, seed ${this.seed})`;
  }
}

export interface LengthGroupedOptions {
  /**
   * Per-sample `modality_length`: the token count, negative for text-only samples (never 0). The reference
   * uses the length of the tokenized text (input_ids), without the visual tokens.
   */
  lengths: readonly number[];
  /** Samples per optimizer batch (per-device batch × devices in the reference). */
  batchSize: number;
  seed: number;
  /** Batches per "megabatch" (default: min(n / (4·batch), 50), at least 1 — xtuner's default). */
  megaBatchMult?: number;
}

/**
 * The idea of xtuner's length-grouped order, per epoch:
 *  1. split the samples by modality (image: length > 0, text-only: length < 0);
 *  2. within each modality, shuffle and cut into megabatches of `megaBatchMult × batchSize` samples, each
 *     sorted by length, longest first — so consecutive batches inside a megabatch have similar lengths;
 *  3. shuffle the full megabatches of both modalities together; the two leftover (partial) megabatches are
 *     merged, sorted by |length|, and go last (the only place where modalities can share a batch).
 * With a single modality, step 3 is skipped and the megabatches keep their shuffled order.
 */
export class LengthGroupedSampler implements Sampler {
  readonly size: number;
  readonly groupSize: number;
  private readonly lengths: readonly number[];
  private readonly seed: number;

  constructor(o: LengthGroupedOptions) {
    this.lengths = o.lengths;
    this.size = o.lengths.length;
    this.seed = o.seed;
    if (!Number.isInteger(o.batchSize) || o.batchSize < 1) throw new Error(`LengthGroupedSampler: batchSize must be ≥ 1, got ${o.batchSize}`);
    const zero = o.lengths.findIndex((l) => l === 0 || !Number.isFinite(l));
    if (zero >= 0) throw new Error(`LengthGroupedSampler: sample ${zero} has length ${o.lengths[zero]} (must be non-zero: negative = text-only)`);
    const mult = o.megaBatchMult ?? Math.max(1, Math.min(Math.floor(this.size / (o.batchSize * 4)), 50));
    this.groupSize = mult * o.batchSize;
  }

  describe(): string {
    return `length-grouped(${this.size}, group ${this.groupSize}, seed ${this.seed})`;
  }

  epochOrder(epoch: number): number[] {
    const rng = streamRng(this.seed, epoch, 0x1e9);
    const len = (i: number) => Math.abs(this.lengths[i]!);
    const megabatches = (indices: number[]): number[][] => {
      rng.shuffle(indices);
      const out: number[][] = [];
      for (let i = 0; i < indices.length; i += this.groupSize) {
        // Longest first; equal lengths keep their shuffled order (Array.prototype.sort is stable).
        out.push(indices.slice(i, i + this.groupSize).sort((a, b) => len(b) - len(a)));
      }
      return out;
    };
    const all = Array.from({ length: this.size }, (_, i) => i);
    const image = all.filter((i) => this.lengths[i]! > 0);
    const text = all.filter((i) => this.lengths[i]! < 0);
    if (image.length === 0 || text.length === 0) return megabatches(all).flat();

    const imageGroups = megabatches(image);
    const textGroups = megabatches(text);
    const tail = [...imageGroups.pop()!, ...textGroups.pop()!].sort((a, b) => len(b) - len(a));
    const full = rng.shuffle([...imageGroups, ...textGroups]);
    return [...full.flat(), ...tail];
  }
}
