/**
 * The tfjs releases the wasm kernel pack was written and verified against. The pack reaches into the
 * internals of tfjs-core (kernel registry, engine) and of tfjs-backend-wasm (the Emscripten module's
 * heap, memory and exports, `dataIdMap`, the stock kernels' setup functions and argument order),
 * none of which is a public API: another release may change them without a type error and the pack
 * would then compute wrong numbers silently. So registration refuses any other version; package.json
 * pins these exact versions. Upgrading means re-running the kernel suites (test/kernels-*.test.ts,
 * the golden pieces) on the new release, then changing the versions here and in package.json.
 */
import { createRequire } from 'node:module';
import * as tf from '@tensorflow/tfjs';
import { MgllavaError } from '../../errors.js';

export interface TfjsVersions {
  '@tensorflow/tfjs-core': string;
  '@tensorflow/tfjs-backend-wasm': string;
}

export const PACK_WRITTEN_FOR: Readonly<TfjsVersions> = {
  '@tensorflow/tfjs-core': '4.22.0',
  '@tensorflow/tfjs-backend-wasm': '4.22.0',
};

/** The versions loaded in this process (the wasm package must already be imported; select.ts does it). */
export function loadedTfjsVersions(): TfjsVersions {
  const wasm = createRequire(import.meta.url)('@tensorflow/tfjs-backend-wasm') as { version_wasm: string };
  return { '@tensorflow/tfjs-core': tf.version_core, '@tensorflow/tfjs-backend-wasm': wasm.version_wasm };
}

/** Throws a MgllavaError (category 'backend') naming every package whose version differs. */
export function assertPackVersions(found: TfjsVersions = loadedTfjsVersions()): void {
  const wrong = (Object.keys(PACK_WRITTEN_FOR) as (keyof TfjsVersions)[]).filter((pkg) => found[pkg] !== PACK_WRITTEN_FOR[pkg]);
  if (wrong.length === 0) return;
  const what = wrong.map((pkg) => `${pkg} ${found[pkg]} (written for ${PACK_WRITTEN_FOR[pkg]})`).join(', ');
  throw new MgllavaError(
    `wasm kernel pack: found ${what}; the pack relies on that release's internals and could give wrong results silently on another`,
    'backend',
    { hint: `install the pinned versions (npm ci), or run on --backend cpu` },
  );
}
