/**
 * A PyTorch-loadable `.pth` writer for state dicts (what `torch.save({'state_dict': ..., 'meta': ...})` makes,
 * mmengine style), so the exported MG-LLaVA modules load with `torch.load` in the reference code.
 *
 * Format (torch >= 1.6 zip serialization; loads in torch 1.13 .. 2.x, also with `weights_only=True`):
 *   zip (stored, no compression) with
 *     archive/data.pkl    pickle (protocol 2) of the object; each tensor is
 *                         `torch._utils._rebuild_tensor_v2(<persistent id>, 0, size, stride, False, OrderedDict())`
 *                         with persistent id ('storage', torch.FloatStorage|IntStorage, '<key>', 'cpu', numel)
 *     archive/byteorder   'little'
 *     archive/data/<key>  raw little-endian storage bytes, 64-byte aligned in the file (as torch writes them)
 *     archive/version     '3'
 * Zip64 structures are written when a size or offset needs them (checkpoints over 4 GiB).
 * Tensors are written one at a time (lazy tensors are loaded when their record is written).
 */
import { open, rename, type FileHandle } from 'node:fs/promises';
import { crc32 } from 'node:zlib';
import { elementCount, type HostTensor } from './dtype.js';
import { removeQuietly, tempName, type TensorValue } from './safetensors-write.js';

export type PickleScalar = string | number | boolean | null;

export interface PthOptions {
  /** The `meta` dict next to `state_dict` (mmengine keeps epoch/iter/seed/... there). */
  meta?: Record<string, PickleScalar>;
  /** Zip64 records even when sizes fit in 32 bits (tests exercise the large-file path with it). */
  forceZip64?: boolean;
}

// --- pickle (protocol 2) --------------------------------------------------------------------------------

const OP = {
  PROTO: 0x80,
  STOP: 0x2e, // .
  MARK: 0x28, // (
  EMPTY_DICT: 0x7d, // }
  EMPTY_TUPLE: 0x29, // )
  SETITEMS: 0x75, // u
  TUPLE: 0x74, // t
  GLOBAL: 0x63, // c
  REDUCE: 0x52, // R
  BINPERSID: 0x51, // Q
  BININT: 0x4a, // J
  BININT1: 0x4b, // K
  BININT2: 0x4d, // M
  LONG1: 0x8a,
  BINFLOAT: 0x47, // G
  BINUNICODE: 0x58, // X
  NONE: 0x4e, // N
  NEWTRUE: 0x88,
  NEWFALSE: 0x89,
} as const;

class Pickler {
  private readonly parts: Buffer[] = [];

  op(...codes: number[]): this {
    this.parts.push(Buffer.from(codes));
    return this;
  }

  global(module: string, name: string): this {
    this.op(OP.GLOBAL);
    this.parts.push(Buffer.from(`${module}\n${name}\n`, 'ascii'));
    return this;
  }

  str(s: string): this {
    const b = Buffer.from(s, 'utf8');
    const len = Buffer.alloc(4);
    len.writeUInt32LE(b.length);
    this.op(OP.BINUNICODE);
    this.parts.push(len, b);
    return this;
  }

  int(n: number): this {
    if (!Number.isSafeInteger(n)) throw new Error(`pickle: ${n} is not a safe integer`);
    if (n >= 0 && n < 0x100) return this.op(OP.BININT1, n);
    if (n >= 0 && n < 0x10000) return this.op(OP.BININT2, n & 0xff, n >> 8);
    if (n >= -0x80000000 && n < 0x80000000) {
      const b = Buffer.alloc(4);
      b.writeInt32LE(n);
      this.op(OP.BININT);
      this.parts.push(b);
      return this;
    }
    // LONG1: little-endian two's complement, shortest length (8 bytes always suffice for a safe integer).
    const b = Buffer.alloc(8);
    b.writeBigInt64LE(BigInt(n));
    let len = 8;
    while (len > 1 && ((b[len - 1] === 0 && (b[len - 2]! & 0x80) === 0) || (b[len - 1] === 0xff && (b[len - 2]! & 0x80) !== 0))) len--;
    this.op(OP.LONG1, len);
    this.parts.push(b.subarray(0, len));
    return this;
  }

