/**
 * Test generator of PyTorch checkpoints, independent of the reader: a minimal pickle writer, a zip writer (stored or
 * deflated entries, any prefix, optional ZIP64), the legacy (pre-1.6) layout, and random state dicts with every dtype,
 * shared storages, offsets, transposed / strided / stride-0 / empty / 0-d views, and the contiguous bytes each tensor
 * must read back as (computed element by element here).
 */
import { crc32, deflateRawSync } from 'node:zlib';
import { Rng } from '../src/util/rng.js';

export type DType = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

export const DTYPE_INFO: Record<DType, { size: number; storage: string; torch: string }> = {
  F64: { size: 8, storage: 'DoubleStorage', torch: 'float64' },
  F32: { size: 4, storage: 'FloatStorage', torch: 'float32' },
  F16: { size: 2, storage: 'HalfStorage', torch: 'float16' },
  BF16: { size: 2, storage: 'BFloat16Storage', torch: 'bfloat16' },
  I64: { size: 8, storage: 'LongStorage', torch: 'int64' },
  I32: { size: 4, storage: 'IntStorage', torch: 'int32' },
  I16: { size: 2, storage: 'ShortStorage', torch: 'int16' },
  I8: { size: 1, storage: 'CharStorage', torch: 'int8' },
  U8: { size: 1, storage: 'ByteStorage', torch: 'uint8' },
  BOOL: { size: 1, storage: 'BoolStorage', torch: 'bool' },
};
export const DTYPES = Object.keys(DTYPE_INFO) as DType[];

// --- pickle writer ------------------------------------------------------------------------------------------

/** Appends opcodes; `style` picks protocol-2 or protocol-4 spellings (SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL). */
export class P {
  private readonly parts: number[] = [];
  private memo = 0;

  constructor(readonly style: 2 | 4 = 2) {}

  raw(...bytes: number[]): this {
    for (const b of bytes) this.parts.push(b);
    return this;
  }

  bytes(b: Uint8Array): this {
    for (const x of b) this.parts.push(x);
    return this;
  }

  u32(n: number): this {
    return this.raw(n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff);
  }

  proto(): this {
    return this.raw(0x80, this.style);
  }

  str(s: string): this {
    const b = Buffer.from(s, 'utf8');
    if (this.style === 4 && b.length < 256) return this.raw(0x8c, b.length).bytes(b);
    return this.raw(0x58).u32(b.length).bytes(b);
  }

  int(n: number): this {
    if (n >= 0 && n < 256) return this.raw(0x4b, n);
    if (n >= 0 && n < 65536) return this.raw(0x4d, n & 0xff, n >> 8);
    if (n >= -(2 ** 31) && n < 2 ** 31) return this.raw(0x4a).u32(n >>> 0);
    const b = Buffer.alloc(8);
    b.writeBigInt64LE(BigInt(n));
    return this.raw(0x8a, 8).bytes(b);
  }

  float(x: number): this {
    const b = Buffer.alloc(8);
    b.writeDoubleBE(x);
    return this.raw(0x47).bytes(b);
  }

  none(): this {
    return this.raw(0x4e);
  }

  bool(v: boolean): this {
    return this.raw(v ? 0x88 : 0x89);
  }

  mark(): this {
    return this.raw(0x28);
  }

  tuple(): this {
    return this.raw(0x74);
  }

  /** Memoize the top of the stack; returns its index for `get`. */
  put(): number {
    const i = this.memo++;
    if (this.style === 4) this.raw(0x94);
    else if (i < 256) this.raw(0x71, i);
    else this.raw(0x72).u32(i);
    return i;
  }

  get(i: number): this {
    return i < 256 ? this.raw(0x68, i) : this.raw(0x6a).u32(i);
  }

  global(module: string, name: string): this {
    if (this.style === 4) return this.str(module).str(name).raw(0x93);
    return this.raw(0x63).bytes(Buffer.from(`${module}\n${name}\n`, 'utf8'));
  }

  intTuple(xs: readonly number[]): this {
    if (xs.length === 0) return this.raw(0x29);
    if (xs.length <= 3) {
      for (const x of xs) this.int(x);
      return this.raw(0x85 + xs.length - 1);
    }
    this.mark();
    for (const x of xs) this.int(x);
    return this.tuple();
  }

