/**
 * Hugging Face sharded layout: `<prefix>-00001-of-0000N.safetensors` files plus
 * `<prefix>.safetensors.index.json` ({"metadata": {"total_size"}, "weight_map": {name: file}}),
 * or a single `<prefix>.safetensors` when everything fits in one shard.
 */
import { mkdir, readdir, readFile, rename, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { SafetensorsError } from './safetensors-error.js';
import type { HostTensor } from './dtype.js';
import { MAX_HEADER_BYTES } from './safetensors-header.js';
import { SafetensorsReader, type TensorInfo, type TensorReader } from './safetensors-read.js';
import { buildFiles, removeQuietly, tempName, writeFileAtomic, type TensorSource } from './safetensors-write.js';

export interface ShardedWriteOptions {
  /** Upper bound on the tensor data bytes of one shard (a larger tensor gets a shard of its own). */
  maxShardBytes: number;
  /** File name prefix; 'model' gives the HF names. */
  prefix?: string;
  /** `__metadata__` of every shard; `format: 'pt'` is added unless given (transformers checks it). */
  metadata?: Record<string, string>;
}

export interface ShardedWriteResult {
  /** Absolute-or-as-given paths of the written safetensors files, in order. */
  files: string[];
  /** The index file, or null when a single `<prefix>.safetensors` was written. */
  index: string | null;
  /** Sum of the tensor data bytes (the index's `metadata.total_size`). */
  totalSize: number;
}

export function shardFileName(prefix: string, i: number, n: number): string {
  const pad = (k: number) => String(k).padStart(5, '0');
  return `${prefix}-${pad(i + 1)}-of-${pad(n)}.safetensors`;
}

const escapeRegExp = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** A shard name from an index must be a plain file in the index's directory (untrusted input). */
function isPlainFileName(name: string): boolean {
  return name !== '' && name !== '.' && name !== '..' && !/[/\\]/.test(name) && !name.includes('\0');
}

/**
 * Write `tensors` (see `writeSafetensors` for the accepted sources, order and lazy loading) into
 * `dir` as HF shards + index, or one `<prefix>.safetensors`. Shards are renamed into place once all
 * are complete, the index is written last and atomically, then files of an earlier export with the
 * same prefix that are not part of this one (other shards, an index, a single file) are removed,
 * as transformers' save_pretrained does, so the directory holds exactly one consistent checkpoint.
 */
export async function writeShardedSafetensors(
  dir: string,
  tensors: TensorSource,
  options: ShardedWriteOptions,
): Promise<ShardedWriteResult> {
  const prefix = options.prefix ?? 'model';
  const indexName = `${prefix}.safetensors.index.json`;
  if (!isPlainFileName(prefix)) throw new SafetensorsError(dir, `prefix '${prefix}' must be a plain file name`);
  if (!(options.maxShardBytes > 0)) {
    throw new SafetensorsError(dir, `maxShardBytes must be positive, got ${options.maxShardBytes}`);
  }
  await mkdir(dir, { recursive: true });
  const metadata = { format: 'pt', ...options.metadata };
  const built = await buildFiles(dir, tensors, options.maxShardBytes, metadata, (label) =>
    tempName(join(dir, `${prefix}.${label}`)),
  );
  const names =
    built.length === 1 ? [`${prefix}.safetensors`] : built.map((_, i) => shardFileName(prefix, i, built.length));
  const files = names.map((n) => join(dir, n));
  const totalSize = built.reduce((s, b) => s + b.dataBytes, 0);
  try {
    for (let i = 0; i < built.length; i++) await rename(built[i].temp, files[i]);
  } catch (err) {
    await Promise.all(built.map((b) => removeQuietly(b.temp)));
    throw err;
  }
  let index: string | null = null;
  if (built.length > 1) {
    const weightMap = built.flatMap((b, i) => b.names.map((name) => [name, names[i]] as const));
    weightMap.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    // Object.fromEntries defines own properties, so a tensor named '__proto__' stays a plain key.
    const json = { metadata: { total_size: totalSize }, weight_map: Object.fromEntries(weightMap) };
    index = join(dir, indexName);
    await writeFileAtomic(index, `${JSON.stringify(json, null, 2)}\n`);
  }
  await removeStale(dir, prefix, new Set(index ? [...names, indexName] : names));
  return { files, index, totalSize };
}

/** Remove this prefix's shards/index/single file left by an earlier export. */
async function removeStale(dir: string, prefix: string, keep: Set<string>): Promise<void> {
  const p = escapeRegExp(prefix);
  const ours = new RegExp(
    `^(?:${p}-\\d{5,}-of-\\d{5,}\\.safetensors|${p}\\.safetensors|${p}\\.safetensors\\.index\\.json)$`,
  );
  const stale = (await readdir(dir)).filter((f) => ours.test(f) && !keep.has(f));
  await Promise.all(stale.map((f) => removeQuietly(join(dir, f))));
}

/** Where the weights of a directory / file argument live. */
async function locate(p: string): Promise<{ index: string } | { single: string }> {
  const st = await stat(p);
  if (!st.isDirectory()) return p.endsWith('.json') ? { index: p } : { single: p };
  const entries = await readdir(p);
  const hasIndex = entries.includes('model.safetensors.index.json');
  const hasSingle = entries.includes('model.safetensors');
  if (hasIndex && hasSingle) {
    throw new SafetensorsError(p, 'holds both model.safetensors and model.safetensors.index.json: ambiguous');
  }
  if (hasIndex) return { index: join(p, 'model.safetensors.index.json') };
  if (hasSingle) return { single: join(p, 'model.safetensors') };
  const indexes = entries.filter((f) => f.endsWith('.safetensors.index.json'));
  if (indexes.length === 1) return { index: join(p, indexes[0]) };
  if (indexes.length > 1) throw new SafetensorsError(p, `several *.safetensors.index.json: ${indexes.join(', ')}`);
  throw new SafetensorsError(p, 'no model.safetensors, model.safetensors.index.json or *.safetensors.index.json');
}

interface ParsedIndex {
  /** name -> shard file name, in index order. */
  weightMap: Map<string, string>;
  metadata: Record<string, unknown>;
}

async function parseIndex(path: string): Promise<ParsedIndex> {
  const { size } = await stat(path);
  if (size > MAX_HEADER_BYTES) throw new SafetensorsError(path, `index of ${size} bytes is absurdly large`);
  let json: unknown;
  try {
    json = JSON.parse(await readFile(path, 'utf8'));
  } catch (err) {
    throw new SafetensorsError(path, `index is not valid JSON (${(err as Error).message})`);
  }
  const isObject = (v: unknown): v is Record<string, unknown> =>
    typeof v === 'object' && v !== null && !Array.isArray(v);
  if (!isObject(json)) throw new SafetensorsError(path, 'index is not a JSON object');
  if (!isObject(json.weight_map)) throw new SafetensorsError(path, 'index has no weight_map object');
  if (json.metadata !== undefined && !isObject(json.metadata)) {
    throw new SafetensorsError(path, 'index metadata is not an object');
  }
  const weightMap = new Map<string, string>();
  for (const [name, file] of Object.entries(json.weight_map)) {
    if (typeof file !== 'string' || !isPlainFileName(file)) {
      const reason = `weight_map entry ${JSON.stringify(file)} is not a file name in the index's directory`;
      throw new SafetensorsError(path, reason, name);
    }
    weightMap.set(name, file);
  }
  return { weightMap, metadata: { ...(json.metadata as Record<string, unknown> | undefined) } };
}

/**
 * Reads an HF checkpoint directory, an index file or a single safetensors file with the
 * `TensorReader` API. At open every shard header is read and checked against the weight_map (one
 * file handle at a time); tensor data is read on demand, keeping one shard open. Reads are
 * serialised so switching shards never closes a handle another read is using.
 */
export class ShardedReader implements TensorReader {
  private current: SafetensorsReader | null = null;
  private queue: Promise<void> = Promise.resolve();
  private closed = false;

  private constructor(
    /** The index file, or the single safetensors file. */
    readonly source: string,
    private readonly shardOf: Map<string, string>,
    private readonly infos: Map<string, TensorInfo>,
    private readonly fileMetadata: Record<string, string>,
    private readonly indexMeta: Record<string, unknown> | null,
  ) {}

  static async open(dirOrFile: string): Promise<ShardedReader> {
    const where = await locate(dirOrFile);
    if ('single' in where) {
      const r = await SafetensorsReader.open(where.single);
      try {
        const keys = r.keys();
        return new ShardedReader(
          where.single,
          new Map(keys.map((k) => [k, where.single])),
          new Map(keys.map((k) => [k, r.info(k)])),
          r.metadata(),
          null,
        );
      } finally {
        await r.close();
      }
    }
    const indexPath = where.index;
    const { weightMap, metadata } = await parseIndex(indexPath);
    const byShard = new Map<string, string[]>();
    for (const [name, file] of weightMap) {
      const names = byShard.get(file);
      if (names) names.push(name);
      else byShard.set(file, [name]);
    }
    const shardOf = new Map<string, string>();
    const infos = new Map<string, TensorInfo>();
    let fileMetadata: Record<string, string> | null = null;
    const shards = [...byShard.keys()].sort();
    // Missing shards first: they explain any other mismatch (e.g. tensors moved to a missing file).
    for (const file of shards) {
      await stat(join(dirname(indexPath), file)).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err;
        throw new SafetensorsError(indexPath, `weight_map names shard '${file}', which does not exist`);
        throw err;
      });
    }
    for (const file of shards) {
      const shardPath = join(dirname(indexPath), file);
      const r = await SafetensorsReader.open(shardPath);
      try {
        const listed = new Set(byShard.get(file));
        for (const name of listed) {
          if (!r.has(name)) {
            throw new SafetensorsError(indexPath, `weight_map puts it in shard '${file}', which does not hold it`, name);
          }
        }
        for (const name of r.keys()) {
          if (!listed.has(name)) {
            throw new SafetensorsError(shardPath, `not listed for this shard in ${basename(indexPath)}`, name);
          }
          shardOf.set(name, shardPath);
          infos.set(name, r.info(name));
        }
        fileMetadata ??= r.metadata();
      } finally {
        await r.close();
      }
    }
    return new ShardedReader(indexPath, shardOf, infos, fileMetadata ?? {}, metadata);
  }

  /** Tensor names, shard by shard in file order. */
  keys(): string[] {
    return [...this.infos.keys()];
  }

  has(name: string): boolean {
    return this.infos.has(name);
  }

  info(name: string): TensorInfo {
    const i = this.infos.get(name);
    if (!i) throw new SafetensorsError(this.source, 'no such tensor', name);
    return { ...i, shape: [...i.shape] };
  }

  /** The shard file holding `name`. */
  fileOf(name: string): string {
    this.info(name);
    return this.shardOf.get(name) as string;
  }

  /** The shard files, in order. */
  files(): string[] {
    return [...new Set(this.shardOf.values())];
  }

  /** `__metadata__` of the first shard (our writer gives every shard the same). */
  metadata(): Record<string, string> {
    return { ...this.fileMetadata };
  }

  /** The index's `metadata` object (e.g. total_size), or null for a single file. */
  indexMetadata(): Record<string, unknown> | null {
    return this.indexMeta && { ...this.indexMeta };
  }

  async read(name: string): Promise<HostTensor> {
    const shard = this.fileOf(name);
    if (this.closed) throw new SafetensorsError(this.source, 'read after close', name);
    // Everything up to the first await runs synchronously, so reads queue in call order.
    const result = this.queue.then(() => this.readFrom(shard, name));
    this.queue = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }

  async readAll(): Promise<Map<string, HostTensor>> {
    const out = new Map<string, HostTensor>();
    for (const name of this.keys()) out.set(name, await this.read(name));
    return out;
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.queue;
    await this.current?.close();
    this.current = null;
  }

  private async readFrom(shard: string, name: string): Promise<HostTensor> {
    if (this.current?.path !== shard) {
      await this.current?.close();
      this.current = null;
      this.current = await SafetensorsReader.open(shard);
    }
    const now = this.current.has(name) ? this.current.info(name) : null;
    const then = this.infos.get(name) as TensorInfo;
    if (!now || now.dtype !== then.dtype || now.shape.join() !== then.shape.join()) {
      throw new SafetensorsError(shard, 'shard changed since the reader was opened', name);
    }
    return this.current.read(name);
  }
}
