import { mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ShardedReader,
  SafetensorsReader,
  readSafetensors,
  writeSafetensors,
  writeShardedSafetensors,
  type HostTensor,
  type LazyTensor,
} from '../src/io/safetensors.js';
import { hostTensorFromTf, toTf } from '../src/io/host-tensor.js';

const GOLDEN = resolve(import.meta.dirname, '../../shared/golden/public');

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'mgllava-safetensors-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

let fileCounter = 0;
const fresh = (name = 'f') => join(dir, `${name}-${fileCounter++}.safetensors`);

const f32 = (shape: number[], values: number[]): HostTensor => ({ dtype: 'float32', shape, data: Float32Array.from(values) });
const i32 = (shape: number[], values: number[]): HostTensor => ({ dtype: 'int32', shape, data: Int32Array.from(values) });
const ramp = (n: number, scale = 1) => Array.from({ length: n }, (_, i) => (i - n / 2) * scale);

function expectSame(actual: HostTensor, expected: HostTensor): void {
  expect(actual.dtype).toBe(expected.dtype);
  expect(actual.shape).toEqual(expected.shape);
  expect(actual.data.constructor).toBe(expected.data.constructor);
  // Object.is semantics: NaN equals NaN, -0 differs from +0.
  expect(Array.from(actual.data)).toEqual(Array.from(expected.data));
}

/** A raw file: u64 LE header length (or an override), header bytes, data. */
function rawFile(header: string | Uint8Array, data: Uint8Array = new Uint8Array(0), headerLength?: bigint): Uint8Array {
  const h = typeof header === 'string' ? new TextEncoder().encode(header) : header;
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, headerLength ?? BigInt(h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

/** A well-formed file from raw tensor bytes of any dtype, tensors laid out in the given order. */
function craft(tensors: { name: string; dtype: string; shape: number[]; bytes: Uint8Array }[]): Uint8Array {
  let pos = 0;
  const header: Record<string, unknown> = {};
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [pos, pos + t.bytes.length] };
    pos += t.bytes.length;
  }
  const data = new Uint8Array(pos);
  pos = 0;
  for (const t of tensors) {
    data.set(t.bytes, pos);
    pos += t.bytes.length;
  }
  return rawFile(JSON.stringify(header), data);
}

const bytesOf = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

async function writeBytes(bytes: Uint8Array, name = 'crafted'): Promise<string> {
  const path = fresh(name);
  await writeFile(path, bytes);
  return path;
}