  /** `collections.OrderedDict()` */
  orderedDict(): this {
    return this.global('collections', 'OrderedDict').raw(0x29, 0x52);
  }

  stop(): Uint8Array {
    this.raw(0x2e);
    return Uint8Array.from(this.parts);
  }
}

// --- tensors and state dicts -----------------------------------------------------------------------------------

export interface GenStorage {
  key: string;
  dtype: DType;
  numel: number;
  bytes: Uint8Array;
}

export interface GenTensor {
  name: string;
  storage: GenStorage;
  offset: number;
  shape: number[];
  stride: number[];
  /** How the pickle rebuilds it. */
  how: 'v2' | 'parameter' | 'from_type' | 'v1' | 'size';
}

/** The contiguous bytes a tensor view reads as, element by element. */
export function expectedBytes(t: GenTensor): Uint8Array {
  const es = DTYPE_INFO[t.storage.dtype].size;
  const n = t.shape.reduce((a, b) => a * b, 1);
  const out = new Uint8Array(n * es);
  for (let i = 0; i < n; i++) {
    let rem = i;
    let src = t.offset;
    for (let d = t.shape.length - 1; d >= 0; d--) {
      src += (rem % t.shape[d]!) * t.stride[d]!;
      rem = Math.floor(rem / t.shape[d]!);
    }
    out.set(t.storage.bytes.subarray(src * es, src * es + es), i * es);
  }
  return out;
}

/** Random raw elements of a dtype (bool: 0/1). */
function randomBytes(rng: Rng, dtype: DType, numel: number): Uint8Array {
  const b = new Uint8Array(numel * DTYPE_INFO[dtype].size);
  for (let i = 0; i < b.length; i++) b[i] = dtype === 'BOOL' ? rng.int(2) : rng.int(256);
  return b;
}

const contiguous = (shape: number[]): number[] => {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= Math.max(1, shape[i]!);
  }
  return s;
};

/** A random state dict: 3-9 tensors of random dtypes and view kinds over fresh or shared storages. */
export function randomStateDict(seed: number): GenTensor[] {
  const rng = new Rng(seed);
  const storages: GenStorage[] = [];
  const tensors: GenTensor[] = [];
  const newStorage = (dtype: DType, numel: number): GenStorage => {
    const s = { key: String(storages.length), dtype, numel, bytes: randomBytes(rng, dtype, numel) };
    storages.push(s);
    return s;
  };
  const hows: GenTensor['how'][] = ['v2', 'v2', 'v2', 'parameter', 'from_type', 'v1', 'size'];
  const count = 3 + rng.int(7);
  for (let i = 0; i < count; i++) {
    const dtype = DTYPES[rng.int(DTYPES.length)]!;
    const how = hows[rng.int(hows.length)]!;
    const name = `${['encoder', 'decoder', 'head', 'blocks.3', 'norm'][rng.int(5)]}.${i}.${['weight', 'bias', 'scale'][rng.int(3)]}`;
    const kind = rng.int(9);
    const r = 1 + rng.int(6);
    const c = 1 + rng.int(7);
    let t: Omit<GenTensor, 'name' | 'how'>;
    if (kind === 0 && tensors.length > 0) {
      // tied: the same view of an existing storage under another name
      const prev = tensors[rng.int(tensors.length)]!;
      t = { storage: prev.storage, offset: prev.offset, shape: [...prev.shape], stride: [...prev.stride] };
    } else if (kind === 1) {
      // rows of a bigger storage (offset > 0)
      const s = newStorage(dtype, (r + 3) * c);
      t = { storage: s, offset: 2 * c, shape: [r, c], stride: [c, 1] };
    } else if (kind === 2) {
      // transposed
      const s = newStorage(dtype, r * c);
      t = { storage: s, offset: 0, shape: [c, r], stride: [1, c] };
    } else if (kind === 3) {
      // every other row and column, from an offset
      const s = newStorage(dtype, (2 * r + 1) * (2 * c + 1));
      t = { storage: s, offset: 1, shape: [r, c], stride: [2 * (2 * c + 1), 2] };
    } else if (kind === 4) {
      // expanded: stride 0
      const s = newStorage(dtype, c);
      t = { storage: s, offset: 0, shape: [r, c], stride: [0, 1] };
    } else if (kind === 5) {
      // 0-d
      const s = newStorage(dtype, 3);
      t = { storage: s, offset: rng.int(3), shape: [], stride: [] };
    } else if (kind === 6) {
      // empty
      const s = newStorage(dtype, 0);
      t = { storage: s, offset: 0, shape: [0, c], stride: [c, 1] };
    } else if (kind === 7) {
      // 3-d permuted with a size-1 dim
      const s = newStorage(dtype, r * c * 2);
      t = { storage: s, offset: 0, shape: [2, 1, r * c], stride: [1, 7, 2] };
    } else {
      const shape = [r, c, 1 + rng.int(3)];
      const s = newStorage(dtype, shape[0]! * shape[1]! * shape[2]!);
      t = { storage: s, offset: 0, shape, stride: contiguous(shape) };
    }
    tensors.push({ ...t, name, how });
  }
  // Names must be unique keys.
  const seen = new Set<string>();
  return tensors.filter((t) => !seen.has(t.name) && seen.add(t.name));
}

