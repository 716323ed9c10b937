/**
 * Every case of ../shared/torch-checkpoints (real torch.save output and hand-built hostile pickles): valid cases
 * convert to exactly expected.safetensors (keys, dtypes, shapes, bytes); hostile cases fail with one line (no stack
 * trace) or, where the case allows, yield exactly the listed tensors; nothing is ever executed.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MgllavaError } from '../src/errors.js';
import { convertTorchCheckpoint } from '../src/io/torch-convert.js';
import { expectOneLineError, runCli } from './cli-harness.js';
import { FIXTURES, rawSafetensors } from './torch-helpers.js';

interface Case {
  kind: 'valid' | 'hostile';
  files: string[];
  key: string | null;
  expect: 'tensors' | 'error' | 'error-or-tensors';
  tensors?: string[];
}

const cases = readdirSync(FIXTURES)
  .filter((d) => existsSync(path.join(FIXTURES, d, 'case.json')))
  .map((d) => ({ name: d, dir: path.join(FIXTURES, d), c: JSON.parse(readFileSync(path.join(FIXTURES, d, 'case.json'), 'utf8')) as Case }));

/** What `convert` is given for a case: the checkpoint file, or the directory for multi-file cases. */
function inputOf(dir: string, c: Case): string {
  const first = c.files[0]!;
  if (first.includes('/')) return path.join(dir, path.dirname(first)); // a DeepSpeed checkpoint directory
  if (c.files.some((f) => f.endsWith('.index.json'))) return dir; // an HF directory of .bin shards
  return path.join(dir, first);
}

const PWNED = ['/tmp/mgllava-pwned', '/tmp/mgllava-gen-pwned'];

let out: string;
let n = 0;
const fresh = () => path.join(out, `out-${n++}.safetensors`);

beforeAll(async () => {
  out = await mkdtemp(path.join(tmpdir(), 'mgllava-torch-fixtures-'));
});
afterAll(async () => {
  await rm(out, { recursive: true, force: true });
  for (const p of PWNED) expect(existsSync(p), `${p} appeared: something was executed`).toBe(false);
});

function expectSameTensors(got: string, expected: string): void {
  const a = rawSafetensors(got);
  const b = rawSafetensors(expected);
  expect([...a.keys()].sort()).toEqual([...b.keys()].sort());
  for (const [k, e] of b) {
    const t = a.get(k)!;
    expect({ name: k, dtype: t.dtype, shape: t.shape }).toEqual({ name: k, dtype: e.dtype, shape: e.shape });
    expect(Buffer.compare(t.bytes, e.bytes), `bytes of ${k}`).toBe(0);
  }
}

describe('torch checkpoint fixtures', () => {
  it('has the fixture cases', () => {
    expect(cases.length).toBeGreaterThanOrEqual(18);
    expect(cases.filter((x) => x.c.kind === 'valid').length).toBeGreaterThanOrEqual(8);
  });

  for (const { name, dir, c } of cases.filter((x) => x.c.kind === 'valid')) {
    it(`valid: ${name} converts to exactly expected.safetensors`, async () => {
      const dest = fresh();
      const r = await convertTorchCheckpoint(inputOf(dir, c), dest, { maxShardBytes: 2e9 });
      expect(r.key).toBe(c.key);
      expectSameTensors(dest, path.join(dir, 'expected.safetensors'));
    });
  }

  it('valid cases through the CLI: --json reports tensors, bytes, key, skipped', async () => {
    for (const { dir, c } of cases.filter((x) => x.c.kind === 'valid')) {
      const dest = fresh();
      const r = await runCli(['convert', inputOf(dir, c), '--out', dest, '--json']);
      expect(r.code, r.err).toBe(0);
      const line = JSON.parse(r.out.trim()) as { tensors: number; bytes: number; key: string | null; skipped: number };
      const expected = rawSafetensors(path.join(dir, 'expected.safetensors'));
      expect(line.tensors).toBe(expected.size);
      expect(line.bytes).toBe([...expected.values()].reduce((s, t) => s + t.bytes.length, 0));
      expect(line.key).toBe(c.key);
      expect(Object.keys(line).sort()).toEqual(['bytes', 'key', 'skipped', 'tensors']);
      expectSameTensors(dest, path.join(dir, 'expected.safetensors'));
    }
  });

  it('nested_model_key: the non-tensor entries beside the state dict are not in it, none skipped', async () => {
    const { dir, c } = cases.find((x) => x.name === 'nested_model_key')!;
    const r = await convertTorchCheckpoint(inputOf(dir, c), fresh(), { maxShardBytes: 2e9 });
    expect(r.skipped).toEqual([]);
  });

  for (const { name, dir, c } of cases.filter((x) => x.c.kind === 'hostile')) {
    it(`hostile: ${name} (${c.expect})`, async () => {
      const dest = fresh();
      const input = inputOf(dir, c);
      const lib = await convertTorchCheckpoint(input, dest, { maxShardBytes: 2e9 }).then(
        (r) => ({ ok: true as const, r }),
        (e: unknown) => ({ ok: false as const, e }),
      );
      const cli = await runCli(['convert', input, '--out', fresh()]);
      if (c.expect === 'error' || !lib.ok) {
        expect(c.expect === 'error' ? lib.ok : false, `${name} must be refused`).toBe(false);
        if (!lib.ok) {
          expect(lib.e).toBeInstanceOf(MgllavaError);
          expect((lib.e as Error).message).not.toContain('\n');
          expect((lib.e as Error).message).toContain(input);
        }
        const line = expectOneLineError(cli);
        expect(line).toContain(path.basename(input));
        return;
      }
      // Allowed to load: exactly the listed tensors, each [1, 2, 3, 4] as float32.
      expect(cli.code, cli.err).toBe(0);
      const got = rawSafetensors(dest);
      expect([...got.keys()].sort()).toEqual([...c.tensors!].sort());
      const four = Buffer.from(new Float32Array([1, 2, 3, 4]).buffer);
      for (const [k, t] of got) {
        expect(t.dtype, k).toBe('F32');
        expect(Buffer.compare(t.bytes, four), k).toBe(0);
      }
    });
  }
});