  float(x: number): this {
    const b = Buffer.alloc(8);
    b.writeDoubleBE(x);
    this.op(OP.BINFLOAT);
    this.parts.push(b);
    return this;
  }

  scalar(v: PickleScalar): this {
    if (v === null) return this.op(OP.NONE);
    if (typeof v === 'boolean') return this.op(v ? OP.NEWTRUE : OP.NEWFALSE);
    if (typeof v === 'string') return this.str(v);
    return Number.isInteger(v) ? this.int(v) : this.float(v);
  }

  intTuple(xs: readonly number[]): this {
    if (xs.length === 0) return this.op(OP.EMPTY_TUPLE);
    this.op(OP.MARK);
    for (const x of xs) this.int(x);
    return this.op(OP.TUPLE);
  }

  /** `collections.OrderedDict()` */
  emptyOrderedDict(): this {
    return this.global('collections', 'OrderedDict').op(OP.EMPTY_TUPLE, OP.REDUCE);
  }

  bytes(): Buffer {
    return Buffer.concat(this.parts);
  }
}

/** Row-major strides of a contiguous tensor. */
function contiguousStrides(shape: readonly number[]): number[] {
  const out = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    out[i] = s;
    s *= Math.max(shape[i]!, 1);
  }
  return out;
}

interface PlannedStorage {
  name: string;
  key: string;
  value: TensorValue;
  numel: number;
  byteLength: number;
}

/** data.pkl for `{'state_dict': OrderedDict(name: tensor), 'meta': {...}}`. */
function statePickle(storages: readonly PlannedStorage[], meta: Record<string, PickleScalar>): Buffer {
  const p = new Pickler().op(OP.PROTO, 2).op(OP.EMPTY_DICT).op(OP.MARK);
  p.str('state_dict').emptyOrderedDict().op(OP.MARK);
  for (const s of storages) {
    p.str(s.name);
    p.global('torch._utils', '_rebuild_tensor_v2').op(OP.MARK);
    p.op(OP.MARK).str('storage').global('torch', s.value.dtype === 'float32' ? 'FloatStorage' : 'IntStorage').str(s.key).str('cpu').int(s.numel).op(OP.TUPLE);
    p.op(OP.BINPERSID);
    p.int(0); // storage offset
    p.intTuple(s.value.shape).intTuple(contiguousStrides(s.value.shape));
    p.op(OP.NEWFALSE); // requires_grad
    p.emptyOrderedDict(); // backward hooks
    p.op(OP.TUPLE, OP.REDUCE);
  }
  p.op(OP.SETITEMS);
  p.str('meta').op(OP.EMPTY_DICT);
  const entries = Object.entries(meta);
  if (entries.length) {
    p.op(OP.MARK);
    for (const [k, v] of entries) p.str(k).scalar(v);
    p.op(OP.SETITEMS);
  }
  return p.op(OP.SETITEMS, OP.STOP).bytes();
}

// --- zip (stored) --------------------------------------------------------------------------------------

const U32_MAX = 0xffffffff;
const ALIGN = 64;
/** DOS date 1980-01-01 00:00 (reproducible files). */
const DOS_DATE = (1 << 5) | 1;

interface ZipEntry {
  name: Buffer;
  offset: number;
  size: number;
  crc: number;
  zip64: boolean;
}

/** Writes stored entries sequentially with positional writes, then the central directory. */
class ZipWriter {
  private pos = 0;
  private readonly entries: ZipEntry[] = [];

  constructor(
    private readonly fh: FileHandle,
    private readonly forceZip64: boolean,
  ) {}

  private async write(b: Uint8Array): Promise<void> {
    let done = 0;
    while (done < b.length) {
      const { bytesWritten } = await this.fh.write(b, done, Math.min(b.length - done, 1 << 30), this.pos + done);
      done += bytesWritten;
    }
    this.pos += b.length;
  }

