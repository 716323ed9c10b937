/**
 * State dicts of PyTorch checkpoints behind the same `TensorReader` API as safetensors (src/io/safetensors-read.ts),
 * so pretrained directories, `convert` and `import` treat pickles and safetensors alike:
 *
 *   a checkpoint file           .bin / .pth / .pt (HF `pytorch_model.bin`, open_clip `open_clip_pytorch_model.bin`,
 *                               xtuner/mmengine `iter_N.pth`, ...): its state dict (src/io/torch-load.ts)
 *   an HF index                 `pytorch_model.bin.index.json` {"weight_map": {name: shard}}: the shards' union
 *   a DeepSpeed checkpoint dir  `mp_rank_00_model_states.pt` (directly, via the `latest` tag, or one step dir)
 *
 * Names, dtypes and shapes come from the pickles; tensor data is read by file offset only when asked for.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fsError, WeightsError } from '../errors.js';
import type { HostTensor } from './dtype.js';
import type { TensorInfo, TensorReader } from './safetensors-read.js';
import { findStateDict, TorchCheckpoint } from './torch-load.js';
import type { TorchTensor } from './torch-tensor.js';

/** File names PyTorch checkpoints go by. */
export const PICKLE_EXT = /\.(bin|pth|pt|ckpt)$/;
export const HF_BIN_INDEX = 'pytorch_model.bin.index.json';
export const DEEPSPEED_MODEL_STATES = 'mp_rank_00_model_states.pt';

export interface TorchReaderOptions {
  /** Where the state dict is inside the saved object (default: found, see findStateDict). */
  key?: string | null;
}

/** Every tensor of one or more checkpoints' state dicts, by name. */
export class TorchStateReader implements TensorReader {
  private closed = false;

  private constructor(
    /** The checkpoint file, or the index file. */
    readonly source: string,
    private readonly checkpoints: TorchCheckpoint[],
    private readonly tensors: Map<string, { tensor: TorchTensor; file: string }>,
    /** Where the state dict was in the saved object (null: the object itself). */
    readonly stateKey: string | null,
    /** Entries of the state dict(s) that are not tensors. */
    readonly skipped: { name: string; what: string }[],
  ) {}

  /** A checkpoint file or an HF `*.bin.index.json` (see resolveTorchInput for directories). */
  static async open(file: string, o: TorchReaderOptions = {}): Promise<TorchStateReader> {
    if (file.endsWith('.index.json')) return TorchStateReader.openIndex(file, o);
    const ck = await TorchCheckpoint.open(file);
    try {
      const zero = zeroShardsHint(file);
      let sd;
      try {
        sd = findStateDict(file, ck.root, o.key);
      } catch (e) {
        if (zero && e instanceof WeightsError) throw new WeightsError(e.message, { hint: zero });
        throw e;
      }
      if (zero && [...sd.tensors.values()].every((t) => t.numel === 0)) throw new WeightsError(`${file}: the state dict under '${sd.key}' holds no weights`, { hint: zero });
      refuseUnsupported(file, sd.unsupported);
      const tensors = new Map([...sd.tensors].map(([n, t]) => [n, { tensor: t, file }]));
      return new TorchStateReader(file, [ck], tensors, sd.key, sd.skipped);
    } catch (e) {
      await ck.close();
      throw e;
    }
  }

