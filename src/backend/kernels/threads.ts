/**
 * The multi-threaded wasm build under Node: XNNPACK's matmuls (and the other XNNPACK kernels) split
 * over a thread pool, ~1.95x on the decoder's products with 2 threads on an idle 2-core machine
 * (45 -> 88 GFLOP/s for [512,256]x[256,688]).
 *
 * tfjs 4.22 never picks this build in Node (`WASM_HAS_MULTITHREAD_SUPPORT` is false there) and its
 * browser path cannot work in Node (the worker script is handed over as a blob: URL). Here the
 * Emscripten factory of the threaded build is called directly:
 * - its pthread worker script (shipped as a string in `wasm-out/*.worker.js`) is written once to the
 *   temp directory, under a name that changes with its content;
 * - the C++ side caps the pool at logical cores / 2 (1 on a 2-core machine): `os.cpus()` reports
 *   2 x threads cores while the pool is created;
 * - the pool's workers are unref'd, so that they do not keep the process alive;
 * - the backend is registered as 'wasm' in place of the stock factory, so every kernel (stock and
 *   pack) and its setup function work unchanged; the pack's SIMD module imports the shared memory
 *   (simd.ts).
 * Threads wait for work in the C++ pool; on a machine whose cores are busy with other processes the
 * gain shrinks (a product waits for its slowest thread).
 */
import * as tf from '@tensorflow/tfjs';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';

const require = createRequire(import.meta.url);

/** Environment variable: threads of the wasm backend (1 = the stock single-threaded build). */
export const WASM_THREADS_ENV = 'MGLLAVA_WASM_THREADS';

/** Threads asked for by MGLLAVA_WASM_THREADS (default 1); a clear error for a malformed value. */
export function wasmThreadsFromEnv(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env[WASM_THREADS_ENV];
  if (raw == null || raw.trim() === '') return 1;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1 || n > 64) throw new Error(`${WASM_THREADS_ENV}=${raw}: expected an integer from 1 to 64`);
  return n;
}

interface EmscriptenModule {
  cwrap(name: string, ret: string | null, args: string[]): (...a: unknown[]) => unknown;
  PThread: { runningWorkers: { unref(): void }[] };
  tfjs?: Record<string, unknown>;
}

type Factory = (config: Record<string, unknown>) => Promise<EmscriptenModule>;

let registeredThreads = 0;
let requested = 0;

/** Threads of the registered threaded build (0 when the stock build is in use). */
export function wasmThreads(): number {
  return registeredThreads;
}

/** The worker script on disk (written once per content). */
function workerScript(dir: string): string {
  const contents = (require(path.join(dir, 'tfjs-backend-wasm-threaded-simd.worker.js')) as { wasmWorkerContents: string }).wasmWorkerContents;
  // The string literal's "\n" escapes became newlines inside the script's own string literals: undo.
  const script = contents.replace(/\n/g, '\\n');
  const hash = createHash('sha256').update(script).digest('hex').slice(0, 16);
  const file = path.join(fs.realpathSync(require('node:os').tmpdir() as string), `mgllava-tfjs-wasm-worker-${hash}.cjs`);
  if (!fs.existsSync(file)) {
    const tmp = `${file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, script);
    fs.renameSync(tmp, file);
  }
  return file;
}

/**
 * Register the threaded build as the 'wasm' backend with `threads` threads. Call after
 * `@tensorflow/tfjs-backend-wasm` is imported and before the backend is first set.
 */
export function registerThreadedWasm(threads: number): void {
  if (!Number.isInteger(threads) || threads < 2) throw new Error(`registerThreadedWasm: threads must be an integer >= 2, got ${threads}`);
  if (requested === threads) return; // already registered (selectBackend may load the package again)
  if (requested !== 0) throw new Error(`threaded wasm build: already registered with ${requested} threads, cannot switch to ${threads}`);
  requested = threads;
  const wasmPkg = require('@tensorflow/tfjs-backend-wasm') as {
    BackendWasm: new (module: unknown) => tf.KernelBackend;
    setThreadsCount(n: number): void;
  };
  const mainJs = require.resolve('@tensorflow/tfjs-backend-wasm/wasm-out/tfjs-backend-wasm-threaded-simd.js');
  const dir = path.dirname(mainJs);
  const factory = require(mainJs) as Factory;
  const worker = workerScript(dir);
  const os = require('node:os') as { cpus: () => unknown[] };
  tf.removeBackend('wasm');
  const ok = tf.registerBackend(
    'wasm',
    async () => {
      const realCpus = os.cpus;
      os.cpus = () => Array.from({ length: 2 * threads }, () => realCpus()[0]);
      try {
        const mod = await factory({
          locateFile: (p: string) => (p.endsWith('.worker.js') ? worker : path.join(dir, p)),
          mainScriptUrlOrBlob: mainJs,
        });
        mod.tfjs = {
          init: mod.cwrap('init', null, []),
          initWithThreadsCount: mod.cwrap('init_with_threads_count', null, ['number']),
          getThreadsCount: mod.cwrap('get_threads_count', 'number', []),
          registerTensor: mod.cwrap('register_tensor', null, ['number', 'number', 'number']),
          disposeData: mod.cwrap('dispose_data', null, ['number']),
          dispose: mod.cwrap('dispose', null, []),
        };
        wasmPkg.setThreadsCount(threads);
        const backend = new wasmPkg.BackendWasm(mod); // starts the pool
        const got = (mod.tfjs.getThreadsCount as () => number)();
        if (got !== threads) throw new Error(`threaded wasm build: asked for ${threads} threads, the pool has ${got}`);
        for (const w of mod.PThread.runningWorkers) w.unref();
        registeredThreads = threads;
        return backend;
      } finally {
        os.cpus = realCpus;
      }
    },
    2,
  );
  if (!ok) throw new Error("threaded wasm build: tf.registerBackend('wasm') failed");
}
