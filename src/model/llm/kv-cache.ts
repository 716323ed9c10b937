/**
 * Key/value cache for incremental decoding. Per layer it holds the keys (after RoPE) and values of every
 * position seen so far, `[B, kvHeads, S, hd]`; on the host it holds which of those positions are real
 * (their attention-mask bit) and, per row, how many real tokens came before (the next default position id).
 *
 * A forward pass with a cache appends its T new positions to every layer and then `commit`s their mask.
 * The cached tensors are kept outside any `tidy`; `dispose()` frees them. Inference only: gradients do not
 * flow through cached keys/values of earlier calls.
 */
import * as tf from '@tensorflow/tfjs';
import type { IntMatrix } from './int-matrix.js';

export class KvCache {
  private readonly keys: (tf.Tensor4D | null)[];
  private readonly values: (tf.Tensor4D | null)[];
  /** [B, S] 0/1 for the cached positions (row-major, grown on commit). */
  private mask: Uint8Array = new Uint8Array(0);
  private batch = 0;
  private cached = 0;
  /** Per row: real tokens seen so far = the position id the next real token gets by default. */
  private next: Int32Array = new Int32Array(0);

  constructor(readonly numLayers: number) {
    this.keys = new Array<tf.Tensor4D | null>(numLayers).fill(null);
    this.values = new Array<tf.Tensor4D | null>(numLayers).fill(null);
  }

  /** Number of cached positions S. */
  get length(): number {
    return this.cached;
  }

  /** Batch size fixed by the first forward (0 while empty). */
  get batchSize(): number {
    return this.batch;
  }

  /** Check that T new positions of a batch of `b` rows can be appended. */
  checkBatch(b: number): void {
    if (this.cached > 0 && b !== this.batch) {
      throw new Error(`KvCache: batch size ${b} does not match the cached batch ${this.batch}`);
    }
  }

  /** The mask bit of cached position s in row b. */
  keyIsReal(b: number, s: number): boolean {
    return this.mask[b * this.cached + s] === 1;
  }

  /** The default position id of the next real token of row b. */
  nextPosition(b: number): number {
    return this.cached === 0 ? 0 : this.next[b]!;
  }

  /**
   * Append layer `layer`'s new keys/values `[B, kvH, T, hd]` and return the full ones `[B, kvH, S+T, hd]`.
   * Call inside the forward's tidy: the stored tensors are kept, the previous ones disposed.
   */
  append(layer: number, k: tf.Tensor4D, v: tf.Tensor4D): { k: tf.Tensor4D; v: tf.Tensor4D } {
    const oldK = this.keys[layer];
    const oldV = this.values[layer];
    if ((oldK === null) !== (this.cached === 0)) throw new Error(`KvCache: layer ${layer} is out of step with the cache`);
    const fullK = oldK ? tf.concat([oldK, k], 2) : k.clone();
    const fullV = oldV ? tf.concat([oldV, v], 2) : v.clone();
    this.keys[layer] = tf.keep(fullK);
    this.values[layer] = tf.keep(fullV);
    oldK?.dispose();
    oldV?.dispose();
    return { k: fullK, v: fullV };
  }

  /** Record the T new positions' mask [B, T] after every layer has appended. */
  commit(newMask: IntMatrix): void {
    const [b, t] = newMask.shape;
    this.checkBatch(b);
    const s = this.cached;
    const mask = new Uint8Array(b * (s + t));
    const next = this.cached === 0 ? new Int32Array(b) : this.next;
    for (let r = 0; r < b; r++) {
      if (s) mask.set(this.mask.subarray(r * s, r * s + s), r * (s + t));
      for (let i = 0; i < t; i++) {
        const real = newMask.data[r * t + i] !== 0;
        mask[r * (s + t) + s + i] = real ? 1 : 0;
        if (real) next[r] = next[r]! + 1;
      }
    }
    this.mask = mask;
    this.next = next;
    this.batch = b;
    this.cached = s + t;
  }

  /** Free the cached tensors and forget everything. */
  dispose(): void {
    for (let i = 0; i < this.numLayers; i++) {
      this.keys[i]?.dispose();
      this.values[i]?.dispose();
      this.keys[i] = null;
      this.values[i] = null;
    }
    this.mask = new Uint8Array(0);
    this.next = new Int32Array(0);
    this.batch = 0;
    this.cached = 0;
  }
}