  /**
   * One stored entry of `size` bytes, produced as chunks by `produce` (their total must be `size`). The data
   * starts on a 64-byte boundary (padding in the local header's extra field, as torch does).
   */
  async entry(nameStr: string, size: number, produce: () => AsyncIterable<Uint8Array> | Iterable<Uint8Array>): Promise<void> {
    const name = Buffer.from(nameStr, 'utf8');
    const offset = this.pos;
    const zip64 = this.forceZip64 || size >= U32_MAX || offset >= U32_MAX;
    const z64 = zip64 ? 20 : 0; // 0x0001 extra: id, len, uncompressed size, compressed size
    const pad = (ALIGN - ((offset + 30 + name.length + z64 + 4) % ALIGN)) % ALIGN;
    const extra = Buffer.alloc(z64 + 4 + pad);
    if (zip64) {
      extra.writeUInt16LE(0x0001, 0);
      extra.writeUInt16LE(16, 2);
      extra.writeBigUInt64LE(BigInt(size), 4);
      extra.writeBigUInt64LE(BigInt(size), 12);
    }
    extra.writeUInt16LE(0x4246, z64); // 'FB': padding record
    extra.writeUInt16LE(pad, z64 + 2);
    const header = Buffer.alloc(30);
    header.writeUInt32LE(0x04034b50, 0);
    header.writeUInt16LE(zip64 ? 45 : 20, 4);
    header.writeUInt16LE(0, 6); // flags
    header.writeUInt16LE(0, 8); // stored
    header.writeUInt16LE(0, 10); // time
    header.writeUInt16LE(DOS_DATE, 12);
    header.writeUInt32LE(0, 14); // crc, patched below
    header.writeUInt32LE(zip64 ? U32_MAX : size, 18);
    header.writeUInt32LE(zip64 ? U32_MAX : size, 22);
    header.writeUInt16LE(name.length, 26);
    header.writeUInt16LE(extra.length, 28);
    await this.write(Buffer.concat([header, name, extra]));
    let crc = 0;
    let written = 0;
    for await (const chunk of produce()) {
      crc = crc32(chunk, crc);
      written += chunk.length;
      if (written > size) break;
      await this.write(chunk);
    }
    if (written !== size) throw new Error(`zip entry ${nameStr}: produced ${written} bytes, announced ${size}`);
    const crcBytes = Buffer.alloc(4);
    crcBytes.writeUInt32LE(crc >>> 0);
    await this.fh.write(crcBytes, 0, 4, offset + 14);
    this.entries.push({ name, offset, size, crc: crc >>> 0, zip64 });
  }