describe('write + read round trip', () => {
  const tensors = new Map<string, HostTensor>([
    ['w.weight', f32([2, 3, 4], ramp(24, 0.37))],
    ['specials', f32([6], [NaN, -0, 0, Infinity, -Infinity, 1.401298464324817e-45])],
    ['scalar', f32([], [3.25])],
    ['empty', f32([0, 3], [])],
    ['ids', i32([2, 3], [0, -1, 2147483647, -2147483648, 7, 42])],
    ['int_scalar', i32([], [-5])],
  ]);

  it('F32/I32 from a Map come back equal, sorted, aligned, with metadata', async () => {
    const path = fresh('roundtrip');
    await writeSafetensors(path, tensors, { step: '12', note: 'ü "quoted"' });
    const back = await readSafetensors(path);
    expect([...back.keys()]).toEqual([...tensors.keys()].sort());
    for (const [name, t] of tensors) expectSame(back.get(name)!, t);

    const r = await SafetensorsReader.open(path);
    expect(r.metadata()).toEqual({ step: '12', note: 'ü "quoted"' });
    expect(r.info('w.weight')).toEqual({ dtype: 'F32', shape: [2, 3, 4], byteLength: 96 });
    expect(r.info('ids')).toEqual({ dtype: 'I32', shape: [2, 3], byteLength: 24 });
    await r.close();

    const bytes = await readFile(path);
    const n = Number(bytes.readBigUInt64LE(0));
    expect(n % 8).toBe(0);
    const header = bytes.subarray(8, 8 + n).toString('utf8');
    expect(header).toMatch(/^\{.*\} *$/);
    expect(JSON.parse(header).__metadata__).toEqual({ step: '12', note: 'ü "quoted"' });
    expect((await readdir(dir)).filter((f) => f.includes('.tmp-'))).toEqual([]);
  });

  it('a Record and a list of pairs work too', async () => {
    const path = fresh('record');
    const record = Object.fromEntries([
      ['b', f32([2], [1, 2])],
      ['a', i32([1], [3])],
      ['__proto__', f32([1], [9])], // an own key, not the prototype
    ]);
    await writeSafetensors(path, record);
    const back = await readSafetensors(path);
    expect([...back.keys()]).toEqual(['__proto__', 'a', 'b']);
    expectSame(back.get('__proto__')!, f32([1], [9]));

    const path2 = fresh('pairs');
    await writeSafetensors(path2, [
      ['10', f32([1], [1])],
      ['9', f32([1], [2])],
    ]);
    expect([...(await readSafetensors(path2)).keys()]).toEqual(['10', '9']);
  });

  it('rejects bad tensors on write and leaves the old file untouched', async () => {
    const path = fresh('atomic');
    await writeSafetensors(path, { keep: f32([1], [1]) });
    const before = await readFile(path);
    const bad = (t: unknown) => writeSafetensors(path, { x: t as HostTensor });
    await expect(bad({ dtype: 'float32', shape: [3], data: new Float32Array(2) })).rejects.toThrow(
      `${path}: tensor 'x': data has 2 elements, shape [3] needs 3`,
    );
    await expect(bad({ dtype: 'float32', shape: [2], data: new Int32Array(2) })).rejects.toThrow(
      'data of a float32 tensor must be a Float32Array',
    );
    await expect(bad({ dtype: 'float64', shape: [2], data: new Float64Array(2) })).rejects.toThrow(
      "dtype 'float64' is not float32 or int32",
    );
    await expect(bad({ dtype: 'int32', shape: [-1], data: new Int32Array(0) })).rejects.toThrow('shape [-1]');
    await expect(writeSafetensors(path, { __metadata__: f32([1], [1]) })).rejects.toThrow("'__metadata__' is reserved");
    await expect(writeSafetensors(path, [['a', f32([1], [1])], ['a', f32([1], [1])]])).rejects.toThrow(
      "tensor 'a': given twice",
    );
    // A lazy tensor failing half-way: the target keeps its old content and no temp file remains.
    const failing: LazyTensor = {
      dtype: 'float32',
      shape: [1],
      load: () => {
        throw new Error('export failed');
      },
    };
    await expect(writeSafetensors(path, { a: f32([4], [1, 2, 3, 4]), b: failing })).rejects.toThrow('export failed');
    expect(await readFile(path)).toEqual(before);
    expect((await readdir(dir)).filter((f) => f.includes('.tmp-'))).toEqual([]);
  });

  it('lazy tensors are loaded once each, in file order, after the header is fixed', async () => {
    const path = fresh('lazy');
    const loads: string[] = [];
    const lazy = (name: string, t: HostTensor): LazyTensor => ({
      dtype: t.dtype,
      shape: t.shape,
      load: async () => {
        loads.push(name);
        return t;
      },
    });
    const src = new Map([...tensors].map(([k, t]) => [k, lazy(k, t)] as const));
    await writeSafetensors(path, src);
    expect(loads).toEqual([...tensors.keys()].sort());
    const back = await readSafetensors(path);
    for (const [name, t] of tensors) expectSame(back.get(name)!, t);
    // A loader returning something other than it announced is caught.
    const liar: LazyTensor = { dtype: 'float32', shape: [2], load: () => f32([3], [1, 2, 3]) };
    await expect(writeSafetensors(fresh(), { liar })).rejects.toThrow('loaded tensor is float32 [3], announced float32 [2]');
  });

  it('an async iterable is streamed in arrival order', async () => {
    const path = fresh('stream');
    async function* gen() {
      yield ['z', f32([3], [1, 2, 3])] as const;
      yield ['a', i32([2], [4, 5])] as const;
    }
    await writeSafetensors(path, gen(), { kind: 'stream' });
    const r = await SafetensorsReader.open(path);
    expect(r.keys()).toEqual(['z', 'a']);
    expect(r.metadata()).toEqual({ kind: 'stream' });
    expectSame(await r.read('a'), i32([2], [4, 5]));
    await r.close();
    expect((await readdir(dir)).filter((f) => f.includes('.tmp-'))).toEqual([]);
  });
});

