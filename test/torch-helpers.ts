/** Helpers of the torch checkpoint tests: raw safetensors contents, CLI runs with captured output. */
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

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run the CLI in-process, capturing what it writes. */
export async function runCli(argv: string[]): Promise<CliRun> {
  const out: string[] = [];
  const err: string[] = [];
  const o = process.stdout.write.bind(process.stdout);
  const e = process.stderr.write.bind(process.stderr);
  process.stdout.write = ((c: string | Uint8Array) => (out.push(String(c)), true)) as typeof process.stdout.write;
  process.stderr.write = ((c: string | Uint8Array) => (err.push(String(c)), true)) as typeof process.stderr.write;
  const before = process.exitCode;
  // Loaded on first use: the CLI pulls in every command (tfjs included); library-level tests do without it.
  const { main } = await import('../src/cli/main.js');
  let code: number;
  try {
    code = await main(argv);
  } finally {
    process.stdout.write = o;
    process.stderr.write = e;
    process.exitCode = before;
  }
  return { code, stdout: out.join(''), stderr: err.join('') };
}

/** A failed CLI run must say so in one line (no stack trace) with a non-zero exit. */
export function expectOneLineError(r: CliRun): string {
  if (r.code === 0) throw new Error(`expected a failure, got exit 0 (stdout: ${r.stdout})`);
  const lines = r.stderr.trimEnd().split('\n');
  if (lines.length !== 1 || !lines[0]!.startsWith('mgllava: ') || /internal error|\n\s+at /.test(r.stderr)) {
    throw new Error(`expected one error line, got:\n${r.stderr}`);
  }
  return lines[0]!;
}