  private static async openIndex(index: string, o: TorchReaderOptions): Promise<TorchStateReader> {
    const weightMap = readIndex(index);
    const byShard = new Map<string, Set<string>>();
    for (const [name, shard] of weightMap) {
      if (!byShard.has(shard)) byShard.set(shard, new Set());
      byShard.get(shard)!.add(name);
    }
    const dir = path.dirname(index);
    for (const shard of byShard.keys()) {
      if (!existsSync(path.join(dir, shard))) throw new WeightsError(`${index}: weight_map names shard '${shard}', which does not exist`);
    }
    const checkpoints: TorchCheckpoint[] = [];
    const tensors = new Map<string, { tensor: TorchTensor; file: string }>();
    const skipped: { name: string; what: string }[] = [];
    let key: string | null = null;
    try {
      for (const [shard, listed] of [...byShard].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
        const file = path.join(dir, shard);
        const ck = await TorchCheckpoint.open(file);
        checkpoints.push(ck);
        const sd = findStateDict(file, ck.root, o.key);
        refuseUnsupported(file, sd.unsupported);
        key ??= sd.key;
        skipped.push(...sd.skipped);
        for (const name of listed) {
          if (!sd.tensors.has(name)) throw new WeightsError(`${index}: tensor '${name}': weight_map puts it in shard '${shard}', which does not hold it`);
        }
        for (const [name, tensor] of sd.tensors) {
          if (!listed.has(name)) throw new WeightsError(`${file}: tensor '${name}' is not listed for this shard in ${path.basename(index)}`);
          tensors.set(name, { tensor, file });
        }
      }
    } catch (e) {
      await Promise.all(checkpoints.map((c) => c.close()));
      throw e;
    }
    return new TorchStateReader(index, checkpoints, tensors, key, skipped);
  }

