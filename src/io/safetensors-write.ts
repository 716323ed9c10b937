/**
 * Safetensors writer. Tensors are written as F32 / I32 (no narrowing), the header is padded with
 * spaces to 8-byte alignment, and files appear atomically (temp file + fsync + rename).
 *
 * Tensor sources and their order in the file:
 *  - Map, Record or a sync iterable of [name, value] pairs: every name, dtype and shape is known up
 *    front, so the header is written first and the tensors follow in sorted name order (JS string
 *    order). A value may be a `LazyTensor` whose `load()` is called only when that tensor is written,
 *    so at most one loaded tensor is alive at a time (an exporter need not hold all weights).
 *  - An AsyncIterable of [name, value] pairs: shapes are only known as tensors arrive, so the data is
 *    spooled to a temp file in arrival order and the final file is assembled (header + copy) at the
 *    end: one tensor in memory, but the data is written twice.
 * A `RawTensor` is written in its own file dtype (F16, BF16, I64, ...) from its stored bytes, unconverted
 * (`mgllava convert` keeps a checkpoint's saved dtypes).
 */
import { randomBytes } from 'node:crypto';
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { SafetensorsError } from './safetensors-error.js';
import { assertLittleEndianHost, elementCount, fileDTypeOf, FILE_DTYPES, isFileDType, type FileDType, type HostDType, type HostTensor } from './dtype.js';
import { encodeHeader, type HeaderEntryOut } from './safetensors-header.js';
import { readFully } from './safetensors-read.js';
import { fsError } from '../errors.js';

/** A tensor whose data is produced on demand (e.g. read back from a tf.Variable at export time). */
export interface LazyTensor {
  dtype: HostDType;
  shape: number[];
  load(): HostTensor | Promise<HostTensor>;
}

/**
 * A tensor written unconverted in a file dtype: `load()` returns its little-endian bytes, produced on demand. The
 * writer is done with them before it calls the next tensor's `load()`, so loaders may hand out one reused buffer.
 */
export interface RawTensor {
  fileDtype: FileDType;
  shape: number[];
  load(): Uint8Array | Promise<Uint8Array>;
}

export type TensorValue = HostTensor | LazyTensor | RawTensor;

export type TensorSource =
  | Map<string, TensorValue>
  | Record<string, TensorValue>
  | Iterable<readonly [string, TensorValue]>
  | AsyncIterable<readonly [string, TensorValue]>;

/** Where a tensor goes in a file: known before its data is. */
interface Layout {
  name: string;
  dtype: FileDType;
  shape: number[];
  byteLength: number;
}

/** A validated tensor to write: its layout is known, its data maybe not yet. */
interface PlannedTensor extends Layout {
  value: TensorValue;
}

/** One finished file in temp form; the caller renames it into place. */
export interface BuiltFile {
  temp: string;
  names: string[];
  /** Bytes of tensor data (HF's `total_size` sums these). */
  dataBytes: number;
}

const MAX_WRITE_CHUNK = 1 << 30;
const COPY_CHUNK = 16 << 20;

