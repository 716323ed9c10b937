/** Body of an image worker thread: runs `prepareImage` for the pool and sends the float images back (transferred). */
import { parentPort } from 'node:worker_threads';
import { ImageError, prepareImage, type PrepareOptions } from './image.js';

export interface ImageJob {
  id: number;
  file: string;
  opts: PrepareOptions;
}

export type ImageReply =
  | { id: number; ok: true; image: Awaited<ReturnType<typeof prepareImage>> }
  | { id: number; ok: false; error: { imageError: boolean; kind: ImageError['kind']; path: string; detail: string; message: string } };

const port = parentPort;
if (!port) throw new Error('image-worker.ts must run in a worker thread (see image-pool.ts)');

port.on('message', (job: ImageJob) => {
  prepareImage(job.file, job.opts).then(
    (image) => port.postMessage({ id: job.id, ok: true, image } satisfies ImageReply, [image.aux.buffer as ArrayBuffer, image.lowres.buffer as ArrayBuffer]),
    (e: unknown) => {
      const err = e instanceof ImageError ? e : null;
      const reply: ImageReply = {
        id: job.id,
        ok: false,
        error: { imageError: err !== null, kind: err?.kind ?? 'undecodable', path: err?.path ?? job.file, detail: err?.detail ?? String(e), message: (e as Error)?.message ?? String(e) },
      };
      port.postMessage(reply);
    },
  );
});
