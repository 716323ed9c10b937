#!/usr/bin/env node
// `npm run build` (npm ci runs it as `prepare`, npm test before the tests): src/ -> dist/.
//   1. tsc -p tsconfig.build.json: JavaScript + declarations; a type error fails the build and
//      emits nothing (noEmitOnError). `--lenient` (the test setup's rebuild of a stale dist, see
//      test/global-setup.ts) emits anyway and only warns, so one file in progress does not block
//      everyone's tests; `npm test` itself builds strictly first.
//   2. Removes dist files whose source is gone (a moved module must not keep resolving to its old copy).
//   3. Compiles the wasm kernel pack's SIMD loops (src/backend/kernels/simd.wat) into
//      dist/backend/kernels/ with the function the source tree uses at registration (simd-compile.ts),
//      so the built package needs no wabt at run time.
import { spawnSync } from 'node:child_process';
import { copyFile, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync, mkdirSync, rmSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const src = path.join(root, 'src');
const dist = path.join(root, 'dist');
const lenient = process.argv.includes('--lenient');

// One build at a time in a checkout (several test runs may find dist/ stale at once): a lock directory,
// taken over when older than 10 minutes (a killed build).
const lock = path.join(dist, '.build-lock');
mkdirSync(dist, { recursive: true });
for (;;) {
  try {
    mkdirSync(lock);
    break;
  } catch (e) {
    if (e.code !== 'EEXIST') throw e;
    try {
      if (Date.now() - statSync(lock).mtimeMs > 600_000) rmSync(lock, { recursive: true, force: true });
    } catch {}
    await new Promise((r) => setTimeout(r, 500));
  }
}
process.on('exit', () => rmSync(lock, { recursive: true, force: true }));

const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
const args = [tsc, '-p', path.join(root, 'tsconfig.build.json'), ...(lenient ? ['--noEmitOnError', 'false'] : [])];
const typed = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' });
if (typed.status !== 0 && !lenient) process.exit(typed.status ?? 1);

// 2. Orphans: dist/x.js, x.d.ts whose src/x.ts (or .mjs, .wat, .wasm produced below) no longer exists.
async function prune(dir) {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    if (entry.name.startsWith('.')) continue; // .tsbuildinfo, .build-lock
    const file = path.join(dir, entry.name);
    if (entry.isDirectory()) {
      await prune(file);
      if ((await readdir(file)).length === 0) await rm(file, { recursive: true });
      continue;
    }
    const rel = path.relative(dist, file);
    const stem = rel.replace(/\.d\.ts$|\.js$/, '');
    if (stem === rel) continue; // not a compiled file (the SIMD binaries and their text)
    if (!existsSync(path.join(src, `${stem}.ts`))) await rm(file);
  }
}
if (existsSync(dist)) await prune(dist);

// 3. The SIMD loops.
const kernels = path.join(dist, 'backend', 'kernels');
const { compileSimdWat, SIMD_BINARY_FILES, SIMD_VARIANTS } = await import(pathToFileURL(path.join(kernels, 'simd-compile.js')).href);
const wat = path.join(src, 'backend', 'kernels', 'simd.wat');
const text = await readFile(wat, 'utf8');
for (const variant of SIMD_VARIANTS) {
  await writeFile(path.join(kernels, SIMD_BINARY_FILES[variant]), await compileSimdWat(text, variant));
}
await copyFile(wat, path.join(kernels, 'simd.wat'));

if (typed.status !== 0) {
  console.error('mgllava build: type errors above (dist/ was written anyway: --lenient)');
  process.exit(typed.status ?? 1);
}