describe('reading other dtypes from crafted bytes', () => {
  it('F16: signed zeros, infinities, NaN, subnormals, normals', async () => {
    const halves = [0x0000, 0x8000, 0x3c00, 0xc000, 0x7c00, 0xfc00, 0x7e00, 0x0001, 0x03ff, 0x0400, 0x7bff, 0x3555];
    const expected = [0, -0, 1, -2, Infinity, -Infinity, NaN, 2 ** -24, 1023 * 2 ** -24, 2 ** -14, 65504, 0.333251953125];
    const path = await writeBytes(craft([{ name: 'h', dtype: 'F16', shape: [3, 4], bytes: bytesOf(Uint16Array.from(halves)) }]));
    const t = (await readSafetensors(path)).get('h')!;
    expectSame(t, f32([3, 4], expected));
  });

  it('BF16 and F64 widen/narrow to float32', async () => {
    const bf = Uint16Array.from([0x3f80, 0xc000, 0x8000, 0x7f80, 0xff80, 0x0001, 0x4049]);
    const f64 = Float64Array.from([1.5, -0, 1e-50, 0.1, 1e300]);
    const path = await writeBytes(
      craft([
        { name: 'bf', dtype: 'BF16', shape: [7], bytes: bytesOf(bf) },
        { name: 'd', dtype: 'F64', shape: [5], bytes: bytesOf(f64) },
      ]),
    );
    const m = await readSafetensors(path);
    expectSame(m.get('bf')!, f32([7], [1, -2, -0, Infinity, -Infinity, 2 ** -133, 3.140625]));
    expectSame(m.get('d')!, f32([5], [1.5, -0, 0, Math.fround(0.1), Infinity]));
  });

  it('I64 narrows to int32 when every value fits', async () => {
    const v = BigInt64Array.from([0n, -1n, 2147483647n, -2147483648n, 12345n]);
    const path = await writeBytes(craft([{ name: 'ids', dtype: 'I64', shape: [5], bytes: bytesOf(v) }]));
    expectSame((await readSafetensors(path)).get('ids')!, i32([5], [0, -1, 2147483647, -2147483648, 12345]));
  });

  it.each([
    [2147483648n, 1],
    [-2147483649n, 1],
    [2n ** 40n, 1],
  ])('I64 value %s out of int32 range is an error naming tensor and file', async (value, index) => {
    const v = BigInt64Array.from([7n, value, 3n]);
    const path = await writeBytes(craft([{ name: 'big_ids', dtype: 'I64', shape: [3], bytes: bytesOf(v) }]));
    const r = await SafetensorsReader.open(path);
    await expect(r.read('big_ids')).rejects.toThrow(
      `${path}: tensor 'big_ids': I64 value ${value} at element ${index} does not fit in int32`,
    );
    await r.close();
  });

  it('small integer types and BOOL widen to int32', async () => {
    const path = await writeBytes(
      craft([
        { name: 'u8', dtype: 'U8', shape: [3], bytes: Uint8Array.from([0, 1, 255]) },
        { name: 'i8', dtype: 'I8', shape: [2], bytes: bytesOf(Int8Array.from([-128, 127])) },
        { name: 'i16', dtype: 'I16', shape: [2], bytes: bytesOf(Int16Array.from([-32768, 5])) },
        { name: 'b', dtype: 'BOOL', shape: [2], bytes: Uint8Array.from([1, 0]) },
        { name: 'u32', dtype: 'U32', shape: [1], bytes: bytesOf(Uint32Array.from([2 ** 32 - 1])) },
      ]),
    );
    const r = await SafetensorsReader.open(path);
    expectSame(await r.read('u8'), i32([3], [0, 1, 255]));
    expectSame(await r.read('i8'), i32([2], [-128, 127]));
    expectSame(await r.read('i16'), i32([2], [-32768, 5]));
    expectSame(await r.read('b'), i32([2], [1, 0]));
    await expect(r.read('u32')).rejects.toThrow('U32 value 4294967295 at element 0 does not fit in int32');
    await r.close();
  });

  it('accepts a header padded with trailing spaces and zero-length tensors', async () => {
    const header = `{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"c":{"dtype":"I32","shape":[2,0],"data_offsets":[4,4]}}     `;
    const path = await writeBytes(rawFile(header, bytesOf(Float32Array.from([2.5]))));
    const m = await readSafetensors(path);
    expectSame(m.get('b')!, f32([1], [2.5]));
    expectSame(m.get('a')!, f32([0], []));
    expectSame(m.get('c')!, i32([2, 0], []));
    expect((await readSafetensors(await writeBytes(rawFile('{}')))).size).toBe(0);
  });
});

