import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { collate, type Sample } from '../src/data/collate.js';
import { loadDataset } from '../src/data/dataset.js';
import { ImageWorkerPool } from '../src/data/image-pool.js';
import { ImageError, prepareImage } from '../src/data/image.js';
import { DataLoader, type LoaderState, type SampleSource } from '../src/data/loader.js';
import { LengthGroupedSampler, SequentialSampler, ShuffleSampler } from '../src/data/sampler.js';
import { synthDataset } from '../src/data/synth.js';
import { getTemplate } from '../src/data/templates.js';
import { loadTokenizer } from '../src/data/tokenizer.js';

const S = 4; // aux size of the fake samples
const L = 2; // low-res size

function fakeSample(index: number, hasImage = index % 3 !== 0): Sample {
  const n = 3 + (index % 4);
  return {
    index,
    id: `s${index}`,
    inputIds: Int32Array.from({ length: n }, (_, i) => (i === 1 && hasImage ? -200 : 10 + index)),
    labels: Int32Array.from({ length: n }, (_, i) => (i === n - 1 ? 10 + index : -100)),
    hasImage,
    aux: hasImage ? new Float32Array(S * S * 3).fill(index) : null,
    lowres: hasImage ? new Float32Array(L * L * 3).fill(-index) : null,
    boxes: Float32Array.from({ length: 4 * (1 + (index % 2)) }, (_, i) => i),
    boxLabels: [],
  };
}

/** Records every request; resolves after `delayMs` (optionally failing one index). */
class FakeSource implements SampleSource {
  readonly requested: number[] = [];
  constructor(
    readonly size: number,
    private readonly delayMs = 0,
    private readonly failAt: number | null = null,
  ) {}
  async get(index: number): Promise<Sample> {
    this.requested.push(index);
    await new Promise((r) => setTimeout(r, this.delayMs));
    if (index === this.failAt) throw new Error(`image of sample ${index} is unreadable`);
    return fakeSample(index);
  }
}

const collateFn = (s: Sample[]) => collate(s, { padId: 0, auxSize: S, lowresSize: L });
const isPermutation = (o: number[], n: number) => [...o].sort((a, b) => a - b).every((v, i) => v === i) && o.length === n;

describe('samplers', () => {
  it('shuffle: a permutation that depends only on (seed, epoch)', () => {
    const s = new ShuffleSampler(50, 7);
    const e0 = s.epochOrder(0);
    expect(isPermutation(e0, 50)).toBe(true);
    expect(new ShuffleSampler(50, 7).epochOrder(0)).toEqual(e0);
    expect(s.epochOrder(1)).not.toEqual(e0);
    expect(new ShuffleSampler(50, 8).epochOrder(0)).not.toEqual(e0);
    expect(new SequentialSampler(3).epochOrder()).toEqual([0, 1, 2]);
  });

  it('length-grouped: single-modality batches sorted longest first inside megabatches, mixed tail last', () => {
    const n = 103;
    // image samples: positive lengths; every 4th sample text-only (negative)
    const lengths = Array.from({ length: n }, (_, i) => (i % 4 === 0 ? -1 : 1) * (5 + ((i * 37) % 61)));
    const batch = 4;
    const s = new LengthGroupedSampler({ lengths, batchSize: batch, seed: 3 });
    expect(s.groupSize).toBe(Math.min(Math.floor(n / (batch * 4)), 50) * batch); // 6 × 4
    const order = s.epochOrder(0);
    expect(isPermutation(order, n)).toBe(true);
    expect(new LengthGroupedSampler({ lengths, batchSize: batch, seed: 3 }).epochOrder(0)).toEqual(order);
    expect(s.epochOrder(1)).not.toEqual(order);

    const nImage = lengths.filter((l) => l > 0).length;
    const nText = n - nImage;
    const tail = (nImage % s.groupSize || s.groupSize) + (nText % s.groupSize || s.groupSize);
    const head = order.slice(0, n - tail);
    // every full megabatch is one modality, sorted by length, longest first
    for (let g = 0; g < head.length; g += s.groupSize) {
      const group = head.slice(g, g + s.groupSize);
      const signs = new Set(group.map((i) => Math.sign(lengths[i]!)));
      expect(signs.size).toBe(1);
      const ls = group.map((i) => Math.abs(lengths[i]!));
      expect(ls).toEqual([...ls].sort((a, b) => b - a));
    }
    const t = order.slice(n - tail).map((i) => Math.abs(lengths[i]!));
    expect(t).toEqual([...t].sort((a, b) => b - a));
    expect(() => new LengthGroupedSampler({ lengths: [3, 0, -2], batchSize: 1, seed: 0 })).toThrow(/sample 1 has length 0/);
    // one modality only: megabatches in shuffled order, each sorted
    const only = new LengthGroupedSampler({ lengths: lengths.map(Math.abs), batchSize: batch, seed: 1 }).epochOrder(0);
    expect(isPermutation(only, n)).toBe(true);
  });
});

