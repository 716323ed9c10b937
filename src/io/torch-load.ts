/**
 * Reading PyTorch checkpoint files (`torch.save` output: .pth, .pt, .bin, .ckpt) without executing anything.
 *
 * Two container formats:
 *   zip (torch >= 1.6)   `<prefix>/data.pkl` (the pickled object), `<prefix>/data/<key>` (one entry per storage,
 *                        raw elements), `<prefix>/version`, optional `<prefix>/byteorder` ('little' | 'big');
 *                        the prefix is any folder name (torch uses the file's stem or 'archive'). ZIP64 included.
 *   legacy (torch < 1.6) five pickles back to back: the magic number 0x1950a86a20f9469cfc6c, the protocol version
 *                        1001, sys_info {little_endian, type_sizes}, the object, the sorted list of storage keys;
 *                        then for each key in that order: an 8-byte element count and the raw elements.
 * The object is unpickled by src/io/pickle.ts with the weights_only allow-list of src/io/torch-tensor.ts; storages
 * are located (zip entry, or legacy offset) and checked against the file when the pickle names them, and read only
 * when a tensor is read. A checkpoint holds one open file handle until `close()`.
 *
 * `findStateDict` picks the state dict out of the loaded object: the object itself when it is a dict holding tensors,
 * else the first of `state_dict`, `module`, `model` that is (mmengine/xtuner, DeepSpeed, plain training checkpoints).
 */
import { readSync } from 'node:fs';
import { open, stat, type FileHandle } from 'node:fs/promises';
import { fsError, WeightsError } from '../errors.js';
import { FILE_DTYPES } from './dtype.js';
import { unpickle, BufferSource, PyObject, PyTuple, typeName, type ByteSource } from './pickle.js';
import { storagePid, torchHooks, TorchTensor, UnsupportedTensor, type StorageBytes, type TorchStorage } from './torch-tensor.js';
import { readAt, ZipReader, type ZipEntry } from './zip.js';

/** data.pkl (or a legacy object pickle) larger than this is refused: real ones are kilobytes to a few megabytes. */
export const MAX_PICKLE_BYTES = 512 << 20;
/** A DEFLATE-compressed storage entry (torch never writes one) is inflated in memory up to this size. */
export const MAX_INFLATED_STORAGE = 256 << 20;

const LEGACY_MAGIC = 0x1950a86a20f9469cfc6cn;
const LEGACY_PROTOCOL = 1001;

export type CheckpointFormat = 'zip' | 'legacy';

export class TorchCheckpoint {
  private constructor(
    readonly file: string,
    readonly format: CheckpointFormat,
    /** The unpickled object (Map for dicts, see src/io/pickle.ts for the other Python types). */
    readonly root: unknown,
    private readonly fh: FileHandle,
  ) {}