/**
 * A tensor's pickle: `_rebuild_tensor_v2(pid, offset, size, stride, False, OrderedDict())` or one of the other
 * rebuild paths torch uses. `pid` is written by `persistentId` (5 fields for zip, 6 for legacy).
 */
function tensorPickle(p: P, t: GenTensor, legacy: boolean, storageMemo: Map<string, number>): void {
  const pid = () => {
    const known = storageMemo.get(t.storage.key);
    if (known !== undefined) {
      p.get(known);
    } else {
      p.mark().str('storage').global('torch', DTYPE_INFO[t.storage.dtype].storage).str(t.storage.key).str('cpu').int(t.storage.numel);
      if (legacy) p.none();
      p.tuple();
      storageMemo.set(t.storage.key, p.put());
    }
    p.raw(0x51); // BINPERSID
  };
  const size = () => (t.how === 'size' ? p.global('torch', 'Size').intTuple(t.shape).raw(0x85, 0x52) : p.intTuple(t.shape));
  const v2 = () => {
    p.global('torch._utils', '_rebuild_tensor_v2').mark();
    pid();
    p.int(t.offset);
    size();
    p.intTuple(t.stride).bool(false).orderedDict().tuple().raw(0x52);
  };
  if (t.how === 'v1') {
    p.global('torch._utils', '_rebuild_tensor').mark();
    pid();
    p.int(t.offset).intTuple(t.shape).intTuple(t.stride).tuple().raw(0x52);
  } else if (t.how === 'parameter') {
    p.global('torch._utils', '_rebuild_parameter').mark();
    v2();
    p.bool(true).orderedDict().tuple().raw(0x52);
  } else if (t.how === 'from_type') {
    p.global('torch._tensor', '_rebuild_from_type_v2').mark().global('torch._utils', '_rebuild_tensor_v2').global('torch', 'Tensor').mark();
    pid();
    p.int(t.offset).intTuple(t.shape).intTuple(t.stride).bool(false).orderedDict().tuple();
    p.raw(0x7d).tuple().raw(0x52); // state {}
  } else {
    v2();
  }
}

export type Wrap = 'none' | 'state_dict' | 'module' | 'model';

