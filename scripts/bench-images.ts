/**
 * Image loading throughput and overlap with a (simulated) training step.
 *
 *   npx tsx scripts/bench-images.ts [--json]
 *
 * 1. images/s of decode + pad + resize + normalize + low-res, at full size (aux 768 / low-res 336, from
 *    640x480 JPEGs) and demo size (aux 128 / 56, from the synthetic PNGs): on the main thread (4 in flight)
 *    and on an ImageWorkerPool.
 * 2. Overlap: a loop of "training steps" (a synchronous busy wait on the main thread, like a wasm step)
 *    each consuming one batch from the DataLoader; reports ms per step without prefetch, with prefetch on
 *    the main thread, and with prefetch on worker threads. Perfect overlap = the step time alone.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { collate, type Sample } from '../src/data/collate.js';
import { ImageWorkerPool } from '../src/data/image-pool.js';
import { prepareImage, type PreparedImage, type PrepareOptions } from '../src/data/image.js';
import { DataLoader, type SampleSource } from '../src/data/loader.js';
import { runPool } from '../src/data/pool.js';
import { SequentialSampler } from '../src/data/sampler.js';
import { renderScene } from '../src/data/synth/render.js';
import { makeScene } from '../src/data/synth/scene.js';
import { streamRng } from '../src/data/random.js';

type Prepare = (file: string, o: PrepareOptions) => Promise<PreparedImage>;

async function makePhotos(dir: string, n: number): Promise<string[]> {
  const files: string[] = [];
  for (let i = 0; i < n; i++) {
    const f = path.join(dir, `photo-${i}.jpg`);
    await sharp({ create: { width: 640, height: 480, channels: 3, background: 'black', noise: { type: 'gaussian', mean: 120 + i, sigma: 50 } } })
      .blur(1.5)
      .jpeg({ quality: 90 })
      .toFile(f);
    files.push(f);
  }
  return files;
}

async function makeShapes(dir: string, n: number): Promise<string[]> {
  const files: string[] = [];
  for (let i = 0; i < n; i++) {
    const f = path.join(dir, `shape-${i}.png`);
    await sharp(await renderScene(makeScene(streamRng(0, 1, i)), i, 10)).toFile(f);
    files.push(f);
  }
  return files;
}

async function throughput(files: string[], o: PrepareOptions, prepare: Prepare, inFlight: number, reps: number): Promise<number> {
  await prepare(files[0]!, o); // warm-up (worker start, first sharp call)
  const t0 = performance.now();
  for (let r = 0; r < reps; r++) await runPool(files, inFlight, async (f) => void (await prepare(f, o)));
  return (files.length * reps) / ((performance.now() - t0) / 1000);
}

function busy(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end);
}

/** ms per step of `steps` steps, each: get a batch, then `stepMs` of synchronous main-thread work. */
async function overlap(files: string[], o: PrepareOptions, prepare: Prepare, prefetch: number, batch: number, stepMs: number, steps: number): Promise<number> {
  const source: SampleSource = {
    size: files.length,
    get: async (i): Promise<Sample> => {
      const img = await prepare(files[i]!, o);
      return { index: i, id: String(i), inputIds: Int32Array.of(1, -200, 2), labels: Int32Array.of(-100, -100, 2), hasImage: true, aux: img.aux, lowres: img.lowres, boxes: new Float32Array(4), boxLabels: [] };
    },
  };
  const loader = new DataLoader({ source, sampler: new SequentialSampler(files.length), batchSize: batch, collate: (s) => collate(s, { padId: 0, auxSize: o.auxSize, lowresSize: o.lowresSize }), prefetch });
  await loader.next(); // fill the pipeline
  busy(stepMs);
  const t0 = performance.now();
  for (let s = 0; s < steps; s++) {
    await loader.next();
    busy(stepMs);
  }
  const ms = (performance.now() - t0) / steps;
  await loader.close();
  return ms;
}

async function main(): Promise<void> {
  const json = process.argv.includes('--json');
  const dir = await mkdtemp(path.join(tmpdir(), 'mgllava-bench-images-'));
  const pool = new ImageWorkerPool(2);
  const results: Record<string, unknown>[] = [];
  const say = (r: Record<string, unknown>) => {
    results.push(r);
    if (!json) process.stdout.write(`${Object.entries(r).map(([k, v]) => `${k}=${typeof v === 'number' ? v.toFixed(1) : v}`).join('  ')}\n`);
  };
  try {
    const photos = await makePhotos(dir, 16);
    const shapes = await makeShapes(dir, 128);
    const full: PrepareOptions = { auxSize: 768, lowresSize: 336 };
    const demo: PrepareOptions = { auxSize: 128, lowresSize: 56 };
    const inProcess: Prepare = prepareImage;
    const workers: Prepare = (f, o) => pool.prepare(f, o);
    for (const [name, files, o, reps] of [
      ['full 768/336 (640x480 jpeg)', photos, full, 2],
      ['demo 128/56 (synthetic png)', shapes, demo, 2],
    ] as const) {
      say({ bench: 'throughput', sizes: name, where: 'main thread', imagesPerSec: await throughput(files, o, inProcess, 4, reps) });
      say({ bench: 'throughput', sizes: name, where: 'worker pool (2)', imagesPerSec: await throughput(files, o, workers, 4, reps) });
    }
    // Overlap: step time chosen around the batch's load time, where overlap matters most.
    for (const [name, files, o, batch, stepMs, steps] of [
      ['full 768/336', photos, full, 4, 150, 6],
      ['demo 128/56', shapes, demo, 32, 100, 6],
    ] as const) {
      for (const [mode, prepare, prefetch] of [
        ['no prefetch, main thread', inProcess, 0],
        ['prefetch 2, main thread', inProcess, 2],
        ['prefetch 2, worker pool (2)', workers, 2],
      ] as const) {
        say({ bench: 'overlap', sizes: name, batch, stepMs, mode, msPerStep: await overlap(files, o, prepare, prefetch, batch, stepMs, steps) });
      }
    }
  } finally {
    await pool.close();
    await rm(dir, { recursive: true, force: true });
  }
  if (json) process.stdout.write(`${JSON.stringify(results)}\n`);
}

await main();
