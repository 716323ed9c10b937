/**
 * Safetensors reader: validates the header at open, then reads each tensor by its file offset
 * (positional `FileHandle.read`), so reading one tensor never reads the rest of the file.
 */
import { open, stat, type FileHandle } from 'node:fs/promises';
import { fsError } from '../errors.js';
import { SafetensorsError } from './safetensors-error.js';
import { assertLittleEndianHost, decodeTensor, FILE_DTYPES, type HostTensor } from './dtype.js';
import { checkHeaderLength, parseHeader, type ParsedHeader, type TensorEntry } from './safetensors-header.js';

/** What both the single-file and the sharded reader offer to checkpoint loaders. */
export interface TensorReader {
  keys(): string[];
  has(name: string): boolean;
  info(name: string): TensorInfo;
  read(name: string): Promise<HostTensor>;
  close(): Promise<void>;
}

export interface TensorInfo {
  /** The dtype stored in the file (e.g. 'BF16'); `read` returns it as float32 or int32. */
  dtype: string;
  shape: number[];
  /** Bytes the tensor occupies in the file. */
  byteLength: number;
}

/** A single FileHandle.read moves at most this much (the OS/libuv limit is just under 2 GiB). */
const MAX_READ_CHUNK = 1 << 30;

/** Fill `target` from `position` on, looping over short reads. */
export async function readFully(fh: FileHandle, target: Uint8Array, position: number, file: string): Promise<void> {
  let done = 0;
  while (done < target.length) {
    const length = Math.min(target.length - done, MAX_READ_CHUNK);
    const { bytesRead } = await fh.read(target, done, length, position + done);
    if (bytesRead === 0) {
      throw new SafetensorsError(file, `unexpected end of file at byte ${position + done} (file changed since open?)`);
    }
    done += bytesRead;
  }
}

export class SafetensorsReader implements TensorReader {
  private readonly byName: Map<string, TensorEntry>;
  private fh: FileHandle | null;

  private constructor(
    readonly path: string,
    fh: FileHandle,
    private readonly header: ParsedHeader,
  ) {
    this.fh = fh;
    this.byName = new Map(header.entries.map((e) => [e.name, e]));
  }

  /** Open and validate `path`; only the 8-byte length and the header are read. */
  static async open(path: string): Promise<SafetensorsReader> {
    assertLittleEndianHost();
    let fh: FileHandle;
    try {
      // Checked before opening: opening a FIFO blocks until a writer comes (maybe never).
      if (!(await stat(path)).isFile()) throw new SafetensorsError(path, 'not a regular file');
      fh = await open(path, 'r');
    } catch (e) {
      // A file that vanished (a checkpoint rotated away while a reader opened it) is one line naming it.
      throw e instanceof SafetensorsError ? e : fsError(e, path, 'opening the weights');
    }
    try {
      const { size } = await fh.stat();
      if (size < 8) throw new SafetensorsError(path, `file is ${size} bytes, too short for the 8-byte header length`);
      const lenBytes = new Uint8Array(8);
      await readFully(fh, lenBytes, 0, path);
      const n = checkHeaderLength(path, new DataView(lenBytes.buffer).getBigUint64(0, true), size);
      const headerBytes = new Uint8Array(n);
      await readFully(fh, headerBytes, 8, path);
      return new SafetensorsReader(path, fh, parseHeader(path, headerBytes, size));
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  /** Tensor names in file (data-offset) order. */
  keys(): string[] {
    return this.header.entries.map((e) => e.name);
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  info(name: string): TensorInfo {
    const e = this.entry(name);
    return { dtype: e.dtype, shape: [...e.shape], byteLength: e.end - e.begin };
  }

  metadata(): Record<string, string> {
    return { ...this.header.metadata };
  }

  async read(name: string): Promise<HostTensor> {
    const e = this.entry(name);
    if (!this.fh) throw new SafetensorsError(this.path, 'read after close', name);
    let buf: ArrayBuffer;
    try {
      buf = new ArrayBuffer(e.end - e.begin);
    } catch (err) {
      throw new SafetensorsError(this.path, `cannot allocate ${e.end - e.begin} bytes (${(err as Error).message})`, name);
    }
    await readFully(this.fh, new Uint8Array(buf), this.header.dataStart + e.begin, this.path);
    return { dtype: FILE_DTYPES[e.dtype].host, shape: [...e.shape], data: decodeTensor(e.dtype, buf, this.path, name) };
  }

  /** Every tensor, in file order. */
  async readAll(): Promise<Map<string, HostTensor>> {
    const out = new Map<string, HostTensor>();
    for (const name of this.keys()) out.set(name, await this.read(name));
    return out;
  }

  async close(): Promise<void> {
    const fh = this.fh;
    this.fh = null;
    await fh?.close();
  }

  private entry(name: string): TensorEntry {
    const e = this.byName.get(name);
    if (!e) throw new SafetensorsError(this.path, 'no such tensor in the file', name);
    return e;
  }
}

/** Read and validate a whole file: name -> tensor, in file order. */
export async function readSafetensors(path: string): Promise<Map<string, HostTensor>> {
  const reader = await SafetensorsReader.open(path);
  try {
    return await reader.readAll();
  } finally {
    await reader.close();
  }
}