/** The object pickle: the state dict, optionally wrapped as mmengine / DeepSpeed / a training checkpoint would. */
export function objectPickle(tensors: GenTensor[], o: { wrap?: Wrap; style?: 2 | 4; legacy?: boolean } = {}): Uint8Array {
  const p = new P(o.style ?? 2).proto();
  const wrap = o.wrap ?? 'none';
  const storageMemo = new Map<string, number>();
  const stateDict = () => {
    p.orderedDict();
    p.put();
    if (tensors.length) {
      p.mark();
      for (const t of tensors) {
        p.str(t.name);
        tensorPickle(p, t, o.legacy ?? false, storageMemo);
      }
      p.raw(0x75);
    }
  };
  if (wrap === 'none') {
    stateDict();
    return p.stop();
  }
  p.raw(0x7d).put();
  p.mark();
  if (wrap === 'state_dict') {
    // mmengine: meta with a foreign class instance (dict subclass via NEWOBJ + SETITEMS) and a message hub
    p.str('meta').raw(0x7d).mark().str('iter').int(10805).str('config').global('mmengine.config.config', 'ConfigDict').raw(0x29, 0x81);
    p.mark().str('type').str('MultiFuseObjectLLaVAModel').raw(0x75).raw(0x75);
    p.str('message_hub').global('mmengine.logging.message_hub', 'MessageHub').raw(0x29, 0x81).mark().str('log').global('os', 'system').str('touch /tmp/mgllava-gen-pwned').raw(0x85, 0x52).raw(0x75);
    p.raw(0x7d).raw(0x62); // BUILD with a state
  } else if (wrap === 'module') {
    p.str('buffer_names').raw(0x5d).str('global_steps').int(100).str('ds_version').str('0.12.6').str('optimizer').none();
  } else {
    p.str('epoch').int(3).str('history').raw(0x5d).mark().float(0.9).float(0.5).raw(0x65).str('args').raw(0x7d).mark().str('lr').float(1e-3).raw(0x75);
  }
  p.str(wrap);
  stateDict();
  p.raw(0x75);
  return p.stop();
}

/** The distinct storages of a state dict, in key order. */
export function storagesOf(tensors: GenTensor[]): GenStorage[] {
  const m = new Map<string, GenStorage>();
  for (const t of tensors) m.set(t.storage.key, t.storage);
  return [...m.values()];
}

// --- containers ------------------------------------------------------------------------------------------------

export interface ZipFile {
  name: string;
  data: Uint8Array;
  deflate?: boolean;
}

/** A zip archive (stored or deflated entries); `zip64` writes ZIP64 extra fields and end records for everything. */
export function zipArchive(files: ZipFile[], o: { zip64?: boolean } = {}): Buffer {
  const parts: Buffer[] = [];
  const central: Buffer[] = [];
  let pos = 0;
  for (const f of files) {
    const name = Buffer.from(f.name, 'utf8');
    const body = f.deflate ? deflateRawSync(f.data) : Buffer.from(f.data);
    const crc = crc32(f.data) >>> 0;
    const z64 = o.zip64 ?? false;
    const extra = z64 ? Buffer.alloc(20) : Buffer.alloc(0);
    if (z64) {
      extra.writeUInt16LE(1, 0);
      extra.writeUInt16LE(16, 2);
      extra.writeBigUInt64LE(BigInt(f.data.length), 4);
      extra.writeBigUInt64LE(BigInt(body.length), 12);
    }
    const h = Buffer.alloc(30);
    h.writeUInt32LE(0x04034b50, 0);
    h.writeUInt16LE(z64 ? 45 : 20, 4);
    h.writeUInt16LE(f.deflate ? 8 : 0, 8);
    h.writeUInt32LE(crc, 14);
    h.writeUInt32LE(z64 ? 0xffffffff : body.length, 18);
    h.writeUInt32LE(z64 ? 0xffffffff : f.data.length, 22);
    h.writeUInt16LE(name.length, 26);
    h.writeUInt16LE(extra.length, 28);
    const offset = pos;
    parts.push(h, name, extra, body);
    pos += h.length + name.length + extra.length + body.length;
    const cextra = z64 ? Buffer.alloc(28) : Buffer.alloc(0);
    if (z64) {
      cextra.writeUInt16LE(1, 0);
      cextra.writeUInt16LE(24, 2);
      cextra.writeBigUInt64LE(BigInt(f.data.length), 4);
      cextra.writeBigUInt64LE(BigInt(body.length), 12);
      cextra.writeBigUInt64LE(BigInt(offset), 20);
    }
    const c = Buffer.alloc(46);
    c.writeUInt32LE(0x02014b50, 0);
    c.writeUInt16LE(z64 ? 45 : 20, 4);
    c.writeUInt16LE(z64 ? 45 : 20, 6);
    c.writeUInt16LE(f.deflate ? 8 : 0, 10);
    c.writeUInt32LE(crc, 16);
    c.writeUInt32LE(z64 ? 0xffffffff : body.length, 20);
    c.writeUInt32LE(z64 ? 0xffffffff : f.data.length, 24);
    c.writeUInt16LE(name.length, 28);
    c.writeUInt16LE(cextra.length, 30);
    c.writeUInt32LE(z64 ? 0xffffffff : offset, 42);
    central.push(c, name, cextra);
  }
  const cd = Buffer.concat(central);
  const cdStart = pos;
  const tail: Buffer[] = [cd];
  if (o.zip64) {
    const rec = Buffer.alloc(56);
    rec.writeUInt32LE(0x06064b50, 0);
    rec.writeBigUInt64LE(44n, 4);
    rec.writeBigUInt64LE(BigInt(files.length), 24);
    rec.writeBigUInt64LE(BigInt(files.length), 32);
    rec.writeBigUInt64LE(BigInt(cd.length), 40);
    rec.writeBigUInt64LE(BigInt(cdStart), 48);
    const loc = Buffer.alloc(20);
    loc.writeUInt32LE(0x07064b50, 0);
    loc.writeBigUInt64LE(BigInt(cdStart + cd.length), 8);
    loc.writeUInt32LE(1, 16);
    tail.push(rec, loc);
  }
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(o.zip64 ? 0xffff : files.length, 8);
  end.writeUInt16LE(o.zip64 ? 0xffff : files.length, 10);
  end.writeUInt32LE(o.zip64 ? 0xffffffff : cd.length, 12);
  end.writeUInt32LE(o.zip64 ? 0xffffffff : cdStart, 16);
  tail.push(end);
  return Buffer.concat([...parts, ...tail]);
}

