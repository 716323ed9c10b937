/**
 * Where the kernel pack's SIMD loops come from: the WebAssembly text `simd.wat` beside this file,
 * compiled by wabt (the WebAssembly Binary Toolkit's own text parser and binary writer, the npm
 * package `wabt`, pinned). `npm run build` writes the compiled variants into dist/ next to the
 * compiled simd.js (scripts/build-simd.mjs calls `compileSimdWat`), so the built CLI and the
 * installed package neither need wabt nor pay its ~0.2 s start; run from source (tests, tsx) the text
 * is compiled when the pack registers.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { MgllavaError } from '../../errors.js';

/** `plain`: the single-threaded wasm build's memory; `shared`: the threaded build's (MGLLAVA_WASM_THREADS). */
export type SimdVariant = 'plain' | 'shared';
export const SIMD_VARIANTS: readonly SimdVariant[] = ['plain', 'shared'];

/** File names of the compiled variants, beside simd.js in dist/. */
export const SIMD_BINARY_FILES: Readonly<Record<SimdVariant, string>> = { plain: 'simd.wasm', shared: 'simd-shared.wasm' };

/** simd.wat's memory import, and the threaded build's: a shared memory import must declare a maximum (4 GiB). */
const MEMORY_IMPORT = '(import "env" "memory" (memory 0))';
const SHARED_MEMORY_IMPORT = '(import "env" "memory" (memory 0 65536 shared))';

export const SIMD_WAT_PATH = fileURLToPath(new URL('./simd.wat', import.meta.url));

type Wabt = Awaited<ReturnType<typeof import('wabt')>>;
let wabtInstance: Promise<Wabt> | null = null;

async function loadWabt(): Promise<Wabt> {
  wabtInstance ??= import('wabt').then(
    (m) => m.default(),
    (e: unknown) => {
      wabtInstance = null;
      throw new MgllavaError(
        `wasm kernel pack: cannot compile ${SIMD_WAT_PATH}: the devDependency 'wabt' is not installed (${(e as Error).message.split('\n')[0]})`,
        'backend',
        { hint: 'run `npm ci` (development checkout) or `npm run build` (which writes the compiled loops into dist/)', cause: e },
      );
    },
  );
  return wabtInstance;
}

/** Compile simd.wat's text for one memory variant. */
export async function compileSimdWat(text: string, variant: SimdVariant): Promise<Uint8Array<ArrayBuffer>> {
  if (!text.includes(MEMORY_IMPORT)) throw new Error(`simd.wat: the memory import '${MEMORY_IMPORT}' is not in the text`);
  const source = variant === 'shared' ? text.replace(MEMORY_IMPORT, SHARED_MEMORY_IMPORT) : text;
  const wabt = await loadWabt();
  const features = { simd: true, threads: variant === 'shared' };
  const mod = wabt.parseWat('simd.wat', source, features);
  try {
    // wabt.js validates against the features passed here too (its index.d.ts omits the parameter).
    (mod as unknown as { validate(f: typeof features): void }).validate(features);
    const { buffer } = mod.toBinary({ canonicalize_lebs: true, write_debug_names: false });
    return new Uint8Array(buffer); // a copy: wabt's buffer is a view of its own heap
  } finally {
    mod.destroy();
  }
}

/**
 * The binaries of both variants: the prebuilt files when this module runs from dist/ (the build wrote
 * them), else simd.wat compiled now.
 */
export async function simdBinaries(): Promise<Record<SimdVariant, Uint8Array<ArrayBuffer>>> {
  const prebuilt = (v: SimdVariant) => fileURLToPath(new URL(`./${SIMD_BINARY_FILES[v]}`, import.meta.url));
  if (SIMD_VARIANTS.every((v) => existsSync(prebuilt(v)))) {
    const [plain, shared] = await Promise.all(SIMD_VARIANTS.map(async (v) => new Uint8Array(await readFile(prebuilt(v)))));
    return { plain: plain!, shared: shared! };
  }
  let text: string;
  try {
    text = await readFile(SIMD_WAT_PATH, 'utf8');
  } catch (e) {
    throw new MgllavaError(`wasm kernel pack: neither the compiled SIMD loops nor their source ${SIMD_WAT_PATH} are there (${(e as Error).message})`, 'backend', {
      hint: 'run `npm run build`',
      cause: e,
    });
  }
  return { plain: await compileSimdWat(text, 'plain'), shared: await compileSimdWat(text, 'shared') };
}
