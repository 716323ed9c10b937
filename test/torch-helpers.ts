/** Helpers of the torch checkpoint tests: the fixtures folder, raw safetensors contents. */
import { readFileSync } from 'node:fs';
import path from 'node:path';

export const FIXTURES = path.resolve(import.meta.dirname, '../../shared/torch-checkpoints');

export interface RawTensorData {
  dtype: string;
  shape: number[];
  bytes: Buffer;
}

/** Every tensor of a safetensors file (or of the shards an index names) with its stored bytes, undecoded. */
export function rawSafetensors(file: string): Map<string, RawTensorData> {
  if (file.endsWith('.index.json')) {
    const index = JSON.parse(readFileSync(file, 'utf8')) as { weight_map: Record<string, string> };
    const out = new Map<string, RawTensorData>();
    for (const shard of new Set(Object.values(index.weight_map))) {
      for (const [k, v] of rawSafetensors(path.join(path.dirname(file), shard))) out.set(k, v);
    }
    return out;
  }
  const buf = readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const out = new Map<string, RawTensorData>();
  for (const [k, v] of Object.entries(header)) {
    if (k === '__metadata__') continue;
    out.set(k, { dtype: v.dtype, shape: v.shape, bytes: buf.subarray(8 + n + v.data_offsets[0], 8 + n + v.data_offsets[1]) });
  }
  return out;
}
