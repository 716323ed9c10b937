/**
 * Image preprocessing on worker threads, so that decoding *and* the JS resize/normalize work (≈ 40 ms per
 * image at aux 768, see resample.ts) run beside the training step instead of between its awaits on the
 * main thread. `pool.prepare` has the signature of `prepareImage`; pass it to the dataset as `prepare`.
 * Results come back as transferred buffers (no copy).
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { ImageJob, ImageReply } from './image-worker.js';
import { ImageError, type PreparedImage, type PrepareOptions } from './image.js';

/**
 * The worker's entry: built (dist/), the compiled worker itself; from source (tests, tsx), a boot file
 * that registers tsx's loader in the worker first.
 */
const WORKER_ENTRY = import.meta.url.endsWith('.js') ? './image-worker.js' : './image-worker-boot.mjs';

interface Pending {
  resolve: (p: PreparedImage) => void;
  reject: (e: Error) => void;
  worker: Worker;
}

/**
 * Worker threads for `requested` (data.image_workers): at most one per core, since more only add memory
 * (each holds its images) and contention. A larger request is capped with a warning.
 */
export function imageWorkerCount(requested: number, warn: (line: string) => void = (l) => process.stderr.write(`${l}\n`), cores = availableParallelism()): number {
  if (!Number.isInteger(requested) || requested < 1) throw new Error(`ImageWorkerPool: size must be ≥ 1, got ${requested}`);
  if (requested <= cores) return requested;
  warn(`warning: data.image_workers = ${requested} is more than the ${cores} cores of this machine: using ${cores}`);
  return cores;
}

export class ImageWorkerPool {
  private readonly workers: Worker[] = [];
  private readonly load = new Map<Worker, number>();
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;
  private closed = false;
  /** Workers actually started (the request capped at the cores). */
  readonly size: number;

  constructor(requested: number, warn?: (line: string) => void) {
    this.size = imageWorkerCount(requested, warn);
    for (let i = 0; i < this.size; i++) this.spawn();
  }

  private spawn(): void {
    const w = new Worker(new URL(WORKER_ENTRY, import.meta.url));
    w.unref(); // an idle pool never keeps the process alive; ref'd while jobs are pending
    w.on('message', (m: ImageReply) => this.settle(w, m));
    w.on('error', (e) => this.failWorker(w, e));
    w.on('exit', (code) => this.failWorker(w, new Error(`image worker exited with code ${code}`)));
    this.workers.push(w);
    this.load.set(w, 0);
  }

  prepare(file: string, opts: PrepareOptions): Promise<PreparedImage> {
    if (this.closed) return Promise.reject(new Error('ImageWorkerPool: prepare() after close()'));
    if (this.workers.length === 0) return Promise.reject(new Error('ImageWorkerPool: every worker has died'));
    // Least busy worker.
    const w = this.workers.reduce((a, b) => (this.load.get(b)! < this.load.get(a)! ? b : a));
    const id = this.nextId++;
    this.bump(w, +1);
    return new Promise<PreparedImage>((resolve, reject) => {
      this.pending.set(id, { resolve, reject, worker: w });
      w.postMessage({ id, file, opts } satisfies ImageJob);
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    const ws = this.workers.splice(0);
    await Promise.all(ws.map((w) => w.terminate()));
  }

  private bump(w: Worker, d: number): void {
    const n = this.load.get(w)! + d;
    this.load.set(w, n);
    if (n > 0) w.ref();
    else w.unref();
  }

  private settle(w: Worker, m: ImageReply): void {
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    this.bump(w, -1);
    if (m.ok) p.resolve(m.image);
    else p.reject(m.error.imageError ? new ImageError(m.error.kind, m.error.path, m.error.detail) : new Error(m.error.message));
  }

  private failWorker(w: Worker, e: Error): void {
    const i = this.workers.indexOf(w);
    if (i >= 0) this.workers.splice(i, 1);
    for (const [id, p] of this.pending) {
      if (p.worker !== w) continue;
      this.pending.delete(id);
      p.reject(new Error(`image worker failed: ${e.message}`));
    }
    this.load.delete(w);
  }
}