  /** Open, sniff the format, unpickle the object and locate (but not read) every storage it names. */
  static async open(file: string): Promise<TorchCheckpoint> {
    let fh: FileHandle;
    try {
      // Checked before opening: opening a FIFO blocks until a writer comes, which may be never.
      if (!(await stat(file)).isFile()) throw new WeightsError(`${file}: not a regular file`);
      fh = await open(file, 'r');
    } catch (e) {
      if (e instanceof WeightsError) throw e;
      throw fsError(e, file, 'opening the checkpoint');
    }
    try {
      const { size, isFile } = await fh.stat().then((s) => ({ size: s.size, isFile: s.isFile() }));
      if (!isFile) throw new WeightsError(`${file}: not a regular file`);
      const head = new Uint8Array(Math.min(size, 512));
      await readAt(fh, file, head, 0);
      const kind = sniff(file, head, size);
      const root = kind === 'zip' ? await loadZip(file, fh, size) : loadLegacy(file, fh, size);
      return new TorchCheckpoint(file, kind, root, fh);
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}

// --- format detection ------------------------------------------------------------------------------------------

const KNOWN_MAGIC: [number[], string][] = [
  [[0x89, 0x50, 0x4e, 0x47], 'a PNG image'],
  [[0xff, 0xd8, 0xff], 'a JPEG image'],
  [[0x1f, 0x8b], 'a gzip file'],
  [[0x47, 0x47, 0x55, 0x46], 'a GGUF file'],
  [[0x7b], 'JSON text'],
];

function sniff(file: string, head: Uint8Array, size: number): CheckpointFormat {
  const fail = (why: string, hint?: string): never => {
    throw new WeightsError(`${file}: not a PyTorch checkpoint: ${why}`, { hint });
  };
  if (size === 0) fail('the file is empty');
  if (head[0] === 0x50 && head[1] === 0x4b && (head[2] === 3 || head[2] === 5)) return 'zip';
  if (head[0] === 0x80 && head.length >= 2 && head[1]! <= 5) return 'legacy';
  if (head.length >= 262 && new TextDecoder().decode(head.subarray(257, 262)) === 'ustar') {
    fail('a tar archive (the tar format of torch < 0.4 is not supported)', 'load and re-save it with a newer torch');
  }
  if (head.length >= 9 && head[8] === 0x7b) {
    const n = new DataView(head.buffer, head.byteOffset).getBigUint64(0, true);
    if (n > 0n && n + 8n <= BigInt(size)) fail('it is a safetensors file', 'safetensors files load directly; no conversion is needed');
  }
  const known = KNOWN_MAGIC.find(([m]) => m.every((b, i) => head[i] === b));
  const bytes = [...head.subarray(0, 8)].map((b) => b.toString(16).padStart(2, '0')).join(' ');
  return fail(`neither a zip archive nor a pickle (${known ? `looks like ${known[1]}; ` : ''}starts with ${bytes})`);
}

// --- zip format ------------------------------------------------------------------------------------------------

/** The `<prefix>/` of the archive's data.pkl (any folder name); several data.pkl are ambiguous. */
function archivePrefix(file: string, zip: ZipReader): string {
  const pickles = zip.names().filter((n) => n === 'data.pkl' || n.endsWith('/data.pkl'));
  if (pickles.length === 0) throw new WeightsError(`${file}: a zip archive without data.pkl: not a PyTorch checkpoint (entries: ${zip.names().slice(0, 5).join(', ')}${zip.entries.size > 5 ? ', ...' : ''})`);
  if (pickles.length > 1) throw new WeightsError(`${file}: several data.pkl in one archive (${pickles.slice(0, 4).join(', ')}): ambiguous`);
  return pickles[0]!.slice(0, -'data.pkl'.length);
}

/** Bytes of a storage entry: positioned reads when STORED, a bounded in-memory inflate when DEFLATE. */
function zipStorageBytes(file: string, zip: ZipReader, e: ZipEntry): StorageBytes {
  if (e.method === 0) return { read: (offset, target) => zip.readRange(e, offset, target) };
  let inflated: Promise<Uint8Array> | null = null;
  return {
    async read(offset, target) {
      inflated ??= zip.readEntry(e, MAX_INFLATED_STORAGE);
      const all = await inflated;
      if (offset + target.length > all.length) throw new WeightsError(`${file}: zip entry '${e.name}': bytes [${offset}, ${offset + target.length}) are outside its ${all.length} bytes`);
      target.set(all.subarray(offset, offset + target.length));
    },
  };
}

async function loadZip(file: string, fh: FileHandle, size: number): Promise<unknown> {
  const zip = await ZipReader.open(file, fh, size);
  const prefix = archivePrefix(file, zip);
  const order = zip.get(`${prefix}byteorder`);
  let bigEndian = false;
  if (order) {
    const text = new TextDecoder().decode(await zip.readEntry(order, 64)).trim();
    if (text !== 'little' && text !== 'big') throw new WeightsError(`${file}: byteorder entry says '${text.slice(0, 20)}' (expected little or big)`);
    bigEndian = text === 'big';
  }
  const pkl = await zip.readEntry(zip.get(`${prefix}data.pkl`)!, MAX_PICKLE_BYTES);
  const storages = new Map<string, TorchStorage>();
  // Storage entries are looked up while unpickling (synchronously); their local headers are checked afterwards.
  const pending: ZipEntry[] = [];
  const hooks = torchHooks({
    file,
    storage(pid) {
      const { type, key, numel } = storagePid(file, pid, [5]);
      const known = storages.get(key);
      if (known) {
        if (known.typeName !== type.name) throw new WeightsError(`${file}: storage '${key}' is named as both ${known.typeName} and ${type.name}`);
        return known;
      }
      const entry = zip.get(`${prefix}data/${key}`);
      if (!entry) {
        throw new WeightsError(`${file}: the pickle names storage '${key}', which is not in the archive (no '${prefix}data/${key}'): the file is incomplete or corrupt`);
      }
      const bytes = numel * FILE_DTYPES[type.dtype ?? 'U8'].size;
      if (type.dtype !== null && bytes > entry.size) {
        throw new WeightsError(`${file}: storage '${key}' claims ${numel} ${type.name} elements (${bytes} bytes), its data entry holds ${entry.size} bytes (corrupt or hostile file)`);
      }
      if (entry.method !== 0 && entry.size > MAX_INFLATED_STORAGE) {
        throw new WeightsError(`${file}: storage '${key}' is a compressed zip entry of ${entry.size} bytes (torch writes them uncompressed; at most ${MAX_INFLATED_STORAGE} are inflated)`);
      }
      pending.push(entry);
      const s: TorchStorage = { key, dtype: type.dtype, typeName: type.name, numel, bigEndian, bytes: zipStorageBytes(file, zip, entry) };
      storages.set(key, s);
      return s;
    },
  });
  const root = unpickle(new BufferSource(pkl, `${file} (${prefix}data.pkl)`), hooks, `${file} (${prefix}data.pkl)`);
  for (const e of pending) await zip.dataStart(e);
  return root;
}

// --- legacy format ---------------------------------------------------------------------------------------------

/** A pickle read from a file with synchronous positioned reads through a sliding window (legacy checkpoints). */
class FileWindowSource implements ByteSource {
  pos: number;
  private buf = new Uint8Array(0);
  private bufStart = 0;
  private readonly limit: number;

  constructor(
    private readonly fd: number,
    private readonly file: string,
    private readonly fileSize: number,
    start: number,
  ) {
    this.pos = start;
    this.limit = Math.min(fileSize, start + MAX_PICKLE_BYTES);
  }

  /** Make bytes [pos, pos + n) available in the window. */
  private ensure(n: number): void {
    if (this.pos + n <= this.bufStart + this.buf.length) return;
    if (this.pos + n > this.limit) {
      throw new WeightsError(this.pos + n > this.fileSize ? `${this.file}: unexpected end of file inside a pickle at byte ${this.pos} (truncated)` : `${this.file}: a pickle longer than ${MAX_PICKLE_BYTES} bytes`);
    }
    const len = Math.min(Math.max(n, 1 << 20), this.limit - this.pos);
    const buf = new Uint8Array(len);
    let done = 0;
    while (done < len) {
      const got = readSync(this.fd, buf, done, len - done, this.pos + done);
      if (got === 0) throw new WeightsError(`${this.file}: unexpected end of file at byte ${this.pos + done} (changed while reading?)`);
      done += got;
    }
    this.buf = buf;
    this.bufStart = this.pos;
  }

  take(n: number): Uint8Array {
    this.ensure(n);
    const at = this.pos - this.bufStart;
    this.pos += n;
    return this.buf.subarray(at, at + n);
  }

  line(): Uint8Array {
    for (let want = 256; ; want *= 4) {
      this.ensure(Math.min(want, this.limit - this.pos));
      const at = this.pos - this.bufStart;
      const end = this.buf.indexOf(0x0a, at);
      if (end >= 0 && end < at + want) {
        this.pos = this.bufStart + end + 1;
        return this.buf.subarray(at, end);
      }
      if (this.pos + want >= this.fileSize) throw new WeightsError(`${this.file}: unexpected end of file inside a pickle at byte ${this.pos} (truncated)`);
      if (want >= 1 << 16 || this.pos + want >= this.limit) throw new WeightsError(`${this.file}: pickle text line at byte ${this.pos} has no end`);
    }
  }
}

interface LegacyStorage extends TorchStorage {
  /** File offset of element 0 (known once the storage list has been walked). */
  start: number;
}

function loadLegacy(file: string, fh: FileHandle, size: number): unknown {
  const src = new FileWindowSource(fh.fd, file, size, 0);
  const noGlobals = {
    global: (m: string, n: string) => {
      throw new WeightsError(`${file}: unexpected GLOBAL ${m}.${n} in the checkpoint header`);
    },
    persistentLoad: () => {
      throw new WeightsError(`${file}: unexpected persistent id in the checkpoint header`);
    },
    call: () => null,
  };
  const magic = unpickle(src, noGlobals, `${file} (magic number)`);
  if (BigInt(typeof magic === 'number' || typeof magic === 'bigint' ? magic : -1) !== LEGACY_MAGIC) {
    throw new WeightsError(`${file}: not a PyTorch checkpoint: a pickle without torch's magic number (a plain pickle file?)`);
  }
  const protocol = unpickle(src, noGlobals, `${file} (protocol version)`);
  if (protocol !== LEGACY_PROTOCOL) throw new WeightsError(`${file}: legacy torch format version ${String(protocol)} (only ${LEGACY_PROTOCOL} is known)`);
  const sysInfo = unpickle(src, noGlobals, `${file} (sys_info)`);
  const bigEndian = sysInfo instanceof Map && sysInfo.get('little_endian') === false;

  const roots = new Map<string, LegacyStorage>();
  const hooks = torchHooks({
    file,
    storage(pid) {
      // ('storage', type, root_key, location, numel, view_metadata: None | (view_key, offset, view_size))
      const { type, key, numel, rest } = storagePid(file, pid, [6]);
      let root = roots.get(key);
      if (!root) {
        const bytes: StorageBytes = { read: (offset, target) => readAt(fh, file, target, root!.start + offset) };
        root = { key, dtype: type.dtype, typeName: type.name, numel, bigEndian, bytes, start: -1 };
        roots.set(key, root);
      } else if (root.typeName !== type.name || root.numel !== numel) {
        throw new WeightsError(`${file}: storage '${key}' is named with two types or sizes`);
      }
      const view = rest[0];
      if (view === null || view === undefined) return root;
      const v = view instanceof PyTuple ? view.items : [];
      const [viewKey, offset, viewSize] = v;
      if (v.length !== 3 || typeof viewKey !== 'string' || !Number.isSafeInteger(offset) || !Number.isSafeInteger(viewSize) || (offset as number) < 0 || (viewSize as number) < 0 || (offset as number) + (viewSize as number) > numel) {
        throw new WeightsError(`${file}: storage view of '${key}' is malformed or out of range`);
      }
      const base = root;
      const es = FILE_DTYPES[type.dtype ?? 'U8'].size;
      return {
        key: viewKey as string,
        dtype: type.dtype,
        typeName: type.name,
        numel: viewSize as number,
        bigEndian,
        start: -1,
        bytes: { read: (o, target) => base.bytes.read((offset as number) * es + o, target) },
      } satisfies LegacyStorage;
    },
  });
  const root = unpickle(src, hooks, `${file} (object pickle)`);
  const keys = unpickle(src, noGlobals, `${file} (storage list)`);
  if (!Array.isArray(keys) || !keys.every((k) => typeof k === 'string')) throw new WeightsError(`${file}: the storage list is a ${typeName(keys)}, not a list of keys`);
  // Storages follow in list order: an 8-byte element count, then the elements.
  let pos = src.pos;
  const head = Buffer.alloc(8);
  for (const key of keys as string[]) {
    const s = roots.get(key);
    if (!s) throw new WeightsError(`${file}: the storage list names '${key}', which the pickle never uses`);
    if (s.start >= 0) throw new WeightsError(`${file}: storage '${key}' is listed twice`);
    if (pos + 8 > size) throw new WeightsError(`${file}: truncated: storage '${key}' should start at byte ${pos}, the file has ${size} bytes`);
    let got = 0;
    while (got < 8) {
      const n = readSync(fh.fd, head, got, 8 - got, pos + got);
      if (n === 0) throw new WeightsError(`${file}: unexpected end of file at byte ${pos + got}`);
      got += n;
    }
    const count = bigEndian ? head.readBigInt64BE(0) : head.readBigInt64LE(0);
    if (count !== BigInt(s.numel)) throw new WeightsError(`${file}: storage '${key}' holds ${count} elements, the pickle says ${s.numel} (corrupt file)`);
    const bytes = s.numel * FILE_DTYPES[s.dtype ?? 'U8'].size;
    s.start = pos + 8;
    pos = s.start + bytes;
    if (pos > size) throw new WeightsError(`${file}: truncated: storage '${key}' ends at byte ${pos}, the file has ${size} bytes`);
  }
  for (const s of roots.values()) {
    if (s.start < 0) throw new WeightsError(`${file}: the pickle names storage '${s.key}', which is not in the file's storage list: the file is incomplete or corrupt`);
  }
  return root;
}

// --- the state dict --------------------------------------------------------------------------------------------

/** Keys under which checkpoints nest their state dict, in the order they are tried. */
export const STATE_DICT_KEYS = ['state_dict', 'module', 'model'] as const;

export interface StateDict {
  /** Where the state dict was in the object: null = the object itself. */
  key: string | null;
  tensors: Map<string, TorchTensor>;
  /** Tensors of kinds this reader does not decode, by name, with what they are. */
  unsupported: Map<string, string>;
  /** Entries that are not tensors (counted, reported, never converted). */
  skipped: { name: string; what: string }[];
}

/** The items of a dict (or of an object of an unknown dict subclass), else null. */
function dictItems(v: unknown): Map<unknown, unknown> | null {
  if (v instanceof Map) return v;
  if (v instanceof PyObject && v.items.size > 0) return v.items;
  return null;
}

const holdsTensors = (d: Map<unknown, unknown>): boolean => {
  for (const v of d.values()) if (v instanceof TorchTensor || v instanceof UnsupportedTensor) return true;
  return false;
};

function describeKeys(d: Map<unknown, unknown>): string {
  const keys = [...d.keys()].slice(0, 12).map((k) => (typeof k === 'string' ? `'${k}'` : typeName(k)));
  return `[${keys.join(', ')}${d.size > 12 ? ', ...' : ''}]`;
}

/**
 * The state dict of a loaded checkpoint object: `key` when given, else the object itself when it is a dict holding
 * tensors, else the first of state_dict / module / model that is one.
 */
export function findStateDict(file: string, root: unknown, key?: string | null): StateDict {
  const top = dictItems(root);
  let found: Map<unknown, unknown> | null = null;
  let where: string | null = null;
  if (key !== undefined && key !== null) {
    if (!top) throw new WeightsError(`${file}: --key ${key}: the checkpoint holds a ${typeName(root)}, not a dict`);
    if (!top.has(key)) throw new WeightsError(`${file}: no key '${key}' in the checkpoint (its keys: ${describeKeys(top)})`);
    found = dictItems(top.get(key));
    if (!found) throw new WeightsError(`${file}: '${key}' holds a ${typeName(top.get(key))}, not a dict of tensors`);
    where = key;
  } else if (top && holdsTensors(top)) {
    found = top;
  } else if (top) {
    for (const k of STATE_DICT_KEYS) {
      const d = dictItems(top.get(k));
      if (d && holdsTensors(d)) {
        found = d;
        where = k;
        break;
      }
    }
    if (!found) {
      throw new WeightsError(`${file}: no state dict: the checkpoint is a dict with keys ${describeKeys(top)}, none of them tensors, and none of ${STATE_DICT_KEYS.join(', ')} holds tensors`, {
        hint: 'name the key that holds the weights with --key',
      });
    }
  } else {
    throw new WeightsError(`${file}: no state dict: the checkpoint holds a ${typeName(root)}, not a dict of tensors`);
  }
  const sd: StateDict = { key: where, tensors: new Map(), unsupported: new Map(), skipped: [] };
  for (const [k, v] of found) {
    const name = typeof k === 'string' ? k : null;
    if (name === null) sd.skipped.push({ name: String(typeof k === 'number' || typeof k === 'bigint' ? k : typeName(k)), what: 'a non-string key' });
    else if (v instanceof TorchTensor) sd.tensors.set(name, v);
    else if (v instanceof UnsupportedTensor) sd.unsupported.set(name, v.what);
    else sd.skipped.push({ name, what: typeName(v) });
  }
  return sd;
}
