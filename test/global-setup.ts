// Tests that spawn the CLI run bin/mgllava.js, i.e. the compiled dist/: rebuild it first when a source
// is newer than the last build, so a targeted `npx vitest run test/x.test.ts` tests the code as it is.
// The rebuild is lenient (a type error elsewhere only warns); `npm test` builds strictly before vitest.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';

const REPO = path.resolve(import.meta.dirname, '..');
/** Written last by scripts/build.mjs. */
const STAMP = path.join(REPO, 'dist/backend/kernels/simd.wasm');

function newest(file: string): number {
  const st = statSync(file);
  if (!st.isDirectory()) return st.mtimeMs;
  return Math.max(st.mtimeMs, ...readdirSync(file).map((f) => newest(path.join(file, f))));
}

export default function setup(): void {
  const inputs = ['src', 'tsconfig.json', 'tsconfig.build.json', 'scripts/build.mjs'].map((f) => path.join(REPO, f));
  if (existsSync(STAMP) && statSync(STAMP).mtimeMs >= Math.max(...inputs.map(newest))) return;
  console.log('dist/ is older than src/: rebuilding (node scripts/build.mjs --lenient)');
  const r = spawnSync(process.execPath, [path.join(REPO, 'scripts/build.mjs'), '--lenient'], { cwd: REPO, encoding: 'utf8' });
  if (r.status !== 0) {
    const errors = `${r.stdout}${r.stderr}`.split('\n').filter((l) => /error/i.test(l)).slice(0, 10);
    console.warn(`warning: the build reported errors (dist/ was written anyway; CLI tests may fail):\n${errors.join('\n')}`);
  }
  if (!existsSync(STAMP)) throw new Error(`the build did not produce ${STAMP}:\n${r.stdout}${r.stderr}`);
}
