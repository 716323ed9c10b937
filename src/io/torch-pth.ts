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
 * Zip64 structures are written when a size or offset needs them (checkpoints over 4 GiB); the zip writer is
 * src/io/zip.ts, shared with the checkpoint reader (src/io/torch-load.ts).
 * Tensors are written one at a time (lazy tensors are loaded when their record is written).
 */
import { open, rename } from 'node:fs/promises';
import { elementCount, type HostTensor } from './dtype.js';
import { removeQuietly, tempName, type LazyTensor } from './safetensors-write.js';
import { ZipWriter } from './zip.js';

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
  value: HostTensor | LazyTensor;
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
export async function writeTorchPth(file: string, stateDict: Map<string, HostTensor | LazyTensor>, o: PthOptions = {}): Promise<void> {
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
