/**
 * The safetensors header: parse + validate (untrusted input) and encode.
 *
 * Layout: u64 little-endian N, then N bytes of UTF-8 JSON
 *   {"__metadata__": {string: string}, name: {"dtype", "shape", "data_offsets": [begin, end]}, ...}
 * (the JSON may be padded at the end with spaces), then the data region. Offsets are relative to
 * the start of the data region, and the tensors must tile it exactly: no overlap, no gap.
 */
import { SafetensorsError } from './safetensors-error.js';
import { FILE_DTYPES, elementCount, isFileDType, type FileDType } from './dtype.js';

/** Same limit as the reference Rust implementation; real headers are a few MB at most. */
export const MAX_HEADER_BYTES = 100_000_000;

export interface TensorEntry {
  name: string;
  dtype: FileDType;
  shape: number[];
  /** Byte offsets relative to the data region. */
  begin: number;
  end: number;
}

export interface ParsedHeader {
  /** Tensors in data-region order. */
  entries: TensorEntry[];
  metadata: Record<string, string>;
  /** Absolute file offset of the data region (8 + N). */
  dataStart: number;
}

/** Validate the header length read from the first 8 bytes against the file size. */
export function checkHeaderLength(file: string, n: bigint, fileSize: number): number {
  if (n > BigInt(MAX_HEADER_BYTES)) {
    throw new SafetensorsError(file, `header length ${n} is absurd (limit ${MAX_HEADER_BYTES} bytes)`);
  }
  const len = Number(n);
  if (8 + len > fileSize) {
    throw new SafetensorsError(file, `header length ${len} goes beyond the file size ${fileSize}`);
  }
  return len;
}

const isPlainObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

const isIndex = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

function parseMetadata(file: string, v: unknown): Record<string, string> {
  if (!isPlainObject(v)) throw new SafetensorsError(file, '__metadata__ is not an object');
  const out: Record<string, string> = Object.create(null);
  for (const [k, s] of Object.entries(v)) {
    if (typeof s !== 'string') throw new SafetensorsError(file, `__metadata__['${k}'] is not a string`);
    out[k] = s;
  }
  return out;
}

function parseEntry(file: string, name: string, v: unknown, dataLength: number): TensorEntry {
  const fail = (reason: string): never => {
    throw new SafetensorsError(file, reason, name);
  };
  if (!isPlainObject(v)) fail('entry is not an object');
  const { dtype, shape, data_offsets: offsets } = v as Record<string, unknown>;
  if (typeof dtype !== 'string') fail('dtype is missing or not a string');
  if (!isFileDType(dtype as string)) {
    fail(`unsupported dtype '${dtype}' (supported: ${Object.keys(FILE_DTYPES).join(', ')})`);
  }
  if (!Array.isArray(shape) || !shape.every(isIndex)) {
    fail(`shape ${JSON.stringify(shape)} is not an array of non-negative safe integers`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isIndex) || offsets[0] > offsets[1]) {
    fail(`data_offsets ${JSON.stringify(offsets)} is not [begin, end] with integers 0 <= begin <= end`);
  }
  const [begin, end] = offsets as [number, number];
  const size = FILE_DTYPES[dtype as FileDType].size;
  const count = elementCount(shape as number[]);
  if (count === null || count > Number.MAX_SAFE_INTEGER / size) {
    fail(`shape ${JSON.stringify(shape)} has an absurd element count (overflow)`);
  }
  if (end > dataLength) fail(`data_offsets [${begin}, ${end}] go beyond the data region (${dataLength} bytes)`);
  const expected = (count as number) * size;
  if (end - begin !== expected) {
    fail(`byte length ${end - begin} != ${expected} (shape ${JSON.stringify(shape)} x ${size} bytes per ${dtype})`);
  }
  return { name, dtype: dtype as FileDType, shape: shape as number[], begin, end };
}

/** Require the tensors to tile [0, dataLength) exactly, as the format specifies. */
function checkTiling(file: string, entries: TensorEntry[], dataLength: number): void {
  let pos = 0;
  let prev: string | null = null;
  for (const e of entries) {
    if (e.begin < pos) {
      throw new SafetensorsError(file, `data_offsets [${e.begin}, ${e.end}] overlap tensor '${prev}'`, e.name);
    }
    if (e.begin > pos) {
      const reason = `gap in the data region: bytes [${pos}, ${e.begin}) belong to no tensor`;
      throw new SafetensorsError(file, reason, e.name);
    }
    pos = e.end;
    prev = e.name;
  }
  if (pos !== dataLength) {
    throw new SafetensorsError(file, `gap in the data region: bytes [${pos}, ${dataLength}) belong to no tensor`);
  }
}

/** Parse and validate the header bytes of a file of `fileSize` bytes. */
export function parseHeader(file: string, bytes: Uint8Array, fileSize: number): ParsedHeader {
  const dataStart = 8 + bytes.length;
  const dataLength = fileSize - dataStart;
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new SafetensorsError(file, 'header is not valid UTF-8');
  }
  if (!text.startsWith('{')) throw new SafetensorsError(file, "header is not a JSON object (does not start with '{')");
  let json: unknown;
  try {
    json = JSON.parse(text); // trailing space padding is valid JSON whitespace
  } catch (err) {
    throw new SafetensorsError(file, `header is not valid JSON (${(err as Error).message})`);
  }
  if (!isPlainObject(json)) throw new SafetensorsError(file, 'header is not a JSON object');
  let metadata: Record<string, string> = Object.create(null);
  const entries: TensorEntry[] = [];
  for (const [name, v] of Object.entries(json)) {
    if (name === '__metadata__') metadata = parseMetadata(file, v);
    else entries.push(parseEntry(file, name, v, dataLength));
  }
  // Zero-length tensors sort before a tensor starting at the same offset, so they never "overlap" it.
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  checkTiling(file, entries, dataLength);
  return { entries, metadata, dataStart };
}

/** Header entry for writing: offsets relative to the data region. */
export interface HeaderEntryOut {
  name: string;
  dtype: FileDType;
  shape: readonly number[];
  begin: number;
  end: number;
}

/**
 * Encode the 8-byte length + JSON header, padded with spaces so the data region starts 8-byte
 * aligned (as the HF writer does). The JSON is assembled by hand so entries keep the given order
 * (a JS object would move integer-like names first) and names like '__proto__' stay plain keys.
 */
export function encodeHeader(entries: readonly HeaderEntryOut[], metadata?: Record<string, string>): Uint8Array {
  const parts: string[] = [];
  if (metadata && Object.keys(metadata).length > 0) {
    const meta = Object.entries(metadata).map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`);
    parts.push(`"__metadata__":{${meta.join(',')}}`);
  }
  for (const e of entries) {
    const shape = `[${e.shape.join(',')}]`;
    const info = `{"dtype":${JSON.stringify(e.dtype)},"shape":${shape},"data_offsets":[${e.begin},${e.end}]}`;
    parts.push(`${JSON.stringify(e.name)}:${info}`);
  }
  const json = new TextEncoder().encode(`{${parts.join(',')}}`);
  const n = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + n).fill(0x20);
  new DataView(out.buffer).setBigUint64(0, BigInt(n), true);
  out.set(json, 8);
  return out;
}
