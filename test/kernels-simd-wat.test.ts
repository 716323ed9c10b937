// The wasm kernel pack's SIMD loops come from simd.wat compiled by wabt: the compiled functions must be
// the ones the hand assembler produced before (instruction for instruction, so every kernel result stays
// bitwise the same), the build's prebuilt binaries must be that compilation, and the pack must refuse a
// tfjs release it was not written for.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { MgllavaError } from '../src/errors.js';
import { compileSimdWat, SIMD_BINARY_FILES, SIMD_VARIANTS, SIMD_WAT_PATH, simdBinaries } from '../src/backend/kernels/simd-compile.js';
import { assertPackVersions, loadedTfjsVersions, PACK_WRITTEN_FOR } from '../src/backend/kernels/versions.js';

const REPO = path.resolve(import.meta.dirname, '..');
const assembled = JSON.parse(readFileSync(path.join(REPO, 'test/fixtures/simd-assembled.json'), 'utf8')) as { plain: string; shared: string };

/**
 * A module's meaning, independent of how its container is encoded: the memory import, each exported
 * function's signature, its locals one by one, and its instruction bytes. (wabt writes runs of
 * same-typed locals as one entry and shares identical signatures; the hand assembler did neither.)
 */
function program(bytes: Uint8Array) {
  let at = 8;
  const uleb = (b: Uint8Array, p: { i: number }) => {
    let v = 0;
    let shift = 0;
    for (;;) {
      const x = b[p.i++]!;
      v += (x & 0x7f) * 2 ** shift;
      shift += 7;
      if (!(x & 0x80)) return v;
    }
  };
  expect([...bytes.subarray(0, 8)]).toEqual([0x00, 0x61, 0x73, 0x6d, 1, 0, 0, 0]);
  const sections = new Map<number, Uint8Array>();
  while (at < bytes.length) {
    const p = { i: at + 1 };
    const size = uleb(bytes, p);
    sections.set(bytes[at]!, bytes.subarray(p.i, p.i + size));
    at = p.i + size;
  }
  const vec = <T>(id: number, item: (s: Uint8Array, p: { i: number }) => T): T[] => {
    const s = sections.get(id)!;
    const p = { i: 0 };
    return Array.from({ length: uleb(s, p) }, () => item(s, p));
  };
  const types = vec(1, (s, p) => {
    p.i++; // 0x60
    const params = s.subarray(p.i + 1, p.i + 1 + s[p.i]!).join(',');
    p.i += 1 + s[p.i]!;
    const results = s.subarray(p.i + 1, p.i + 1 + s[p.i]!).join(',');
    p.i += 1 + s[p.i]!;
    return `(${params}) -> (${results})`;
  });
  const funcTypes = vec(3, (s, p) => types[uleb(s, p)]!);
  const bodies = vec(10, (s, p) => {
    const end = uleb(s, p) + p.i;
    const locals: number[] = [];
    const groups = uleb(s, p);
    for (let g = 0; g < groups; g++) {
      const n = uleb(s, p);
      locals.push(...Array<number>(n).fill(s[p.i++]!));
    }
    const code = Buffer.from(s.subarray(p.i, end)).toString('hex');
    p.i = end;
    return { locals, code };
  });
  const exports = vec(7, (s, p) => {
    const len = uleb(s, p);
    const name = Buffer.from(s.subarray(p.i, p.i + len)).toString();
    p.i += len;
    const kind = s[p.i++]!;
    const index = uleb(s, p);
    return { name, kind, signature: funcTypes[index], ...bodies[index] };
  });
  return { sections: [...sections.keys()], memoryImport: Buffer.from(sections.get(2)!).toString('hex'), exports };
}