describe('rejecting malformed files', () => {
  const entry = (dtype: string, shape: unknown, offsets: unknown) =>
    JSON.stringify({ a: { dtype, shape, data_offsets: offsets } });
  const data8 = new Uint8Array(8);
  const cases: [string, () => Uint8Array, string | RegExp][] = [
    ['file shorter than 8 bytes', () => new Uint8Array(5), 'file is 5 bytes, too short for the 8-byte header length'],
    ['absurd header length', () => rawFile('{}', data8, 2n ** 40n), 'header length 1099511627776 is absurd'],
    ['header length beyond the file size', () => rawFile('{}', data8, 100n), 'header length 100 goes beyond the file size 18'],
    ['header not UTF-8', () => rawFile(Uint8Array.from([0x7b, 0xff, 0x7d])), 'header is not valid UTF-8'],
    ['header not JSON', () => rawFile('{"a": '), 'header is not valid JSON'],
    ['header not an object', () => rawFile('[1, 2]'), "header is not a JSON object (does not start with '{')"],
    ['tensor entry not an object', () => rawFile('{"a": 3}'), "tensor 'a': entry is not an object"],
    ['unknown dtype', () => rawFile(entry('F8_E4M3', [8], [0, 8]), data8), "tensor 'a': unsupported dtype 'F8_E4M3'"],
    ['shape not an array', () => rawFile(entry('U8', '8', [0, 8]), data8), `tensor 'a': shape "8" is not an array`],
    ['negative shape', () => rawFile(entry('U8', [-8], [0, 8]), data8), 'shape [-8] is not an array of non-negative safe'],
    ['fractional shape', () => rawFile(entry('U8', [2.5], [0, 8]), data8), 'shape [2.5] is not an array of non-negative'],
    ['unsafe shape', () => rawFile(entry('U8', [2 ** 53], [0, 8]), data8), 'shape [9007199254740992] is not an array'],
    ['data_offsets not a pair', () => rawFile(entry('U8', [8], [0]), data8), 'data_offsets [0] is not [begin, end]'],
    ['data_offsets not integers', () => rawFile(entry('U8', [8], [0, 8.5]), data8), 'data_offsets [0,8.5] is not [begin'],
    ['data_offsets reversed', () => rawFile(entry('U8', [8], [8, 0]), data8), 'data_offsets [8,0] is not [begin, end]'],
    ['offsets beyond the data region', () => rawFile(entry('U8', [16], [0, 16]), data8), 'data_offsets [0, 16] go beyond the data region (8 bytes)'],
    ['byte length != shape x dtype size', () => rawFile(entry('F32', [3], [0, 8]), data8), "tensor 'a': byte length 8 != 12"],
    ['element count overflow', () => rawFile(entry('F32', [2 ** 30, 2 ** 30, 2 ** 30], [0, 8]), data8), 'has an absurd element count (overflow)'],
    [
      'overlapping tensors',
      () =>
        rawFile(
          JSON.stringify({ a: { dtype: 'U8', shape: [8], data_offsets: [0, 8] }, b: { dtype: 'U8', shape: [4], data_offsets: [4, 8] } }),
          data8,
        ),
      "tensor 'b': data_offsets [4, 8] overlap tensor 'a'",
    ],
    [
      'gap between tensors',
      () =>
        rawFile(
          JSON.stringify({ a: { dtype: 'U8', shape: [2], data_offsets: [0, 2] }, b: { dtype: 'U8', shape: [4], data_offsets: [4, 8] } }),
          data8,
        ),
      "tensor 'b': gap in the data region: bytes [2, 4) belong to no tensor",
    ],
    ['trailing bytes no tensor covers', () => rawFile(entry('U8', [6], [0, 6]), data8), 'gap in the data region: bytes [6, 8) belong to no tensor'],
    ['__metadata__ values not strings', () => rawFile('{"__metadata__": {"step": 3}}'), "__metadata__['step'] is not a string"],
  ];

  it.each(cases)('%s', async (_reason, bytes, message) => {
    const path = await writeBytes(bytes());
    const err = await SafetensorsReader.open(path).then(
      () => null,
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(Error);
    expect(err!.message.startsWith(`${path}: `)).toBe(true);
    expect(err!.message).toContain(message);
  });
});

describe('reading by offset', () => {
  it('reading one tensor reads only the header and that tensor', async () => {
    const path = fresh('offsets');
    const big = f32([1024, 1024], ramp(1024 * 1024, 1e-3)); // 4 MiB
    const small = i32([10], ramp(10));
    await writeSafetensors(path, { a_big: big, b_small: small, c_tail: f32([3], [1, 2, 3]) });
    const headerLength = Number((await readFile(path)).readBigUInt64LE(0));

    // Count the bytes every FileHandle.read returns (all reads go through FileHandle.prototype.read).
    const probe = await open(path, 'r');
    const proto = Object.getPrototypeOf(probe) as { read: (...args: unknown[]) => Promise<{ bytesRead: number }> };
    await probe.close();
    const original = proto.read;
    let bytesRead = 0;
    let calls = 0;
    proto.read = async function (this: unknown, ...args: unknown[]) {
      const r = await original.apply(this, args);
      bytesRead += r.bytesRead;
      calls++;
      return r;
    };
    try {
      const r = await SafetensorsReader.open(path);
      expect(bytesRead).toBe(8 + headerLength);
      expectSame(await r.read('b_small'), small);
      expect(bytesRead).toBe(8 + headerLength + 40);
      expectSame(await r.read('c_tail'), f32([3], [1, 2, 3]));
      expect(bytesRead).toBe(8 + headerLength + 40 + 12);
      expect(calls).toBe(4);
      await r.close();
    } finally {
      proto.read = original;
    }
  });
});

describe('golden files', () => {
  it('every *.safetensors in shared/golden/public matches manifest.json', async () => {
    const manifest = JSON.parse(await readFile(join(GOLDEN, 'manifest.json'), 'utf8')) as {
      pieces: Record<
        string,
        {
          params_file?: string;
          params?: Record<string, number[]>;
          io_file?: string;
          io?: Record<string, { shape: number[]; dtype: string }>;
        }
      >;
    };
    // file -> expected name -> { shape, dtype? }
    const expected = new Map<string, Map<string, { shape: number[]; dtype?: string }>>();
    for (const piece of Object.values(manifest.pieces)) {
      if (piece.params_file) {
        expected.set(piece.params_file, new Map(Object.entries(piece.params!).map(([k, shape]) => [k, { shape }])));
      }
      if (piece.io_file) expected.set(piece.io_file, new Map(Object.entries(piece.io!)));
    }
    const files = (await readdir(GOLDEN)).filter((f) => f.endsWith('.safetensors')).sort();
    expect(files.length).toBeGreaterThan(20);
    let tensorsChecked = 0;
    for (const file of files) {
      const want = expected.get(file);
      expect(want, `${file} is not listed in manifest.json`).toBeDefined();
      const got = await readSafetensors(join(GOLDEN, file));
      expect([...got.keys()].sort(), file).toEqual([...want!.keys()].sort());
      for (const [name, t] of got) {
        const w = want!.get(name)!;
        expect(t.shape, `${file}: ${name}`).toEqual(w.shape);
        expect(t.data.length).toBe(w.shape.reduce((a, b) => a * b, 1));
        if (w.dtype) expect(t.dtype, `${file}: ${name}`).toBe(w.dtype);
        tensorsChecked++;
      }
    }
    expect(tensorsChecked).toBeGreaterThan(500);
  });
});

describe('sharded layout', () => {
  // 10 tensors of 40..400 bytes (sorted by name = sorted by size here).
  const tensors = new Map<string, HostTensor>(
    Array.from({ length: 10 }, (_, i) => [`layer.${i}.weight`, f32([i + 1, 10], ramp((i + 1) * 10, 0.5 + i))] as const),
  );

  it('splits by maxShardBytes, writes the HF index, and ShardedReader reads everything back', async () => {
    const out = join(dir, 'sharded');
    const res = await writeShardedSafetensors(out, tensors, { maxShardBytes: 600, metadata: { run: 'x' } });
    // Greedy in name order: 40+80+120+160+200 | 240+280 | 320 | 360 | 400
    const names = (await readdir(out)).sort();
    expect(names).toEqual([
      'model-00001-of-00005.safetensors',
      'model-00002-of-00005.safetensors',
      'model-00003-of-00005.safetensors',
      'model-00004-of-00005.safetensors',
      'model-00005-of-00005.safetensors',
      'model.safetensors.index.json',
    ]);
    expect(res.totalSize).toBe(2200);
    const index = JSON.parse(await readFile(join(out, 'model.safetensors.index.json'), 'utf8'));
    expect(index.metadata).toEqual({ total_size: 2200 });
    expect(index.weight_map['layer.0.weight']).toBe('model-00001-of-00005.safetensors');
    expect(index.weight_map['layer.4.weight']).toBe('model-00001-of-00005.safetensors');
    expect(index.weight_map['layer.5.weight']).toBe('model-00002-of-00005.safetensors');
    expect(index.weight_map['layer.9.weight']).toBe('model-00005-of-00005.safetensors');

    for (const target of [out, join(out, 'model.safetensors.index.json')]) {
      const r = await ShardedReader.open(target);
      expect(r.keys().sort()).toEqual([...tensors.keys()].sort());
      expect(r.files()).toHaveLength(5);
      expect(r.info('layer.4.weight')).toEqual({ dtype: 'F32', shape: [5, 10], byteLength: 200 });
      expect(r.metadata()).toEqual({ format: 'pt', run: 'x' });
      expect(r.indexMetadata()).toEqual({ total_size: 2200 });
      // Concurrent reads across shards are serialised internally.
      const names = [...tensors.keys()].reverse();
      const back = await Promise.all(names.map((n) => r.read(n)));
      names.forEach((n, i) => expectSame(back[i], tensors.get(n)!));
      await r.close();
    }
  });

  it('writes a single model.safetensors when everything fits, and removes the stale shards', async () => {
    const out = join(dir, 'resharded');
    await writeShardedSafetensors(out, tensors, { maxShardBytes: 1000 });
    expect((await readdir(out)).length).toBe(4); // 3 shards + index
    const res = await writeShardedSafetensors(out, tensors, { maxShardBytes: 1e9 });
    expect(res.index).toBeNull();
    expect(await readdir(out)).toEqual(['model.safetensors']);
    const r = await ShardedReader.open(out);
    expect(r.indexMetadata()).toBeNull();
    for (const [n, t] of tensors) expectSame(await r.read(n), t);
    await r.close();
    // And back to shards: the single file goes away.
    await writeShardedSafetensors(out, tensors, { maxShardBytes: 1000 });
    expect((await readdir(out)).sort()).toEqual([
      'model-00001-of-00003.safetensors',
      'model-00002-of-00003.safetensors',
      'model-00003-of-00003.safetensors',
      'model.safetensors.index.json',
    ]);
  });

  it('streams an async iterable into shards in arrival order', async () => {
    const out = join(dir, 'streamed');
    const order = [...tensors.keys()].reverse();
    async function* gen() {
      for (const n of order) yield [n, tensors.get(n)!] as const;
    }
    const res = await writeShardedSafetensors(out, gen(), { maxShardBytes: 800, prefix: 'adapter' });
    // reverse order: 400+360 | 320+280 | 240+200+160+120+80 | 40
    expect(res.files.map((f) => f.slice(out.length + 1))).toEqual([
      'adapter-00001-of-00004.safetensors',
      'adapter-00002-of-00004.safetensors',
      'adapter-00003-of-00004.safetensors',
      'adapter-00004-of-00004.safetensors',
    ]);
    expect((await readdir(out)).filter((f) => f.includes('.tmp-'))).toEqual([]);
    const r = await ShardedReader.open(out); // found via the only *.safetensors.index.json
    expect(r.keys()).toEqual(order);
    for (const [n, t] of tensors) expectSame(await r.read(n), t);
    await r.close();
  });

  describe('bad indexes', () => {
    async function shardedCopy(name: string): Promise<{ out: string; index: string; json: any }> {
      const out = join(dir, name);
      await writeShardedSafetensors(out, tensors, { maxShardBytes: 1000 });
      const index = join(out, 'model.safetensors.index.json');
      return { out, index, json: JSON.parse(await readFile(index, 'utf8')) };
    }

    it('weight_map naming a missing shard', async () => {
      const { index, json } = await shardedCopy('missing-shard');
      json.weight_map['layer.0.weight'] = 'model-00009-of-00009.safetensors';
      await writeFile(index, JSON.stringify(json));
      await expect(ShardedReader.open(index)).rejects.toThrow(
        `${index}: weight_map names shard 'model-00009-of-00009.safetensors', which does not exist`,
      );
    });

    it('key missing from its shard', async () => {
      const { index, json } = await shardedCopy('missing-key');
      json.weight_map['layer.99.weight'] = 'model-00001-of-00003.safetensors';
      await writeFile(index, JSON.stringify(json));
      await expect(ShardedReader.open(index)).rejects.toThrow(
        `${index}: tensor 'layer.99.weight': weight_map puts it in shard 'model-00001-of-00003.safetensors', which does not hold it`,
      );
    });

    it('shard holding a tensor the index does not list', async () => {
      const { out, index, json } = await shardedCopy('unlisted');
      delete json.weight_map['layer.0.weight'];
      await writeFile(index, JSON.stringify(json));
      await expect(ShardedReader.open(out)).rejects.toThrow(
        "model-00001-of-00003.safetensors: tensor 'layer.0.weight': not listed for this shard",
      );
    });

    it('shard paths escaping the directory', async () => {
      const { index, json } = await shardedCopy('traversal');
      json.weight_map['layer.0.weight'] = '../model-00001-of-00003.safetensors';
      await writeFile(index, JSON.stringify(json));
      await expect(ShardedReader.open(index)).rejects.toThrow("is not a file name in the index's directory");
    });

    it('a directory holding both a single file and an index', async () => {
      const { out } = await shardedCopy('ambiguous');
      await writeSafetensors(join(out, 'model.safetensors'), tensors);
      await expect(ShardedReader.open(out)).rejects.toThrow('ambiguous');
    });
  });
});

describe('tf conversion', () => {
  it('hostTensorFromTf / toTf round trip without leaks', async () => {
    const before = tf.memory().numTensors;
    const x = tf.tensor([[1.5, -2], [0, 3]]);
    const ids = tf.tensor([1, 2, 3], [3], 'int32');
    const hx = await hostTensorFromTf(x);
    const hids = await hostTensorFromTf(ids);
    expectSame(hx, f32([2, 2], [1.5, -2, 0, 3]));
    expectSame(hids, i32([3], [1, 2, 3]));
    const path = fresh('tf');
    await writeSafetensors(path, { x: hx, ids: hids });
    const back = await readSafetensors(path);
    const tx = toTf(back.get('x')!);
    const tids = toTf(back.get('ids')!);
    expect(tx.dtype).toBe('float32');
    expect(tids.dtype).toBe('int32');
    expect(tx.arraySync()).toEqual([[1.5, -2], [0, 3]]);
    expect(tids.arraySync()).toEqual([1, 2, 3]);
    const b = tf.tensor([true, false], [2], 'bool');
    await expect(hostTensorFromTf(b)).rejects.toThrow("dtype 'bool' is not float32 or int32");
    tf.dispose([x, ids, tx, tids, b]);
    expect(tf.memory().numTensors).toBe(before);
  });
});
