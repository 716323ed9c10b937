/**
 * PyTorch checkpoint -> safetensors (`mgllava convert`), without Python and without executing the pickle.
 *
 * Input: a checkpoint file, a DeepSpeed checkpoint directory or an HF directory of `.bin` shards (see
 * resolveTorchInput). Every tensor of the state dict is written under its state-dict key in its saved dtype, bytes
 * unchanged (views materialised contiguous). Tensors stream one at a time from the input's file offsets to the
 * output (never all in memory); above `maxShardBytes` the output is HF-sharded with an index, by the same writer as
 * every other safetensors file of the project (src/io/sharded.ts).
 */
import { existsSync, realpathSync, statSync } from 'node:fs';
import path from 'node:path';
import { UsageError, WeightsError } from '../errors.js';
import { ensureDir } from '../run/guard.js';
import { writeShardedSafetensors, type RawTensor } from './safetensors.js';
import { resolveTorchInput, TorchStateReader } from './torch-reader.js';

export interface ConvertOptions {
  /** Where the state dict is inside the saved object (default: found automatically). */
  key?: string | null;
  /** Largest shard (tensor bytes); a larger output is sharded with an index. */
  maxShardBytes: number;
  /** Replace an existing output. */
  overwrite?: boolean;
}

export interface ConvertResult {
  /** The checkpoint file (or index) read. */
  source: string;
  /** Where the state dict was in the saved object (null: the object itself). */
  key: string | null;
  tensors: number;
  /** Tensor data bytes written. */
  bytes: number;
  /** Non-tensor entries of the state dict, not converted. */
  skipped: { name: string; what: string }[];
  /** The safetensors files written, and the index (null: one file). */
  files: string[];
  index: string | null;
}

/** Shard cap of the output by default: Hugging Face's 2 GB, as `export --format hf` uses. */
export const CONVERT_MAX_SHARD_BYTES = 2_000_000_000;

const real = (p: string): string => (existsSync(p) ? realpathSync(p) : path.resolve(p));

export async function convertTorchCheckpoint(input: string, out: string, o: ConvertOptions): Promise<ConvertResult> {
  if (!out.endsWith('.safetensors')) throw new UsageError(`--out ${out}: the output must be a .safetensors file`);
  const prefix = path.basename(out).slice(0, -'.safetensors'.length);
  if (prefix === '') throw new UsageError(`--out ${out}: name the file (e.g. model.safetensors)`);
  if (existsSync(out) && statSync(out).isDirectory()) throw new UsageError(`--out ${out} is a directory; give a file name (e.g. ${path.join(out, 'model.safetensors')})`);
  if (existsSync(out) && !o.overwrite) throw new UsageError(`--out ${out} exists`, { hint: 'pass --overwrite to replace it' });
  await ensureDir(path.dirname(out), '--out'); // below a file, a dangling link, /proc or /dev: one line naming it
  const source = resolveTorchInput(input);
  const reader = await TorchStateReader.open(source, { key: o.key });
  try {
    if (reader.files().some((f) => real(f) === real(out))) throw new UsageError(`--out ${out} is the input file`);
    const names = reader.keys();
    if (names.length === 0) throw new WeightsError(`${source}: the state dict${reader.stateKey ? ` under '${reader.stateKey}'` : ''} holds no tensors (${reader.skipped.length} other entries)`);
    // One buffer, as large as the largest tensor, holds each tensor in turn: the writer consumes a tensor's bytes
    // before it loads the next, and fresh memory per tensor costs page faults on every byte (slow on VMs).
    let scratch: Uint8Array | null = null;
    const largest = Math.max(...names.map((n) => reader.tensor(n).byteLength));
    const tensors = new Map<string, RawTensor>();
    for (const name of names) {
      const t = reader.tensor(name);
      tensors.set(name, {
        fileDtype: t.dtype,
        shape: [...t.shape],
        load: () => {
          scratch ??= new Uint8Array(largest);
          return reader.readRaw(name, scratch.subarray(0, t.byteLength));
        },
      });
    }
    const written = await writeShardedSafetensors(path.dirname(out), tensors, {
      maxShardBytes: o.maxShardBytes,
      prefix,
      metadata: { source: path.basename(source), ...(reader.stateKey ? { state_dict_key: reader.stateKey } : {}) },
    });
    return { source, key: reader.stateKey, tensors: names.length, bytes: written.totalSize, skipped: reader.skipped, files: written.files, index: written.index };
  } finally {
    await reader.close();
  }
}
