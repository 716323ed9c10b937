/**
 * The checkpoint reader on generated files (test/torch-gen.ts, independent of the reader): random state dicts over
 * every dtype and view kind in the zip format (any prefix, protocol-2 and protocol-4 pickles, ZIP64, deflated
 * entries, wrapped as mmengine / DeepSpeed / training checkpoints) and the legacy format; hostile variants with
 * other numbers; and a fuzz check that corrupt files fail with a one-line WeightsError, never anything else.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MgllavaError } from '../src/errors.js';
import { DEFAULT_LIMITS, unpickle, BufferSource, PyGlobal, PyObject, PyTuple } from '../src/io/pickle.js';
import { findStateDict, TorchCheckpoint } from '../src/io/torch-load.js';
import { TorchStateReader } from '../src/io/torch-reader.js';
import { Rng } from '../src/util/rng.js';
import { DTYPE_INFO, expectedBytes, legacyCheckpoint, P, randomStateDict, storagesOf, zipArchive, zipCheckpoint, type GenTensor, type Wrap } from './torch-gen.js';

let root: string;
let n = 0;
const file = async (bytes: Uint8Array, ext = '.pth'): Promise<string> => {
  const f = path.join(root, `f${n++}${ext}`);
  await writeFile(f, bytes);
  return f;
};

beforeAll(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'mgllava-torch-gen-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
  expect(existsSync('/tmp/mgllava-gen-pwned'), 'a pickled os.system call was executed').toBe(false);
});

/** Read every tensor of a generated checkpoint and compare with what the generator says it must be. */
async function expectReadsAs(f: string, tensors: GenTensor[], key: string | null): Promise<void> {
  const r = await TorchStateReader.open(f);
  try {
    expect(r.stateKey).toBe(key);
    expect(r.keys()).toEqual(tensors.map((t) => t.name));
    for (const t of tensors) {
      const info = r.info(t.name);
      expect({ name: t.name, dtype: info.dtype, shape: info.shape }).toEqual({ name: t.name, dtype: t.storage.dtype, shape: t.shape });
      const got = await r.readRaw(t.name);
      expect(Buffer.compare(Buffer.from(got), Buffer.from(expectedBytes(t))), `${t.name} [${t.shape}] stride [${t.stride}] offset ${t.offset}`).toBe(0);
    }
  } finally {
    await r.close();
  }
}

const WRAPS: Wrap[] = ['none', 'state_dict', 'module', 'model'];

describe('generated checkpoints', () => {
  for (let seed = 1; seed <= 12; seed++) {
    it(`zip, seed ${seed}`, async () => {
      const rng = new Rng(1000 + seed);
      const tensors = randomStateDict(seed);
      const wrap = WRAPS[seed % 4]!;
      const bytes = zipCheckpoint(tensors, { prefix: ['archive', 'my_model-v2', 'x', 'iter_5'][rng.int(4)], wrap, style: seed % 2 ? 2 : 4, byteorder: seed % 3 === 0 });
      await expectReadsAs(await file(bytes), tensors, wrap === 'none' ? null : wrap);
    });
  }

  for (let seed = 20; seed < 26; seed++) {
    it(`legacy format, seed ${seed}`, async () => {
      const tensors = randomStateDict(seed);
      const wrap = WRAPS[seed % 4]!;
      await expectReadsAs(await file(legacyCheckpoint(tensors, { wrap })), tensors, wrap === 'none' ? null : wrap);
    });
  }

  it('ZIP64 records (end record, locator, extra fields on every entry)', async () => {
    const tensors = randomStateDict(31);
    await expectReadsAs(await file(zipCheckpoint(tensors, { zip64: true, prefix: 'big' })), tensors, null);
  });

  it('deflated storage entries are inflated (bounded by their declared size)', async () => {
    const tensors = randomStateDict(32);
    await expectReadsAs(await file(zipCheckpoint(tensors, { deflate: true })), tensors, null);
  });

  it('a big-endian archive (byteorder "big") reads as little-endian values', async () => {
    const s = { key: '0', dtype: 'F32' as const, numel: 3, bytes: Buffer.alloc(12) };
    [1.5, -2, 3.25].forEach((v, i) => s.bytes.writeFloatBE(v, i * 4));
    const t: GenTensor = { name: 'w', storage: s, offset: 0, shape: [3], stride: [1], how: 'v2' };
    const pkl = zipCheckpoint([t]);
    // Rebuild with a byteorder entry saying big.
    const files = [
      { name: 'archive/data.pkl', data: extractEntry(pkl, 'archive/data.pkl') },
      { name: 'archive/byteorder', data: Buffer.from('big') },
      { name: 'archive/data/0', data: s.bytes },
    ];
    const r = await TorchStateReader.open(await file(zipArchive(files)));
    expect(Array.from((await r.read('w')).data)).toEqual([1.5, -2, 3.25]);
    await r.close();
  });

  it('the fixture-style mmengine wrap keeps foreign objects inert: meta and message_hub load as data', async () => {
    const tensors = randomStateDict(33);
    const ck = await TorchCheckpoint.open(await file(zipCheckpoint(tensors, { wrap: 'state_dict' })));
    try {
      const top = ck.root as Map<string, unknown>;
      const hub = top.get('message_hub');
      expect(hub).toBeInstanceOf(PyObject);
      const call = (hub as PyObject).items.get('log') as PyObject;
      expect(call.callee).toEqual(new PyGlobal('os', 'system'));
      expect(call.how).toBe('call');
      expect(call.args).toEqual(new PyTuple(['touch /tmp/mgllava-gen-pwned']));
      const cfg = (top.get('meta') as Map<string, unknown>).get('config') as PyObject;
      expect(cfg.callee.path).toBe('mmengine.config.config.ConfigDict');
      expect(cfg.items.get('type')).toBe('MultiFuseObjectLLaVAModel');
      expect(findStateDict(ck.file, ck.root).key).toBe('state_dict');
    } finally {
      await ck.close();
    }
  });
});

