/**
 * The zip container of PyTorch checkpoints (torch >= 1.6): a reader for untrusted archives and the writer of our
 * own `.pth` exports (src/io/torch-pth.ts).
 *
 * Reader: the end-of-central-directory record (ZIP64 when present) and the central directory are read and checked
 * at open; an entry's bytes are read only on request, by file offset (positioned reads), so a 26 GB archive is never
 * read whole. STORED entries (what torch writes) support ranged reads; DEFLATE entries (torch never writes them)
 * are inflated whole with a bound on the output. Every size and offset is checked against the file before use.
 *
 * Writer: STORED entries, data 64-byte aligned (as torch writes them), ZIP64 records when a size or offset needs them.
 *
 * Layout reference (APPNOTE.TXT): local header 30 bytes + name + extra, then the data; central directory entries
 * 46 bytes + name + extra + comment; end record 22 bytes + comment; ZIP64 end record 56 bytes + its locator 20 bytes.
 */
import type { FileHandle } from 'node:fs/promises';
import { crc32, inflateRawSync } from 'node:zlib';
import { WeightsError } from '../errors.js';

const SIG = {
  local: 0x04034b50,
  central: 0x02014b50,
  end: 0x06054b50,
  end64: 0x06064b50,
  locator64: 0x07064b50,
} as const;

const U16_MAX = 0xffff;
const U32_MAX = 0xffffffff;
const METHOD_STORED = 0;
const METHOD_DEFLATE = 8;
/** Central directories larger than this are refused (a million entries is ~100 MB). */
const MAX_CENTRAL_DIRECTORY = 256 << 20;
const MAX_ENTRIES = 1_000_000;
/** A single positioned read moves at most this much. */
const MAX_READ_CHUNK = 1 << 30;

export interface ZipEntry {
  name: string;
  method: number;
  flags: number;
  crc: number;
  compressedSize: number;
  size: number;
  /** Offset of the local header. */
  headerOffset: number;
}

/** Fill `target` from `position` of an open file, or fail naming the file (the file ended early). */
export async function readAt(fh: FileHandle, file: string, target: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < target.length) {
    const { bytesRead } = await fh.read(target, done, Math.min(target.length - done, MAX_READ_CHUNK), position + done);
    if (bytesRead === 0) throw new WeightsError(`${file}: unexpected end of file at byte ${position + done} (truncated, or changed while reading)`);
    done += bytesRead;
  }
}