describe('collate', () => {
  it('right-pads text, masks padding, stacks NHWC images (zeros for text-only), keeps boxes per sample', () => {
    const b = collateFn([fakeSample(1), fakeSample(7), fakeSample(0)]); // lengths 4, 6, 3; sample 0 text-only
    expect([b.size, b.seqLen]).toEqual([3, 6]);
    expect([...b.lengths]).toEqual([4, 6, 3]);
    expect([...b.inputIds.subarray(0, 6)]).toEqual([11, -200, 11, 11, 0, 0]);
    expect([...b.labels.subarray(0, 6)]).toEqual([-100, -100, -100, 11, -100, -100]);
    expect([...b.attentionMask]).toEqual([1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]);
    expect(b.hasImage).toEqual([true, true, false]);
    expect(b.aux.length).toBe(3 * S * S * 3);
    expect(b.aux[0]).toBe(1);
    expect(b.aux[S * S * 3]).toBe(7);
    expect(b.aux.subarray(2 * S * S * 3).every((v) => v === 0)).toBe(true);
    expect(b.lowres[L * L * 3]).toBe(-7);
    expect(b.boxes.map((x) => x.length)).toEqual([8, 8, 4]);
    expect(() => collateFn([])).toThrow(/empty batch/);
  });
});

describe('DataLoader', () => {
  async function take(loader: DataLoader, k: number): Promise<number[][]> {
    const out: number[][] = [];
    for (let i = 0; i < k; i++) out.push((await loader.next()).batch.indices);
    return out;
  }

  it('yields batches in sampler order across epochs, last batch short (or dropped)', async () => {
    const sampler = new ShuffleSampler(10, 1);
    const loader = new DataLoader({ source: new FakeSource(10), sampler, batchSize: 4, collate: collateFn });
    expect(loader.batchesPerEpoch).toBe(3);
    const got = await take(loader, 6);
    expect(got.slice(0, 3).flat()).toEqual(sampler.epochOrder(0));
    expect(got.slice(3).flat()).toEqual(sampler.epochOrder(1));
    expect(got.map((b) => b.length)).toEqual([4, 4, 2, 4, 4, 2]);
    expect(loader.state()).toEqual({ epoch: 2, position: 0, size: 10 });
    await loader.close();

    const dl = new DataLoader({ source: new FakeSource(10), sampler, batchSize: 4, collate: collateFn, dropLast: true });
    const d = await take(dl, 3);
    expect(d.map((b) => b.length)).toEqual([4, 4, 4]);
    expect(d[2]).toEqual(sampler.epochOrder(1).slice(0, 4));
    await dl.close();
  });

  it('resumes from a saved cursor with exactly the batches an uninterrupted run sees', async () => {
    const make = (resume?: LoaderState) =>
      new DataLoader({ source: new FakeSource(23), sampler: new LengthGroupedSampler({ lengths: Array.from({ length: 23 }, (_, i) => (i % 5 === 0 ? -1 : 1) * (1 + i)), batchSize: 3, seed: 9 }), batchSize: 3, collate: collateFn, resume });
    const full = make();
    const all = await take(full, 20); // crosses two epoch boundaries (8 batches per epoch)
    await full.close();
    for (const stop of [1, 7, 8, 13]) {
      const first = make();
      await take(first, stop);
      const saved = JSON.parse(JSON.stringify(first.state())) as LoaderState; // as a checkpoint would store it
      await first.close();
      const resumed = make(saved);
      expect(await take(resumed, 20 - stop)).toEqual(all.slice(stop));
      await resumed.close();
    }
    expect(() => make({ epoch: 0, position: 3, size: 24 })).toThrow(/saved cursor is for 24 samples/);
  });

  it('prefetches a bounded number of batches ahead while the caller works', async () => {
    const src = new FakeSource(40, 5);
    const loader = new DataLoader({ source: src, sampler: new SequentialSampler(40), batchSize: 4, collate: collateFn, prefetch: 2 });
    await loader.next(); // batch 0 returned; batches 1 and 2 are being loaded
    await new Promise((r) => setTimeout(r, 50)); // "training step"
    expect(src.requested.length).toBe(12);
    await loader.next();
    await new Promise((r) => setTimeout(r, 50));
    expect(src.requested.length).toBe(16); // never more than 2 batches ahead of the consumer
    expect(src.requested).toEqual(Array.from({ length: 16 }, (_, i) => i)); // requested in order
    expect(loader.state()).toEqual({ epoch: 0, position: 8, size: 40 });
    await loader.close();

    const lazy = new FakeSource(40, 1);
    const l0 = new DataLoader({ source: lazy, sampler: new SequentialSampler(40), batchSize: 4, collate: collateFn, prefetch: 0 });
    await l0.next();
    await new Promise((r) => setTimeout(r, 20));
    expect(lazy.requested.length).toBe(4);
    await l0.close();
  });

  it('a failing sample fails its batch (naming it) without an unhandled rejection; earlier batches are fine', async () => {
    const loader = new DataLoader({ source: new FakeSource(12, 1, 5), sampler: new SequentialSampler(12), batchSize: 4, collate: collateFn, prefetch: 2 });
    expect((await loader.next()).batch.indices).toEqual([0, 1, 2, 3]);
    await new Promise((r) => setTimeout(r, 20)); // batch 1 has failed in the background by now
    await expect(loader.next()).rejects.toThrow(/sample 5 is unreadable/);
    expect(loader.state().position).toBe(4); // the failed batch was not consumed
    await loader.close();
  });
});