/** The content of a stored entry of a test archive (local header at its central directory offset). */
function extractEntry(zip: Buffer, name: string): Buffer {
  let p = zip.lastIndexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02]));
  // walk central directory from its start
  const end = zip.lastIndexOf(Buffer.from([0x50, 0x4b, 0x05, 0x06]));
  p = zip.readUInt32LE(end + 16);
  for (;;) {
    const nameLen = zip.readUInt16LE(p + 28);
    const entry = zip.subarray(p + 46, p + 46 + nameLen).toString();
    const size = zip.readUInt32LE(p + 24);
    const off = zip.readUInt32LE(p + 42);
    if (entry === name) {
      const start = off + 30 + zip.readUInt16LE(off + 26) + zip.readUInt16LE(off + 28);
      return zip.subarray(start, start + size);
    }
    p += 46 + nameLen + zip.readUInt16LE(p + 30) + zip.readUInt16LE(p + 32);
  }
}

// --- hostile variants -------------------------------------------------------------------------------------------

/** A checkpoint must be refused with a one-line MgllavaError naming the file (and containing `fragment`). */
async function expectRefused(f: string, fragment: RegExp): Promise<string> {
  const err = await TorchStateReader.open(f).then(
    async (r) => {
      await r.close();
      return null;
    },
    (e: unknown) => e,
  );
  expect(err, `${f} was accepted`).toBeInstanceOf(MgllavaError);
  const msg = (err as Error).message;
  expect(msg).not.toContain('\n');
  expect(msg).toContain(f);
  expect(msg).toMatch(fragment);
  return msg;
}

function storageOf(dtype: keyof typeof DTYPE_INFO, values: number): GenTensor['storage'] {
  return { key: '0', dtype, numel: values, bytes: new Uint8Array(values * DTYPE_INFO[dtype].size) };
}

