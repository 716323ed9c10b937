/**
 * Host tensors and the safetensors element types this project reads and writes.
 *
 * The host side only has float32 and int32 (what the tfjs backends compute in), so the reader widens
 * F16/BF16/F64 to float32 and narrows the integer types to int32, rejecting values that do not fit.
 */
import { SafetensorsError } from './safetensors-error.js';

export type HostDType = 'float32' | 'int32';

export interface HostTensor {
  dtype: HostDType;
  shape: number[];
  data: Float32Array | Int32Array;
}

/** Element size in bytes and the host dtype each file dtype decodes to. */
export const FILE_DTYPES = {
  F64: { size: 8, host: 'float32' },
  F32: { size: 4, host: 'float32' },
  F16: { size: 2, host: 'float32' },
  BF16: { size: 2, host: 'float32' },
  I64: { size: 8, host: 'int32' },
  U64: { size: 8, host: 'int32' },
  I32: { size: 4, host: 'int32' },
  U32: { size: 4, host: 'int32' },
  I16: { size: 2, host: 'int32' },
  U16: { size: 2, host: 'int32' },
  I8: { size: 1, host: 'int32' },
  U8: { size: 1, host: 'int32' },
  BOOL: { size: 1, host: 'int32' },
} as const satisfies Record<string, { size: number; host: HostDType }>;

export type FileDType = keyof typeof FILE_DTYPES;

export function isFileDType(s: string): s is FileDType {
  return Object.prototype.hasOwnProperty.call(FILE_DTYPES, s);
}

/** The file dtype a host tensor is written as (no narrowing on write). */
export function fileDTypeOf(dtype: HostDType): 'F32' | 'I32' {
  return dtype === 'float32' ? 'F32' : 'I32';
}

/** Typed-array views assume the file's little-endian layout is the host's. */
const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

export function assertLittleEndianHost(): void {
  if (!LITTLE_ENDIAN_HOST) throw new Error('safetensors I/O needs a little-endian host');
}

/** Number of elements of a shape, or null if it exceeds Number.MAX_SAFE_INTEGER. */
export function elementCount(shape: readonly number[]): number | null {
  if (shape.includes(0)) return 0;
  let n = 1;
  for (const d of shape) {
    if (n > Number.MAX_SAFE_INTEGER / d) return null;
    n *= d;
  }
  return n;
}

let f16Table: Float32Array | null = null;

/** All 65536 half-precision values as float32, built once on first use (256 KiB). */
function halfTable(): Float32Array {
  if (f16Table) return f16Table;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const mant = h & 0x3ff;
    if (exp === 0) t[h] = sign * mant * 2 ** -24; // zero and subnormals
    else if (exp === 31) t[h] = mant === 0 ? sign * Infinity : NaN;
    else t[h] = sign * (1 + mant / 1024) * 2 ** (exp - 15);
  }
  f16Table = t;
  return t;
}

/**
 * Decode the raw little-endian bytes of one tensor (`buf` is exactly its byteLength, so views are
 * aligned) into a host array. F32 and I32 are returned as views on `buf` without copying.
 * `file`/`tensor` only name the culprit in range errors.
 */
export function decodeTensor(
  dtype: FileDType,
  buf: ArrayBuffer,
  file: string,
  tensor: string,
): Float32Array | Int32Array {
  const outOfRange = (i: number, value: bigint | number): never => {
    throw new SafetensorsError(file, `${dtype} value ${value} at element ${i} does not fit in int32`, tensor);
  };
  switch (dtype) {
    case 'F32':
      return new Float32Array(buf);
    case 'I32':
      return new Int32Array(buf);
    case 'F64':
      return new Float32Array(new Float64Array(buf));
    case 'F16': {
      const h = new Uint16Array(buf);
      const table = halfTable();
      const out = new Float32Array(h.length);
      for (let i = 0; i < h.length; i++) out[i] = table[h[i]];
      return out;
    }
    case 'BF16': {
      // bf16 is the upper half of a float32's bits.
      const h = new Uint16Array(buf);
      const bits = new Uint32Array(h.length);
      for (let i = 0; i < h.length; i++) bits[i] = h[i] << 16;
      return new Float32Array(bits.buffer);
    }
    case 'I64':
    case 'U64': {
      // Each 64-bit value as (low, high) int32 words; it fits int32 iff high is low's sign extension
      // (signed) or zero with a non-negative low word (unsigned).
      const w = new Int32Array(buf);
      const out = new Int32Array(w.length / 2);
      const big = dtype === 'I64' ? new BigInt64Array(buf) : new BigUint64Array(buf);
      for (let i = 0; i < out.length; i++) {
        const lo = w[2 * i];
        const hi = w[2 * i + 1];
        const fits = dtype === 'I64' ? hi === lo >> 31 : hi === 0 && lo >= 0;
        if (!fits) outOfRange(i, big[i]);
        out[i] = lo;
      }
      return out;
    }
    case 'U32': {
      const u = new Uint32Array(buf);
      for (let i = 0; i < u.length; i++) if (u[i] > 0x7fffffff) outOfRange(i, u[i]);
      return new Int32Array(buf);
    }
    case 'I16':
      return new Int32Array(new Int16Array(buf));
    case 'U16':
      return new Int32Array(new Uint16Array(buf));
    case 'I8':
      return new Int32Array(new Int8Array(buf));
    case 'U8':
      return new Int32Array(new Uint8Array(buf));
    case 'BOOL': {
      const b = new Uint8Array(buf);
      for (let i = 0; i < b.length; i++) {
        if (b[i] > 1) throw new SafetensorsError(file, `BOOL byte ${b[i]} at element ${i} is neither 0 nor 1`, tensor);
      }
      return new Int32Array(b);
    }
  }
}
