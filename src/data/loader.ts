/**
 * Batches in sampler order, endlessly across epochs, loaded ahead of time.
 *
 * Cursor: `{epoch, position}` = the epoch and the number of its samples already handed out. Epoch orders
 * are recomputed from (seed, epoch), so a run that saves `loader.state()` with its checkpoint and passes it
 * back as `resume` continues with exactly the batches it would have seen. The state reflects batches
 * *returned by next()*, never those merely prefetched.
 *
 * Prefetch: up to `prefetch` batches are requested ahead of the one being consumed — every sample of them at
 * once, so that work which does not need the main thread (sharp decoding on libuv threads, or the whole
 * image pipeline on an ImageWorkerPool) keeps going while the training step holds the main thread; the
 * window (1 + prefetch batches) bounds memory. The last batch of an epoch is short unless `dropLast`.
 */
import type { Batch, Sample } from './collate.js';
import type { Sampler } from './sampler.js';

export interface LoaderState {
  epoch: number;
  position: number;
  /** Epoch size when saved: resuming with a different dataset is refused instead of silently misaligned. */
  size: number;
}

/** Samples by index; `S` is the trainer's `Sample` unless a stage loads something else (warm-up images). */
export interface SampleSource<S = Sample> {
  readonly size: number;
  get(index: number): Promise<S>;
}

export interface LoaderOptions<S = Sample, B = Batch> {
  source: SampleSource<S>;
  sampler: Sampler;
  batchSize: number;
  collate: (samples: S[]) => B;
  /** Batches loaded ahead of the consumer (default 2; 0 = load on demand). */
  prefetch?: number;
  dropLast?: boolean;
  resume?: LoaderState;
}

export interface LoadedBatch<B = Batch> {
  batch: B;
  epoch: number;
  /** Position in the epoch of the batch's first sample. */
  start: number;
}

interface Slot<B> {
  epoch: number;
  start: number;
  indices: number[];
  promise: Promise<B>;
}

export class DataLoader<S = Sample, B = Batch> {
  private readonly o: Required<Omit<LoaderOptions<S, B>, 'resume'>>;
  /** Where the consumer is. */
  private served: { epoch: number; position: number };
  /** Where the next slot to schedule starts. */
  private planned: { epoch: number; position: number };
  private readonly queue: Slot<B>[] = [];
  private readonly orders = new Map<number, number[]>();
  private closed = false;

  constructor(opts: LoaderOptions<S, B>) {
    this.o = { prefetch: 2, dropLast: false, ...opts } as Required<Omit<LoaderOptions<S, B>, 'resume'>>;
    const n = opts.sampler.size;
    if (n !== opts.source.size) throw new Error(`DataLoader: sampler covers ${n} samples but the dataset has ${opts.source.size}`);
    if (!Number.isInteger(opts.batchSize) || opts.batchSize < 1) throw new Error(`DataLoader: batchSize must be ≥ 1, got ${opts.batchSize}`);
    if (n === 0) throw new Error('DataLoader: empty dataset');
    if (this.o.dropLast && n < opts.batchSize) throw new Error(`DataLoader: ${n} samples < batch ${opts.batchSize} with dropLast: no batch at all`);
    const r = opts.resume ?? { epoch: 0, position: 0, size: n };
    if (r.size !== n) throw new Error(`DataLoader: cannot resume: the saved cursor is for ${r.size} samples per epoch, this dataset has ${n}`);
    if (!Number.isInteger(r.epoch) || r.epoch < 0 || !Number.isInteger(r.position) || r.position < 0 || r.position > n) {
      throw new Error(`DataLoader: invalid resume cursor ${JSON.stringify(r)}`);
    }
    this.served = this.normalize(r.epoch, r.position);
    this.planned = { ...this.served };
  }

  /** Batches per epoch. */
  get batchesPerEpoch(): number {
    const n = this.o.sampler.size;
    return this.o.dropLast ? Math.floor(n / this.o.batchSize) : Math.ceil(n / this.o.batchSize);
  }

  /** The cursor to save: resuming from it yields the batch after the last one returned. */
  state(): LoaderState {
    return { epoch: this.served.epoch, position: this.served.position, size: this.o.sampler.size };
  }

  async next(): Promise<LoadedBatch<B>> {
    if (this.closed) throw new Error('DataLoader: next() after close()');
    this.fill(1);
    const slot = this.queue.shift()!;
    this.fill(this.o.prefetch); // batches after this one load while the caller works on it
    const batch = await slot.promise;
    this.served = this.normalize(slot.epoch, slot.start + slot.indices.length);
    return { batch, epoch: slot.epoch, start: slot.start };
  }

  /** Stop prefetching and wait for loads in flight (their results are dropped). */
  async close(): Promise<void> {
    this.closed = true;
    const pending = this.queue.splice(0).map((s) => s.promise.catch(() => undefined));
    await Promise.all(pending);
  }

  private normalize(epoch: number, position: number): { epoch: number; position: number } {
    const n = this.o.sampler.size;
    const usable = this.o.dropLast ? n - (n % this.o.batchSize) : n;
    return position >= usable ? { epoch: epoch + 1, position: 0 } : { epoch, position };
  }

  private order(epoch: number): number[] {
    let o = this.orders.get(epoch);
    if (!o) {
      o = this.o.sampler.epochOrder(epoch);
      if (o.length !== this.o.sampler.size) throw new Error(`sampler ${this.o.sampler.describe()} returned ${o.length} indices`);
      this.orders.set(epoch, o);
      for (const e of this.orders.keys()) if (e < epoch - 1) this.orders.delete(e);
    }
    return o;
  }

  private fill(depth: number): void {
    while (this.queue.length < depth) {
      const { epoch, position } = this.planned;
      const indices = this.order(epoch).slice(position, position + this.o.batchSize);
      const promise = Promise.all(indices.map((i) => this.o.source.get(i))).then((samples) => this.o.collate(samples));
      promise.catch(() => undefined); // surfaced by next(); avoid an unhandled rejection while it waits in the queue
      this.queue.push({ epoch, start: position, indices, promise });
      this.planned = this.normalize(epoch, position + indices.length);
    }
  }
}