/** `<base>.tmp-<pid>-<random>`: unique per process and call, next to the final file (same filesystem). */
export function tempName(base: string): string {
  return `${base}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
}

async function writeFully(fh: FileHandle, bytes: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < bytes.length) {
    const length = Math.min(bytes.length - done, MAX_WRITE_CHUNK);
    const { bytesWritten } = await fh.write(bytes, done, length, position + done);
    done += bytesWritten;
  }
}

export async function removeQuietly(path: string): Promise<void> {
  await unlink(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
}

/** Write `data` to `path` atomically (temp + fsync + rename). */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  const temp = tempName(path);
  try {
    const fh = await open(temp, 'w');
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(temp, path);
  } catch (err) {
    await removeQuietly(temp);
    throw err;
  }
}

function plan(dest: string, name: string, value: TensorValue): PlannedTensor {
  const fail = (reason: string): never => {
    throw new SafetensorsError(dest, reason, name);
  };
  if (typeof name !== 'string' || name === '') fail('tensor names must be non-empty strings');
  if (name === '__metadata__') fail("'__metadata__' is reserved by the format");
  const { shape } = value;
  let dtype: FileDType;
  if ('fileDtype' in value) {
    if (!isFileDType(value.fileDtype)) fail(`file dtype '${value.fileDtype}' is not a safetensors dtype`);
    dtype = value.fileDtype;
  } else {
    if (value.dtype !== 'float32' && value.dtype !== 'int32') fail(`dtype '${value.dtype}' is not float32 or int32`);
    dtype = fileDTypeOf(value.dtype);
  }
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    fail(`shape ${JSON.stringify(shape)} is not an array of non-negative integers`);
  }
  const size = FILE_DTYPES[dtype].size;
  const count = elementCount(shape);
  if (count === null || count > Number.MAX_SAFE_INTEGER / size) fail(`shape ${JSON.stringify(shape)} is absurdly large`);
  return { name, dtype, shape: [...shape], byteLength: (count as number) * size, value };
}

/** Produce the data of a planned tensor and check it matches what the header announced. */
async function load(dest: string, p: PlannedTensor): Promise<Uint8Array> {
  const fail = (reason: string): never => {
    throw new SafetensorsError(dest, reason, p.name);
  };
  if ('fileDtype' in p.value) {
    const bytes = await p.value.load();
    if (!(bytes instanceof Uint8Array) || bytes.byteLength !== p.byteLength) {
      fail(`loaded ${bytes?.byteLength} bytes, a ${p.dtype} tensor of shape ${JSON.stringify(p.shape)} has ${p.byteLength}`);
    }
    return bytes;
  }
  const h = 'load' in p.value ? await p.value.load() : p.value;
  const want: HostDType = p.value.dtype;
  if (h.dtype !== want || h.shape.length !== p.shape.length || h.shape.some((d, i) => d !== p.shape[i])) {
    fail(`loaded tensor is ${h.dtype} ${JSON.stringify(h.shape)}, announced ${want} ${JSON.stringify(p.shape)}`);
  }
  const ArrayType = want === 'float32' ? Float32Array : Int32Array;
  if (!(h.data instanceof ArrayType)) fail(`data of a ${want} tensor must be a ${ArrayType.name}`);
  if (h.data.byteLength !== p.byteLength) {
    fail(`data has ${h.data.length} elements, shape ${JSON.stringify(p.shape)} needs ${p.byteLength / 4}`);
  }
  return new Uint8Array(h.data.buffer, h.data.byteOffset, h.data.byteLength);
}

function checkMetadata(dest: string, metadata: Record<string, string> | undefined): void {
  for (const [k, v] of Object.entries(metadata ?? {})) {
    if (typeof v !== 'string') throw new SafetensorsError(dest, `metadata['${k}'] is not a string`);
  }
}

function headerEntries(tensors: readonly Layout[]): HeaderEntryOut[] {
  let pos = 0;
  return tensors.map((t) => {
    const e = { name: t.name, dtype: t.dtype, shape: t.shape, begin: pos, end: pos + t.byteLength };
    pos = e.end;
    return e;
  });
}

/** Write a file whose tensors are all known: header first, then each tensor loaded in turn. */
async function writePlannedFile(
  dest: string,
  temp: string,
  tensors: readonly PlannedTensor[],
  metadata: Record<string, string> | undefined,
): Promise<void> {
  const fh = await open(temp, 'w');
  try {
    const header = encodeHeader(headerEntries(tensors), metadata);
    await writeFully(fh, header, 0);
    let pos = header.length;
    for (const t of tensors) {
      await writeFully(fh, await load(dest, t), pos);
      pos += t.byteLength;
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Greedy split in order: start a new group when the next tensor would overflow a non-empty one. */
function groupBySize(tensors: readonly PlannedTensor[], maxBytes: number): PlannedTensor[][] {
  const groups: PlannedTensor[][] = [[]];
  let size = 0;
  for (const t of tensors) {
    if (groups[groups.length - 1].length > 0 && size + t.byteLength > maxBytes) {
      groups.push([]);
      size = 0;
    }
    groups[groups.length - 1].push(t);
    size += t.byteLength;
  }
  return groups;
}

/** Data of arriving tensors, appended to a temp file until it is assembled into a real one. */
class Spool {
  private tensors: Layout[] = [];
  private bytes = 0;

  private constructor(
    private readonly fh: FileHandle,
    readonly path: string,
  ) {}

  static async create(path: string): Promise<Spool> {
    return new Spool(await open(path, 'w+'), path);
  }

  get count(): number {
    return this.tensors.length;
  }

  get size(): number {
    return this.bytes;
  }

  async add(dest: string, t: PlannedTensor): Promise<void> {
    await writeFully(this.fh, await load(dest, t), this.bytes);
    this.tensors.push({ name: t.name, dtype: t.dtype, shape: t.shape, byteLength: t.byteLength });
    this.bytes += t.byteLength;
  }

  /** Write header + spooled data to `temp`, then start over empty. */
  async assemble(temp: string, metadata: Record<string, string> | undefined): Promise<BuiltFile> {
    const out = await open(temp, 'w');
    try {
      const header = encodeHeader(headerEntries(this.tensors), metadata);
      await writeFully(out, header, 0);
      const chunk = new Uint8Array(Math.min(COPY_CHUNK, Math.max(this.bytes, 1)));
      for (let pos = 0; pos < this.bytes; pos += chunk.length) {
        const part = chunk.subarray(0, Math.min(chunk.length, this.bytes - pos));
        await readFully(this.fh, part, pos, this.path);
        await writeFully(out, part, header.length + pos);
      }
      await out.sync();
    } finally {
      await out.close();
    }
    const built = { temp, names: this.tensors.map((t) => t.name), dataBytes: this.bytes };
    this.tensors = [];
    this.bytes = 0;
    return built;
  }

  async discard(): Promise<void> {
    await this.fh.close();
    await removeQuietly(this.path);
  }
}

function isAsyncIterable(x: unknown): x is AsyncIterable<readonly [string, TensorValue]> {
  return typeof (x as AsyncIterable<unknown>)[Symbol.asyncIterator] === 'function';
}

function planAll(dest: string, source: Exclude<TensorSource, AsyncIterable<unknown>>): PlannedTensor[] {
  const pairs: Iterable<readonly [string, TensorValue]> =
    source instanceof Map
      ? source
      : typeof (source as Iterable<unknown>)[Symbol.iterator] === 'function'
        ? (source as Iterable<readonly [string, TensorValue]>)
        : Object.entries(source as Record<string, TensorValue>);
  const seen = new Set<string>();
  const planned: PlannedTensor[] = [];
  for (const [name, value] of pairs) {
    if (seen.has(name)) throw new SafetensorsError(dest, 'given twice', name);
    seen.add(name);
    planned.push(plan(dest, name, value));
  }
  return planned.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/**
 * Write `source` into one or more files of at most `maxShardBytes` of tensor data each (a larger
 * tensor gets a file of its own), as temp files from `newTemp(label)`. Returns them in order; on
 * failure every temp file is removed. `dest` only names the target in errors.
 */
export async function buildFiles(
  dest: string,
  source: TensorSource,
  maxShardBytes: number,
  metadata: Record<string, string> | undefined,
  newTemp: (label: string) => string,
): Promise<BuiltFile[]> {
  assertLittleEndianHost();
  checkMetadata(dest, metadata);
  const built: BuiltFile[] = [];
  let spool: Spool | null = null;
  try {
    if (!isAsyncIterable(source)) {
      const groups = groupBySize(planAll(dest, source), maxShardBytes);
      for (const group of groups) {
        const temp = newTemp(`part${built.length}`);
        built.push({ temp, names: group.map((t) => t.name), dataBytes: group.reduce((s, t) => s + t.byteLength, 0) });
        await writePlannedFile(dest, temp, group, metadata);
      }
      return built;
    }
    spool = await Spool.create(newTemp('spool'));
    const seen = new Set<string>();
    for await (const [name, value] of source) {
      if (seen.has(name)) throw new SafetensorsError(dest, 'given twice', name);
      seen.add(name);
      const t = plan(dest, name, value);
      if (spool.count > 0 && spool.size + t.byteLength > maxShardBytes) {
        const temp = newTemp(`part${built.length}`);
        built.push(await spool.assemble(temp, metadata));
      }
      await spool.add(dest, t);
    }
    if (spool.count > 0 || built.length === 0) {
      built.push(await spool.assemble(newTemp(`part${built.length}`), metadata));
    }
    return built;
  } catch (err) {
    await Promise.all(built.map((b) => removeQuietly(b.temp)));
    throw fsError(err, dest, 'writing'); // ENOSPC, EACCES, ...: one line naming the file
  } finally {
    await spool?.discard();
  }
}

/**
 * Write one safetensors file atomically (`<path>.tmp-<pid>-<rand>`, fsync, rename). Float32 tensors
 * are stored as F32, int32 as I32; see the module comment for tensor order and lazy/streamed sources.
 */
export async function writeSafetensors(
  path: string,
  tensors: TensorSource,
  metadata?: Record<string, string>,
): Promise<void> {
  const newTemp = (label: string) => tempName(label === 'part0' ? path : `${path}.${label}`);
  const [file] = await buildFiles(path, tensors, Infinity, metadata, newTemp);
  try {
    await rename(file.temp, path);
  } catch (err) {
    await removeQuietly(file.temp);
    throw err;
  }
}