describe('hostile generated checkpoints', () => {
  it('a storage claiming more elements than its entry holds is refused before allocating', async () => {
    for (const [dtype, claim] of [['F16', 3_000_000_000], ['I64', 123_456_789], ['F32', 2 ** 40]] as const) {
      const s = { ...storageOf(dtype, 2), numel: claim };
      const t: GenTensor = { name: 'w', storage: s, offset: 0, shape: [claim], stride: [1], how: 'v2' };
      const bytes = zipCheckpoint([t]);
      await expectRefused(await file(bytes), /claims \d+ .*Storage elements/);
    }
  });

  it('views reaching past their storage are refused (offset, stride, size)', async () => {
    const cases: [number, number[], number[]][] = [
      [7, [2, 3], [3, 1]],
      [0, [5, 5], [5, 1]],
      [0, [2, 2], [100, 1]],
      [24, [0], [1]],
      [0, [3, 2], [1, 4]],
    ];
    for (const [offset, shape, stride] of cases) {
      const t: GenTensor = { name: 'v', storage: storageOf('F32', 6), offset, shape, stride, how: 'v2' };
      await expectRefused(await file(zipCheckpoint([t])), /reaches element \d+ of storage '0', which has 6/);
    }
  });

  it('a stride-0 view may not blow a tiny storage up to gigabytes', async () => {
    const t: GenTensor = { name: 'e', storage: storageOf('F32', 1), offset: 0, shape: [100_000, 100_000], stride: [0, 0], how: 'v2' };
    await expectRefused(await file(zipCheckpoint([t])), /would expand 4 bytes of storage '0' to 40000000000 bytes/);
    const ok: GenTensor = { ...t, shape: [3, 5] };
    await expectReadsAs(await file(zipCheckpoint([ok])), [ok], null);
  });

  it('a pickle naming a storage the archive lacks is refused', async () => {
    const s = storageOf('F32', 4);
    const t: GenTensor = { name: 'w', storage: { ...s, key: '42' }, offset: 0, shape: [4], stride: [1], how: 'v2' };
    const bytes = zipArchive([
      { name: 'ck/data.pkl', data: extractEntry(zipCheckpoint([t], { prefix: 'ck' }), 'ck/data.pkl') },
      { name: 'ck/data/0', data: s.bytes },
    ]);
    await expectRefused(await file(bytes), /storage '42', which is not in the archive/);
    // legacy: a storage the key list does not name
    const legacy = legacyCheckpoint([t]);
    const cut = Buffer.from(legacy);
    const at = cut.indexOf(Buffer.from('42'), cut.length - 40);
    cut.write('43', at); // the key list now names another storage
    await expectRefused(await file(cut), /storage list names '43'|not in the file's storage list/);
  });

  it('deep nesting fails cleanly whichever way it is built (no stack overflow)', async () => {
    const depth = 50_000 + new Rng(7).int(100_000);
    const stacked = new P().proto().raw(...new Array<number>(depth).fill(0x5d)).stop(); // [] [] [] ...
    const appended = new P().proto().raw(0x5d, ...new Array<number>(depth).fill(0).flatMap(() => [0x5d])).raw(...new Array<number>(depth).fill(0x61)).stop();
    const marks = new P().proto().raw(...new Array<number>(depth).fill(0x28)).stop();
    const tuples = new P().proto().raw(0x29, ...new Array<number>(depth).fill(0x85)).stop(); // ((((),),),)...
    for (const [pkl, why] of [[stacked, /values on the stack|more than/], [appended, /nested more than 1000 deep/], [marks, /MARKs/], [tuples, /nested more than 1000 deep/]] as const) {
      const f = await file(zipArchive([{ name: 'a/data.pkl', data: pkl }]));
      await expectRefused(f, why);
    }
  });

  it('__proto__ / constructor keys stay plain keys; nothing is polluted', async () => {
    const t: GenTensor = { name: '__proto__', storage: storageOf('F32', 4), offset: 0, shape: [4], stride: [1], how: 'v2' };
    const u: GenTensor = { name: 'constructor', storage: t.storage, offset: 0, shape: [2, 2], stride: [2, 1], how: 'v2' };
    const r = await TorchStateReader.open(await file(zipCheckpoint([t, u])));
    expect(r.keys()).toEqual(['__proto__', 'constructor']);
    expect(r.info('__proto__').shape).toEqual([4]);
    await r.close();
    expect(({} as Record<string, unknown>).shape).toBeUndefined();
    expect(Object.prototype.hasOwnProperty.call(Object.prototype, 'dtype')).toBe(false);
  });

  it('calls of any unknown global stay inert, wherever they appear', async () => {
    for (const [m, name] of [['os', 'system'], ['builtins', 'exec'], ['subprocess', 'Popen'], ['torch', 'load'], ['__builtin__', 'eval']]) {
      const p = new P().proto().global(m!, name!).str('print(1)').raw(0x85, 0x52).stop();
      const v = unpickle(new BufferSource(p, 'x'), { global: (a, b) => new PyGlobal(a, b), persistentLoad: () => null, call: () => { throw new Error('called'); } }, 'x');
      expect(v).toBeInstanceOf(PyObject);
    }
    // A rebuild whose storage is an inert call is refused, not run.
    const pkl = new P().proto().global('torch._utils', '_rebuild_tensor_v2').mark().global('os', 'system').str('x').raw(0x85, 0x52).int(0).intTuple([1]).intTuple([1]).bool(false).orderedDict().tuple().raw(0x52).stop();
    await expectRefused(await file(zipArchive([{ name: 'a/data.pkl', data: pkl }])), /storage argument is a call of os.system/);
  });

  it('truncated at any point: one clear line', async () => {
    const tensors = randomStateDict(40);
    for (const bytes of [zipCheckpoint(tensors), legacyCheckpoint(tensors)]) {
      for (const frac of [0.05, 0.3, 0.6, 0.9, 0.999]) {
        await expectRefused(await file(bytes.subarray(0, Math.floor(bytes.length * frac))), /truncated|end of file|not a PyTorch checkpoint|malformed pickle/);
      }
    }
  });

  it('a deflate entry that inflates past its declared size is refused', async () => {
    const data = new Uint8Array(64).fill(7);
    const pkl = new P().proto().orderedDict().mark().str('w');
    pkl.global('torch._utils', '_rebuild_tensor_v2').mark().mark().str('storage').global('torch', 'ByteStorage').str('0').str('cpu').int(8).tuple().raw(0x51).int(0).intTuple([8]).intTuple([1]).bool(false).orderedDict().tuple().raw(0x52).raw(0x75);
    const withTensor = zipArchive([{ name: 'a/data.pkl', data: pkl.stop() }, { name: 'a/data/0', data, deflate: true }]);
    // Lower the declared size of data/0 in the central directory to 8: inflating must stop at that bound.
    const shrunk = Buffer.from(withTensor);
    const cd2 = shrunk.readUInt32LE(shrunk.length - 22 + 16);
    const second2 = cd2 + 46 + shrunk.readUInt16LE(cd2 + 28) + shrunk.readUInt16LE(cd2 + 30);
    shrunk.writeUInt32LE(8, second2 + 24);
    const r = await TorchStateReader.open(await file(shrunk));
    await expect(r.readRaw('w')).rejects.toThrow(/cannot inflate|holds \d+ bytes/);
    await r.close();
  });
});

describe('fuzz: corrupt files fail with a WeightsError or load, never anything else', () => {
  it('random byte changes in zip and legacy checkpoints', async () => {
    const rng = new Rng(99);
    let refused = 0;
    for (let i = 0; i < 150; i++) {
      const tensors = randomStateDict(100 + (i % 10));
      const base = i % 3 === 0 ? legacyCheckpoint(tensors) : zipCheckpoint(tensors, { style: i % 2 ? 2 : 4 });
      const bytes = Buffer.from(base);
      const flips = 1 + rng.int(4);
      // Hit the pickle most of the time (the first ~40 % of the file), anywhere otherwise.
      for (let k = 0; k < flips; k++) bytes[rng.int(rng.int(3) ? Math.floor(bytes.length * 0.4) : bytes.length)] = rng.int(256);
      const f = await file(bytes);
      try {
        const r = await TorchStateReader.open(f);
        try {
          for (const name of r.keys()) await r.readRaw(name).catch((e: unknown) => {
            if (!(e instanceof MgllavaError)) throw e;
          });
        } finally {
          await r.close();
        }
      } catch (e) {
        if (!(e instanceof MgllavaError)) throw new Error(`file ${i}: ${(e as Error).stack}`);
        expect((e as Error).message).not.toContain('\n');
        refused++;
      }
    }
    expect(refused).toBeGreaterThan(20);
  });

  it('random opcode soup never escapes the VM', () => {
    const rng = new Rng(5);
    const hooks = { global: (a: string, b: string) => new PyGlobal(a, b), persistentLoad: () => null, call: () => null };
    for (let i = 0; i < 2000; i++) {
      const body = Array.from({ length: 1 + rng.int(60) }, () => rng.int(256));
      try {
        unpickle(new BufferSource(Uint8Array.from([0x80, 2, ...body, 0x2e]), 'soup'), hooks, 'soup', { ...DEFAULT_LIMITS, maxStack: 1000 });
      } catch (e) {
        if (!(e instanceof MgllavaError)) throw new Error(`soup ${i} [${body}]: ${(e as Error).stack}`);
      }
    }
  });
});

describe('storages shared between tensors and names', () => {
  it('one storage under several keys reads the same bytes for each', async () => {
    const s = { key: '0', dtype: 'BF16' as const, numel: 12, bytes: Uint8Array.from({ length: 24 }, (_, i) => i * 7) };
    const ts: GenTensor[] = [
      { name: 'embed.weight', storage: s, offset: 0, shape: [3, 4], stride: [4, 1], how: 'v2' },
      { name: 'lm_head.weight', storage: s, offset: 0, shape: [3, 4], stride: [4, 1], how: 'parameter' },
      { name: 'tail', storage: s, offset: 8, shape: [4], stride: [1], how: 'v1' },
    ];
    expect(storagesOf(ts)).toHaveLength(1);
    await expectReadsAs(await file(zipCheckpoint(ts)), ts, null);
    await expectReadsAs(await file(legacyCheckpoint(ts)), ts, null);
  });
});