export interface ZipCheckpointOptions {
  prefix?: string;
  wrap?: Wrap;
  style?: 2 | 4;
  zip64?: boolean;
  /** Deflate the storage entries (torch never does). */
  deflate?: boolean;
  byteorder?: boolean;
}

/** A torch >= 1.6 checkpoint (zip) of a state dict. */
export function zipCheckpoint(tensors: GenTensor[], o: ZipCheckpointOptions = {}): Buffer {
  const prefix = o.prefix ?? 'archive';
  const files: ZipFile[] = [{ name: `${prefix}/data.pkl`, data: objectPickle(tensors, { wrap: o.wrap, style: o.style }) }];
  if (o.byteorder) files.push({ name: `${prefix}/byteorder`, data: Buffer.from('little') });
  for (const s of storagesOf(tensors)) files.push({ name: `${prefix}/data/${s.key}`, data: s.bytes, deflate: o.deflate });
  files.push({ name: `${prefix}/version`, data: Buffer.from('3\n') });
  return zipArchive(files, { zip64: o.zip64 });
}

/** A pre-1.6 checkpoint: magic, protocol, sys_info, object, sorted storage keys, then count + elements per storage. */
export function legacyCheckpoint(tensors: GenTensor[], o: { wrap?: Wrap } = {}): Buffer {
  const magic = new P().proto().raw(0x8a, 10).bytes(Buffer.from('6cfc9c46f9206aa85019', 'hex')).stop();
  const protocol = new P().proto().int(1001).stop();
  const sys = new P().proto().raw(0x7d).mark().str('protocol_version').int(1001).str('little_endian').bool(true);
  sys.str('type_sizes').raw(0x7d).mark().str('short').int(2).str('int').int(4).str('long').int(4).raw(0x75).raw(0x75);
  const storages = storagesOf(tensors).sort((a, b) => (a.key < b.key ? -1 : 1));
  const keys = new P().proto().raw(0x5d).mark();
  for (const s of storages) keys.str(s.key);
  keys.raw(0x65);
  const parts: Uint8Array[] = [magic, protocol, sys.stop(), objectPickle(tensors, { wrap: o.wrap, legacy: true }), keys.stop()];
  for (const s of storages) {
    const n = Buffer.alloc(8);
    n.writeBigInt64LE(BigInt(s.numel));
    parts.push(n, s.bytes);
  }
  return Buffer.concat(parts);
}