describe('dataset + loader on the synthetic data', () => {
  let root: string;
  afterAll(() => rm(root, { recursive: true, force: true }));

  it('produces model-ready batches at demo sizes', async () => {
    root = await mkdtemp(path.join(tmpdir(), 'mgllava-loader-'));
    await synthDataset({ out: root, train: 8, eval: 0, seed: 1 });
    const text = { template: getTemplate('vicuna'), tokenizer: await loadTokenizer({ type: 'hf', path: root }), maxLength: 128 };
    const { dataset } = await loadDataset({
      records: path.join(root, 'finetune.json'),
      boxes: path.join(root, 'boxes.json'),
      images: path.join(root, 'images'),
      text,
      auxSize: 128,
      lowresSize: 56,
    });
    const sampler = new LengthGroupedSampler({ lengths: dataset.modalityLengths, batchSize: 4, seed: 0 });
    const loader = new DataLoader({ source: dataset, sampler, batchSize: 4, collate: (s) => collate(s, { padId: 0, auxSize: 128, lowresSize: 56 }) });
    const { batch } = await loader.next();
    await loader.close();
    expect(batch.size).toBe(4);
    expect(batch.aux.length).toBe(4 * 128 * 128 * 3);
    expect(batch.lowres.length).toBe(4 * 56 * 56 * 3);
    expect(batch.inputIds.length).toBe(4 * batch.seqLen);
    for (const b of batch.boxes) {
      expect(b.length / 4).toBeGreaterThanOrEqual(3); // 3-6 objects survive NMS
      expect(b.length / 4).toBeLessThanOrEqual(6);
      expect(Math.max(...b)).toBeLessThanOrEqual(128);
    }
    // normalized CLIP values, not bytes
    expect(Math.max(...batch.aux.subarray(0, 1000))).toBeLessThan(3);
    expect(Math.min(...batch.aux.subarray(0, 1000))).toBeGreaterThan(-2);
  });

  it('an ImageWorkerPool gives the same images off the main thread, and the same errors', async () => {
    const pool = new ImageWorkerPool(2);
    try {
      const o = { auxSize: 32, lowresSize: 14 };
      const files = [0, 1, 2].map((i) => path.join(root, 'images', `train-0000${i}.png`));
      const [a, b] = await Promise.all([Promise.all(files.map((f) => pool.prepare(f, o))), Promise.all(files.map((f) => prepareImage(f, o)))]);
      for (let i = 0; i < files.length; i++) {
        expect(a[i]!.aux).toEqual(b[i]!.aux);
        expect(a[i]!.lowres).toEqual(b[i]!.lowres);
        expect(a[i]!.padding).toEqual(b[i]!.padding);
      }
      const missing = path.join(root, 'images', 'nope.png');
      const err = await pool.prepare(missing, o).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ImageError);
      expect(err).toMatchObject({ kind: 'missing', path: missing });
    } finally {
      await pool.close();
    }
    await expect(pool.prepare('x', { auxSize: 8, lowresSize: 4 })).rejects.toThrow(/after close/);
  });
});