/** A little-endian u64 as a Number, or an error when it is beyond 2^53. */
function u64(v: DataView, at: number, file: string, what: string): number {
  const n = v.getBigUint64(at, true);
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw new WeightsError(`${file}: zip ${what} ${n} is absurd`);
  return Number(n);
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

export class ZipReader {
  private readonly dataStarts = new Map<string, number>();

  private constructor(
    readonly file: string,
    private readonly fh: FileHandle,
    readonly fileSize: number,
    readonly entries: Map<string, ZipEntry>,
    /** Where the central directory starts: every entry's bytes lie before it. */
    private readonly cdStart: number,
  ) {}

  /** Read and check the end records and the central directory of an open file. */
  static async open(file: string, fh: FileHandle, fileSize: number): Promise<ZipReader> {
    const fail = (why: string): never => {
      throw new WeightsError(`${file}: ${why}`);
    };
    if (fileSize < 22) fail(`${fileSize} bytes: too short for a zip archive (truncated?)`);
    // The end record is within the last 22 + 65535 bytes (its comment is at most 65535 bytes).
    const tailLen = Math.min(fileSize, 22 + U16_MAX);
    const tail = new Uint8Array(tailLen);
    await readAt(fh, file, tail, fileSize - tailLen);
    const tv = view(tail);
    let endAt = -1;
    for (let i = tailLen - 22; i >= 0; i--) {
      if (tv.getUint32(i, true) === SIG.end && i + 22 + tv.getUint16(i + 20, true) === tailLen) {
        endAt = i;
        break;
      }
    }
    if (endAt < 0) fail('no zip end-of-central-directory record: the archive is truncated or not a zip file');
    const endPos = fileSize - tailLen + endAt;
    if (tv.getUint16(endAt + 4, true) !== 0 || tv.getUint16(endAt + 6, true) !== 0) fail('multi-disk zip archives are not supported');
    let count = tv.getUint16(endAt + 10, true);
    let cdSize = tv.getUint32(endAt + 12, true);
    let cdStart = tv.getUint32(endAt + 16, true);
    let cdLimit = endPos;
    // ZIP64: a locator right before the end record points at the ZIP64 end record with 64-bit fields.
    if (endPos >= 20) {
      const loc = new Uint8Array(20);
      await readAt(fh, file, loc, endPos - 20);
      const lv = view(loc);
      if (lv.getUint32(0, true) === SIG.locator64) {
        const recPos = u64(lv, 8, file, 'ZIP64 end record offset');
        if (recPos + 56 > endPos - 20) fail(`ZIP64 end record at byte ${recPos} lies past its locator`);
        const rec = new Uint8Array(56);
        await readAt(fh, file, rec, recPos);
        const rv = view(rec);
        if (rv.getUint32(0, true) !== SIG.end64) fail(`no ZIP64 end record at byte ${recPos} (corrupt archive)`);
        count = u64(rv, 32, file, 'entry count');
        cdSize = u64(rv, 40, file, 'central directory size');
        cdStart = u64(rv, 48, file, 'central directory offset');
        cdLimit = recPos;
      }
    }
    if (count > MAX_ENTRIES) fail(`${count} zip entries: more than the ${MAX_ENTRIES} a checkpoint can have`);
    if (cdSize > MAX_CENTRAL_DIRECTORY) fail(`central directory of ${cdSize} bytes is absurd`);
    if (cdStart + cdSize > cdLimit) fail(`central directory [${cdStart}, ${cdStart + cdSize}) runs past the end records at byte ${cdLimit} (truncated or corrupt archive)`);
    const cd = new Uint8Array(cdSize);
    await readAt(fh, file, cd, cdStart);
    const entries = parseCentralDirectory(file, cd, count, cdStart);
    return new ZipReader(file, fh, fileSize, entries, cdStart);
  }

  names(): string[] {
    return [...this.entries.keys()];
  }

  get(name: string): ZipEntry | undefined {
    return this.entries.get(name);
  }

  /** File offset of an entry's first data byte (from its local header), checked to lie within the archive. */
  async dataStart(e: ZipEntry): Promise<number> {
    const known = this.dataStarts.get(e.name);
    if (known !== undefined) return known;
    const fail = (why: string): never => {
      throw new WeightsError(`${this.file}: zip entry '${e.name}': ${why}`);
    };
    if (e.headerOffset + 30 > this.cdStart) fail(`local header at byte ${e.headerOffset} lies past the entries (corrupt archive)`);
    const h = new Uint8Array(30);
    await readAt(this.fh, this.file, h, e.headerOffset);
    const hv = view(h);
    if (hv.getUint32(0, true) !== SIG.local) fail(`no local header at byte ${e.headerOffset} (corrupt archive)`);
    const start = e.headerOffset + 30 + hv.getUint16(26, true) + hv.getUint16(28, true);
    if (start + e.compressedSize > this.cdStart) {
      fail(`data [${start}, ${start + e.compressedSize}) runs into the central directory at byte ${this.cdStart} (corrupt archive)`);
    }
    this.dataStarts.set(e.name, start);
    return start;
  }

  /**
   * The whole (uncompressed) content of an entry, at most `limit` bytes; DEFLATE entries are inflated with that
   * bound. The CRC-32 is checked.
   */
  async readEntry(e: ZipEntry, limit: number): Promise<Uint8Array> {
    const fail = (why: string): never => {
      throw new WeightsError(`${this.file}: zip entry '${e.name}': ${why}`);
    };
    if (e.size > limit) fail(`${e.size} bytes is more than the ${limit} allowed for it`);
    const start = await this.dataStart(e);
    const raw = new Uint8Array(e.compressedSize);
    await readAt(this.fh, this.file, raw, start);
    let out: Uint8Array = raw;
    if (e.method === METHOD_DEFLATE) {
      try {
        out = inflateRawSync(raw, { maxOutputLength: Math.max(1, e.size) });
      } catch (err) {
        fail(`cannot inflate (${(err as Error).message}); the entry is corrupt or larger than its declared ${e.size} bytes`);
      }
    }
    if (out.length !== e.size) fail(`holds ${out.length} bytes, its directory entry says ${e.size}`);
    if ((crc32(out) >>> 0) !== e.crc) fail('CRC-32 mismatch (corrupt archive)');
    return out;
  }

  /**
   * `target.length` bytes of a STORED entry's content from `offset` on (a positioned read: nothing else is read).
   */
  async readRange(e: ZipEntry, offset: number, target: Uint8Array): Promise<void> {
    if (e.method !== METHOD_STORED) throw new Error(`zip: ranged read of the compressed entry '${e.name}'`);
    if (offset < 0 || offset + target.length > e.size) {
      throw new WeightsError(`${this.file}: zip entry '${e.name}': bytes [${offset}, ${offset + target.length}) are outside its ${e.size} bytes`);
    }
    await readAt(this.fh, this.file, target, (await this.dataStart(e)) + offset);
  }
}

function parseCentralDirectory(file: string, cd: Uint8Array, count: number, cdStart: number): Map<string, ZipEntry> {
  const v = view(cd);
  const entries = new Map<string, ZipEntry>();
  const decoder = new TextDecoder('utf-8');
  let p = 0;
  for (let i = 0; i < count; i++) {
    const fail = (why: string): never => {
      throw new WeightsError(`${file}: central directory entry ${i}: ${why}`);
    };
    if (p + 46 > cd.length || v.getUint32(p, true) !== SIG.central) fail('bad signature or truncated (corrupt archive)');
    const flags = v.getUint16(p + 8, true);
    const method = v.getUint16(p + 10, true);
    const crc = v.getUint32(p + 16, true);
    let compressedSize = v.getUint32(p + 20, true);
    let size = v.getUint32(p + 24, true);
    const nameLen = v.getUint16(p + 28, true);
    const extraLen = v.getUint16(p + 30, true);
    const commentLen = v.getUint16(p + 32, true);
    let headerOffset = v.getUint32(p + 42, true);
    const end = p + 46 + nameLen + extraLen + commentLen;
    if (end > cd.length) fail('runs past the central directory (corrupt archive)');
    const name = decoder.decode(cd.subarray(p + 46, p + 46 + nameLen));
    // ZIP64 extended information: 64-bit values for exactly the fields saturated at 0xFFFFFFFF, in this order.
    const need = [size === U32_MAX, compressedSize === U32_MAX, headerOffset === U32_MAX];
    if (need.some(Boolean)) {
      let q = p + 46 + nameLen;
      const extraEnd = q + extraLen;
      let found = false;
      while (q + 4 <= extraEnd) {
        const id = v.getUint16(q, true);
        const len = v.getUint16(q + 2, true);
        if (q + 4 + len > extraEnd) fail('extra field runs past its end (corrupt archive)');
        if (id === 0x0001) {
          let r = q + 4;
          const take = (what: string): number => {
            if (r + 8 > q + 4 + len) fail(`ZIP64 extra field lacks the ${what}`);
            const n = u64(v, r, file, what);
            r += 8;
            return n;
          };
          if (need[0]) size = take('uncompressed size');
          if (need[1]) compressedSize = take('compressed size');
          if (need[2]) headerOffset = take('local header offset');
          found = true;
          break;
        }
        q += 4 + len;
      }
      if (!found) fail(`'${name}' has 32-bit fields saturated but no ZIP64 extra field`);
    }
    if (flags & 1) fail(`'${name}' is encrypted`);
    if (method !== METHOD_STORED && method !== METHOD_DEFLATE) fail(`'${name}' uses compression method ${method} (only stored and deflate are read)`);
    if (method === METHOD_STORED && compressedSize !== size) fail(`stored entry '${name}' has compressed size ${compressedSize} != size ${size}`);
    if (headerOffset + compressedSize > cdStart) fail(`'${name}' data would run past the central directory (corrupt archive)`);
    if (entries.has(name)) fail(`'${name}' appears twice in the archive`);
    entries.set(name, { name, method, flags, crc, compressedSize, size, headerOffset });
    p = end;
  }
  return entries;
}

// --- writer (stored entries) -------------------------------------------------------------------------------

const ALIGN = 64;
/** DOS date 1980-01-01 00:00 (reproducible files). */
const DOS_DATE = (1 << 5) | 1;

interface WrittenEntry {
  name: Buffer;
  offset: number;
  size: number;
  crc: number;
  zip64: boolean;
}

/** Writes stored entries sequentially with positional writes, then the central directory. */
export class ZipWriter {
  private pos = 0;
  private readonly entries: WrittenEntry[] = [];

  constructor(
    private readonly fh: FileHandle,
    private readonly forceZip64: boolean,
  ) {}

  private async write(b: Uint8Array): Promise<void> {
    let done = 0;
    while (done < b.length) {
      const { bytesWritten } = await this.fh.write(b, done, Math.min(b.length - done, MAX_READ_CHUNK), this.pos + done);
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
    header.writeUInt32LE(SIG.local, 0);
    header.writeUInt16LE(zip64 ? 45 : 20, 4);
    header.writeUInt16LE(0, 6); // flags
    header.writeUInt16LE(METHOD_STORED, 8);
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
      h.writeUInt32LE(SIG.central, 0);
      h.writeUInt16LE(zip64 ? 45 : 20, 4); // made by
      h.writeUInt16LE(zip64 ? 45 : 20, 6); // needed
      h.writeUInt16LE(0, 8);
      h.writeUInt16LE(METHOD_STORED, 10);
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
    const zip64End = this.forceZip64 || cdStart >= U32_MAX || cd.length >= U32_MAX || n >= U16_MAX;
    if (zip64End) {
      const recStart = this.pos;
      const rec = Buffer.alloc(56);
      rec.writeUInt32LE(SIG.end64, 0);
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
      loc.writeUInt32LE(SIG.locator64, 0);
      loc.writeUInt32LE(0, 4);
      loc.writeBigUInt64LE(BigInt(recStart), 8);
      loc.writeUInt32LE(1, 16);
      await this.write(Buffer.concat([rec, loc]));
    }
    const end = Buffer.alloc(22);
    end.writeUInt32LE(SIG.end, 0);
    end.writeUInt16LE(0, 4);
    end.writeUInt16LE(0, 6);
    end.writeUInt16LE(zip64End ? U16_MAX : n, 8);
    end.writeUInt16LE(zip64End ? U16_MAX : n, 10);
    end.writeUInt32LE(zip64End ? U32_MAX : cd.length, 12);
    end.writeUInt32LE(zip64End ? U32_MAX : cdStart, 16);
    end.writeUInt16LE(0, 20);
    await this.write(end);
  }
}