describe('SIMD loops from simd.wat', () => {
  const text = readFileSync(SIMD_WAT_PATH, 'utf8');

  for (const variant of SIMD_VARIANTS) {
    it(`${variant} memory: the same functions, instruction for instruction, as the hand-assembled module`, async () => {
      const compiled = program(await compileSimdWat(text, variant));
      const before = program(Buffer.from(assembled[variant], 'hex'));
      expect(compiled.exports.map((e) => e.name)).toEqual(['madd', 'add', 'transpose4', 'maddRun', 'dotRun', 'adamw', 'rope']);
      expect(compiled).toEqual(before);
    });
  }

  it('the variants differ only in the memory import (shared, with a 4 GiB maximum)', async () => {
    const plain = program(await compileSimdWat(text, 'plain'));
    const shared = program(await compileSimdWat(text, 'shared'));
    expect(shared.exports).toEqual(plain.exports);
    expect(plain.memoryImport.endsWith('020000')).toBe(true); // memory, flags 0, min 0
    expect(shared.memoryImport.endsWith('0203008080' + '04')).toBe(true); // memory, flags 3 (shared, max), min 0, max 65536
  });

  it('the built package loads the same bytes the source compiles to', async () => {
    const kernels = path.join(REPO, 'dist/backend/kernels');
    for (const variant of SIMD_VARIANTS) {
      const file = path.join(kernels, SIMD_BINARY_FILES[variant]);
      expect(existsSync(file), `${file} (written by npm run build; test/global-setup.ts builds a stale dist)`).toBe(true);
      expect(Buffer.from(readFileSync(file)).equals(Buffer.from(await compileSimdWat(text, variant)))).toBe(true);
    }
    // From source there is no prebuilt file beside simd-compile.ts: the text is compiled.
    const fromSource = await simdBinaries();
    expect(Buffer.from(fromSource.plain).equals(Buffer.from(await compileSimdWat(text, 'plain')))).toBe(true);
  });

  it('rejects a text whose memory import was changed', async () => {
    await expect(compileSimdWat(text.replace('(memory 0)', '(memory 1)'), 'plain')).rejects.toThrow(/memory import/);
  });
});

describe('the pack refuses another tfjs release', () => {
  it('is written for the versions package.json pins exactly, and those are loaded', () => {
    const pkg = JSON.parse(readFileSync(path.join(REPO, 'package.json'), 'utf8')) as Record<string, Record<string, string>>;
    const lock = JSON.parse(readFileSync(path.join(REPO, 'package-lock.json'), 'utf8')) as { packages: Record<string, { version: string }> };
    expect(pkg.dependencies!['@tensorflow/tfjs']).toBe(PACK_WRITTEN_FOR['@tensorflow/tfjs-core']);
    expect(pkg.dependencies!['@tensorflow/tfjs-backend-wasm']).toBe(PACK_WRITTEN_FOR['@tensorflow/tfjs-backend-wasm']);
    for (const [name, version] of Object.entries(PACK_WRITTEN_FOR)) expect(lock.packages[`node_modules/${name}`]!.version).toBe(version);
    expect(loadedTfjsVersions()).toEqual(PACK_WRITTEN_FOR);
    expect(() => assertPackVersions()).not.toThrow();
  });

  it('names each package whose version differs, as a backend error', () => {
    const found = { ...PACK_WRITTEN_FOR, '@tensorflow/tfjs-backend-wasm': '4.23.0' };
    let err: unknown;
    try {
      assertPackVersions(found);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(MgllavaError);
    expect((err as MgllavaError).category).toBe('backend');
    expect((err as MgllavaError).message).toMatch(/^wasm kernel pack: found @tensorflow\/tfjs-backend-wasm 4\.23\.0 \(written for 4\.22\.0\); /);
    expect((err as MgllavaError).hint).toMatch(/install the pinned versions/);
    expect((err as MgllavaError).message).not.toContain('tfjs-core');
    expect(() => assertPackVersions({ '@tensorflow/tfjs-core': '5.0.0', '@tensorflow/tfjs-backend-wasm': '5.0.0' })).toThrow(/tfjs-core 5\.0\.0.*tfjs-backend-wasm 5\.0\.0/);
  });

  it('selecting the wasm backend fails with that error when the loaded tfjs-backend-wasm reports another version', () => {
    // A fresh process (this one registered the pack at setup) on the built code (test/global-setup.ts keeps
    // dist/ current): fake the release the wasm package reports.
    const script = `
      import { createRequire } from 'node:module';
      createRequire(import.meta.url)('@tensorflow/tfjs-backend-wasm').version_wasm = '4.99.0';
      const { selectBackend } = await import('./dist/backend/select.js');
      try { await selectBackend('wasm'); console.log('selected'); }
      catch (e) { console.log(e.constructor.name, e.category, e.message); }
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { cwd: REPO, encoding: 'utf8', env: { ...process.env, MGLLAVA_NATIVE: 'off' } });
    expect(r.stdout, r.stderr).toMatch(/^\w*Error backend wasm kernel pack: found @tensorflow\/tfjs-backend-wasm 4\.99\.0 \(written for 4\.22\.0\)/);
  });
});