  /** Tensor names in state-dict order (shard by shard for an index). */
  keys(): string[] {
    return [...this.tensors.keys()];
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  /** The checkpoint tensor (dtype, shape, strides, storage) of `name`. */
  tensor(name: string): TorchTensor {
    const t = this.tensors.get(name);
    if (!t) throw new WeightsError(`${this.source}: no tensor '${name}'`);
    return t.tensor;
  }

  info(name: string): TensorInfo {
    const t = this.tensor(name);
    return { dtype: t.dtype, shape: [...t.shape], byteLength: t.byteLength };
  }

  /** The whole saved object of the (first) checkpoint: dicts are Maps (src/io/pickle.ts), e.g. mmengine's `meta`. */
  savedObject(): unknown {
    return this.checkpoints[0]?.root;
  }

  /** The checkpoint files read (one, or the shards of an index). */
  files(): string[] {
    return this.checkpoints.map((c) => c.file);
  }

  /** Contiguous little-endian bytes in the saved dtype (into `into`, exactly the tensor's size, when given). */
  async readRaw(name: string, into?: Uint8Array): Promise<Uint8Array> {
    if (this.closed) throw new WeightsError(`${this.source}: tensor '${name}' read after close`);
    return this.tensor(name).read(into);
  }

  /** float32 / int32, widened or narrowed as safetensors tensors are (src/io/dtype.ts). */
  async read(name: string): Promise<HostTensor> {
    if (this.closed) throw new WeightsError(`${this.source}: tensor '${name}' read after close`);
    return this.tensor(name).readHost(name);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all(this.checkpoints.map((c) => c.close()));
  }
}

function refuseUnsupported(file: string, unsupported: Map<string, string>): void {
  if (unsupported.size === 0) return;
  const list = [...unsupported].slice(0, 4).map(([n, what]) => `'${n}' is ${what}`);
  throw new WeightsError(`${file}: ${unsupported.size} tensors of kinds this reader does not decode: ${list.join(', ')}${unsupported.size > 4 ? ', ...' : ''}`, {
    hint: 'supported: dense float64, float32, float16, bfloat16, int64, int32, int16, int8, uint8 and bool tensors',
  });
}

/** weight_map of an HF `*.bin.index.json`: name -> shard file name (a plain name in the index's directory). */
function readIndex(index: string): Map<string, string> {
  let json: unknown;
  try {
    const { size } = statSync(index);
    if (size > 256 << 20) throw new WeightsError(`${index}: index of ${size} bytes is absurd`);
    json = JSON.parse(readFileSync(index, 'utf8'));
  } catch (e) {
    if (e instanceof WeightsError) throw e;
    if ((e as NodeJS.ErrnoException).code) throw fsError(e, index, 'reading the index');
    throw new WeightsError(`${index}: not valid JSON (${(e as Error).message})`);
  }
  const wm = (json as { weight_map?: unknown } | null)?.weight_map;
  if (typeof wm !== 'object' || wm === null || Array.isArray(wm)) throw new WeightsError(`${index}: no weight_map object`);
  const out = new Map<string, string>();
  for (const [name, shard] of Object.entries(wm)) {
    if (typeof shard !== 'string' || shard === '' || shard === '.' || shard === '..' || /[/\\\0]/.test(shard)) {
      throw new WeightsError(`${index}: tensor '${name}': weight_map entry ${JSON.stringify(shard)} is not a file name in the index's directory`);
    }
    out.set(name, shard);
  }
  if (out.size === 0) throw new WeightsError(`${index}: weight_map is empty`);
  return out;
}

/** The model-states file of a DeepSpeed checkpoint directory (a step dir, or one with `latest`), or null. */
function deepspeedStates(dir: string, depth = 0): string | null {
  const entries = readdirSync(dir);
  if (entries.includes(DEEPSPEED_MODEL_STATES)) {
    const others = entries.filter((f) => /^mp_rank_\d+_model_states\.pt$/.test(f) && f !== DEEPSPEED_MODEL_STATES);
    if (others.length) throw new WeightsError(`${dir}: a model-parallel DeepSpeed checkpoint (${others[0]}, ...): only mp_rank_00 (no model parallelism) is supported`);
    return path.join(dir, DEEPSPEED_MODEL_STATES);
  }
  if (depth > 0) return null;
  if (entries.includes('latest') && statSync(path.join(dir, 'latest')).isFile()) {
    const tag = readFileSync(path.join(dir, 'latest'), 'utf8').trim();
    if (tag && !/[/\\]/.test(tag) && existsSync(path.join(dir, tag))) return deepspeedStates(path.join(dir, tag), 1);
  }
  const steps = entries.filter((f) => statSync(path.join(dir, f)).isDirectory() && existsSync(path.join(dir, f, DEEPSPEED_MODEL_STATES)));
  if (steps.length > 1) throw new WeightsError(`${dir}: several DeepSpeed checkpoints (${steps.slice(0, 4).join(', ')}) and no 'latest' file: name one`);
  return steps.length === 1 ? deepspeedStates(path.join(dir, steps[0]!), 1) : null;
}

/**
 * The file `TorchStateReader.open` takes for a user's path: a file as is; for a directory, its DeepSpeed model
 * states, its HF `.bin` index, its `pytorch_model.bin`, or its only checkpoint file.
 */
export function resolveTorchInput(p: string): string {
  let st;
  try {
    st = statSync(p);
  } catch (e) {
    throw fsError(e, p, 'reading the checkpoint');
  }
  if (!st.isDirectory()) return p;
  const ds = deepspeedStates(p);
  if (ds) return ds;
  const files = readdirSync(p).filter((f) => statSync(path.join(p, f)).isFile());
  if (files.includes(HF_BIN_INDEX)) return path.join(p, HF_BIN_INDEX);
  const indexes = files.filter((f) => f.endsWith('.bin.index.json'));
  if (indexes.length === 1) return path.join(p, indexes[0]!);
  if (files.includes('pytorch_model.bin')) return path.join(p, 'pytorch_model.bin');
  const pickles = files.filter((f) => PICKLE_EXT.test(f));
  if (pickles.length === 1) return path.join(p, pickles[0]!);
  if (pickles.length > 1) throw new WeightsError(`${p}: several checkpoint files (${pickles.slice(0, 6).join(', ')}) and no ${HF_BIN_INDEX}: name one`);
  throw new WeightsError(`${p}: no PyTorch checkpoint here (no ${DEEPSPEED_MODEL_STATES}, ${HF_BIN_INDEX}, pytorch_model.bin or other .bin/.pth/.pt file)`);
}

/** When a DeepSpeed model-states file holds no weights (ZeRO-3 partitions them), say what to do. */
export function zeroShardsHint(file: string): string | undefined {
  if (path.basename(file) !== DEEPSPEED_MODEL_STATES) return undefined;
  const dir = path.dirname(file);
  if (!readdirSync(dir).some((f) => /^zero_pp_rank_\d+_mp_rank_\d+_optim_states\.pt$/.test(f) || /^bf16_zero_pp_rank_/.test(f))) return undefined;
  return `a ZeRO-3 checkpoint keeps its weights partitioned in ${dir}/*zero_pp_rank_*: merge them first with DeepSpeed's zero_to_fp32.py`;
}