  /** Central directory + end records. */
  async finish(): Promise<void> {
    const cdStart = this.pos;
    const parts: Buffer[] = [];
    for (const e of this.entries) {
      const zip64 = e.zip64 || e.offset >= U32_MAX;
      const extra = Buffer.alloc(zip64 ? 28 : 0);
      if (zip64) {
        extra.writeUInt16LE(0x0001, 0);
        extra.writeUInt16LE(24, 2);
        extra.writeBigUInt64LE(BigInt(e.size), 4);
        extra.writeBigUInt64LE(BigInt(e.size), 12);
        extra.writeBigUInt64LE(BigInt(e.offset), 20);
      }
      const h = Buffer.alloc(46);
      h.writeUInt32LE(0x02014b50, 0);
      h.writeUInt16LE(zip64 ? 45 : 20, 4); // made by
      h.writeUInt16LE(zip64 ? 45 : 20, 6); // needed
      h.writeUInt16LE(0, 8);
      h.writeUInt16LE(0, 10);
      h.writeUInt16LE(0, 12);
      h.writeUInt16LE(DOS_DATE, 14);
      h.writeUInt32LE(e.crc, 16);
      h.writeUInt32LE(zip64 ? U32_MAX : e.size, 20);
      h.writeUInt32LE(zip64 ? U32_MAX : e.size, 24);
      h.writeUInt16LE(e.name.length, 28);
      h.writeUInt16LE(extra.length, 30);
      h.writeUInt16LE(0, 32); // comment
      h.writeUInt16LE(0, 34); // disk
      h.writeUInt16LE(0, 36); // internal attrs
      h.writeUInt32LE(0, 38); // external attrs
      h.writeUInt32LE(zip64 ? U32_MAX : e.offset, 42);
      parts.push(h, e.name, extra);
    }
    const cd = Buffer.concat(parts);
    await this.write(cd);
    const n = this.entries.length;
    const zip64End = this.forceZip64 || cdStart >= U32_MAX || cd.length >= U32_MAX || n >= 0xffff;
    if (zip64End) {
      const recStart = this.pos;
      const rec = Buffer.alloc(56);
      rec.writeUInt32LE(0x06064b50, 0);
      rec.writeBigUInt64LE(44n, 4); // size of the rest of the record
      rec.writeUInt16LE(45, 12);
      rec.writeUInt16LE(45, 14);
      rec.writeUInt32LE(0, 16);
      rec.writeUInt32LE(0, 20);
      rec.writeBigUInt64LE(BigInt(n), 24);
      rec.writeBigUInt64LE(BigInt(n), 32);
      rec.writeBigUInt64LE(BigInt(cd.length), 40);
      rec.writeBigUInt64LE(BigInt(cdStart), 48);
      const loc = Buffer.alloc(20);
      loc.writeUInt32LE(0x07064b50, 0);
      loc.writeUInt32LE(0, 4);
      loc.writeBigUInt64LE(BigInt(recStart), 8);
      loc.writeUInt32LE(1, 16);
      await this.write(Buffer.concat([rec, loc]));
    }
    const end = Buffer.alloc(22);
    end.writeUInt32LE(0x06054b50, 0);
    end.writeUInt16LE(0, 4);
    end.writeUInt16LE(0, 6);
    end.writeUInt16LE(zip64End ? 0xffff : n, 8);
    end.writeUInt16LE(zip64End ? 0xffff : n, 10);
    end.writeUInt32LE(zip64End ? U32_MAX : cd.length, 12);
    end.writeUInt32LE(zip64End ? U32_MAX : cdStart, 16);
    end.writeUInt16LE(0, 20);
    await this.write(end);
  }
}

async function tensorBytes(name: string, s: PlannedStorage): Promise<Uint8Array> {
  const h: HostTensor = 'load' in s.value ? await s.value.load() : s.value;
  const Want = s.value.dtype === 'float32' ? Float32Array : Int32Array;
  if (h.dtype !== s.value.dtype || !(h.data instanceof Want) || h.shape.join() !== s.value.shape.join() || h.data.byteLength !== s.byteLength) {
    throw new Error(`.pth writer: tensor '${name}' loaded as ${h.dtype} [${h.shape}], announced ${s.value.dtype} [${s.value.shape}]`);
  }
  return new Uint8Array(h.data.buffer, h.data.byteOffset, h.data.byteLength);
}

/**
 * Write `{'state_dict': OrderedDict(stateDict), 'meta': meta}` as a torch zip checkpoint, atomically
 * (temp file + fsync + rename). Tensors keep their float32 / int32 dtype.
 */
export async function writeTorchPth(file: string, stateDict: Map<string, TensorValue>, o: PthOptions = {}): Promise<void> {
  const storages: PlannedStorage[] = [...stateDict].map(([name, value], i) => {
    if (value.dtype !== 'float32' && value.dtype !== 'int32') throw new Error(`.pth writer: tensor '${name}' has dtype ${String(value.dtype)}`);
    const numel = elementCount(value.shape);
    if (numel === null) throw new Error(`.pth writer: tensor '${name}' shape [${value.shape}] is absurdly large`);
    return { name, key: String(i), value, numel, byteLength: numel * 4 };
  });
  const temp = tempName(file);
  try {
    const fh = await open(temp, 'w');
    try {
      const zip = new ZipWriter(fh, o.forceZip64 ?? false);
      const pkl = statePickle(storages, o.meta ?? {});
      await zip.entry('archive/data.pkl', pkl.length, () => [pkl]);
      await zip.entry('archive/byteorder', 6, () => [Buffer.from('little')]);
      for (const s of storages) {
        await zip.entry(`archive/data/${s.key}`, s.byteLength, async function* () {
          yield await tensorBytes(s.name, s);
        });
      }
      await zip.entry('archive/version', 2, () => [Buffer.from('3\n')]);
      await zip.finish();
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(temp, file);
  } catch (err) {
    await removeQuietly(temp);
    throw err;
  }
}
