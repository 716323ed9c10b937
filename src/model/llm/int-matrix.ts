/**
 * Integer [B, T] matrices kept on the host: token ids, labels, attention masks and position ids.
 *
 * They stay host-side because the code that consumes them plans on the host anyway (the splice index
 * plan, the additive attention mask, the RoPE tables, the loss targets); only the final tensors go to
 * the backend.
 */
import type { HostTensor } from '../../io/safetensors.js';

/** A row-major int32 matrix `[rows, cols]`. */
export interface IntMatrix {
  data: Int32Array;
  shape: [number, number];
}

/** What callers may pass: nested arrays (rows of equal length), an IntMatrix, or a rank-2 int32 HostTensor. */
export type IntMatrixLike = number[][] | IntMatrix | HostTensor;

/** Normalise to an IntMatrix (copies nested arrays; shares the data of an IntMatrix / HostTensor). */
export function toIntMatrix(x: IntMatrixLike, what: string): IntMatrix {
  if (Array.isArray(x)) {
    const rows = x.length;
    const cols = rows ? x[0]!.length : 0;
    const data = new Int32Array(rows * cols);
    x.forEach((row, b) => {
      if (row.length !== cols) throw new Error(`${what}: row ${b} has ${row.length} entries, row 0 has ${cols}`);
      for (let t = 0; t < cols; t++) {
        const v = row[t]!;
        if (!Number.isInteger(v)) throw new Error(`${what}: entry [${b},${t}] = ${v} is not an integer`);
        data[b * cols + t] = v;
      }
    });
    return { data, shape: [rows, cols] };
  }
  if (x.shape.length !== 2) throw new Error(`${what}: expected a rank-2 [B,T] matrix, got shape [${x.shape}]`);
  if (!(x.data instanceof Int32Array)) throw new Error(`${what}: expected int32 data, got ${x.data.constructor.name}`);
  const [rows, cols] = x.shape as [number, number];
  if (x.data.length !== rows * cols) throw new Error(`${what}: ${x.data.length} values for shape [${rows},${cols}]`);
  return { data: x.data, shape: [rows, cols] };
}

/** Throw unless `m` has shape [rows, cols]. */
export function expectShape(m: IntMatrix, rows: number, cols: number, what: string): void {
  if (m.shape[0] !== rows || m.shape[1] !== cols) {
    throw new Error(`${what}: shape [${m.shape}] does not match [${rows},${cols}]`);
  }
}

/** A [rows, cols] matrix filled with `value`. */
export function filledIntMatrix(rows: number, cols: number, value: number): IntMatrix {
  return { data: new Int32Array(rows * cols).fill(value), shape: [rows, cols] };
}
