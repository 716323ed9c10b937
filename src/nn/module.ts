/**
 * The base of every model part: a tree of modules whose weights carry their checkpoint names.
 *
 * - Weights are `tf.Variable`s stored in the **checkpoint (PyTorch) layout**: Linear `[out, in]`,
 *   Conv `[out, in/groups, kh, kw]`. Import/export is therefore a rename table only; modules transpose
 *   where a tfjs op wants another layout (cheap next to the matmuls, and the kernel pack makes
 *   transposed matmuls fast on wasm).
 * - `namedWeights()` yields dotted names exactly as the reference checkpoints spell them
 *   (`model.layers.0.self_attn.q_proj.weight`), prefixed by the parent's child names.
 * - Modules never read files or configs; `getConfig()` returns the plain config they were built from.
 */
import * as tf from '@tensorflow/tfjs';
import type { Rng } from '../util/rng.js';
import { initValues, type Initializer } from './init.js';
import { ResourceError, WeightsError } from '../errors.js';

/** Elements of the largest weight a module may create (2^31: 8 GiB of float32; a 128k x 4096 embedding has 5e8). */
export const MAX_WEIGHT_ELEMENTS = 2 ** 31;

/** How a module tree is initialised: from a seeded generator, or left at zero when weights will be loaded. */
export interface InitContext {
  rng: Rng;
  /** Skip random draws (weights are about to be overwritten by a checkpoint). */
  skipInit?: boolean;
}

export interface WeightLike {
  shape: number[];
  dtype?: string;
}

export abstract class Module<C = unknown> {
  private readonly ownWeights = new Map<string, tf.Variable>();
  private readonly children = new Map<string, Module>();

  protected constructor(readonly config: C) {}

  /** Create a named weight in checkpoint layout. */
  protected addWeight(name: string, shape: number[], init: Initializer, ctx: InitContext, trainable = true): tf.Variable {
    if (this.ownWeights.has(name) || this.children.has(name)) throw new Error(`duplicate weight name '${name}'`);
    const n = shape.reduce((a, b) => a * b, 1);
    if (!(n <= MAX_WEIGHT_ELEMENTS)) {
      // A size typo (vocab_size: 1e11) is named here, not a RangeError from deep inside a typed-array allocation.
      throw new ResourceError(`a weight of shape [${shape.join(', ')}] (${name}) has ${n} elements, more than one tensor can hold (${MAX_WEIGHT_ELEMENTS}): check the model sizes in the config`);
    }
    const initial = ctx.skipInit ? tf.zeros(shape) : tf.tensor(initValues(init, shape, ctx.rng), shape, 'float32');
    const v = tf.variable(initial, trainable);
    initial.dispose(); // the variable holds its own reference to the data
    this.ownWeights.set(name, v);
    return v;
  }

  /** Register a child module under `name` (a dotted path segment such as `layers.3` is fine). */
  protected addChild<M extends Module>(name: string, child: M): M {
    if (this.ownWeights.has(name) || this.children.has(name)) throw new Error(`duplicate child name '${name}'`);
    this.children.set(name, child);
    return child;
  }

  /**
   * Register every child of `holder` directly under this module, without a name segment for `holder`
   * itself: for a part whose weights sit at the checkpoint's top level (ObjectFeatures owns
   * `bbox_projector.*` and `multi_level_linear.*`, not `objects.bbox_projector.*`). `holder` must have
   * no weights of its own.
   */
  protected adoptChildren(holder: Module): void {
    if (holder.ownWeights.size) throw new Error('adoptChildren: the holder has weights of its own');
    for (const [n, c] of holder.children) this.addChild(n, c);
  }

  /** All weights of this subtree, under their checkpoint names, in declaration order. */
  *namedWeights(prefix = ''): Generator<[string, tf.Variable]> {
    for (const [n, v] of this.ownWeights) yield [prefix + n, v];
    for (const [n, c] of this.children) yield* c.namedWeights(`${prefix}${n}.`);
  }

  /** The weights as a map (checkpoint name -> variable). */
  weightMap(prefix = ''): Map<string, tf.Variable> {
    return new Map(this.namedWeights(prefix));
  }

  /** Direct children, for code that walks the tree (e.g. parameter counts per module). */
  namedChildren(): [string, Module][] {
    return [...this.children];
  }

  numParameters(): number {
    let n = 0;
    for (const [, v] of this.namedWeights()) n += v.size;
    return n;
  }

  /** Mark every weight of this subtree trainable or frozen. */
  setTrainable(trainable: boolean): void {
    for (const [, v] of this.namedWeights()) v.trainable = trainable;
  }

  getConfig(): C {
    return structuredClone(this.config);
  }

  dispose(): void {
    for (const [, v] of this.namedWeights()) v.dispose();
  }
}

export class WeightLoadError extends WeightsError {
  constructor(
    message: string,
    readonly missing: string[] = [],
    readonly unexpected: string[] = [],
  ) {
    super(message);
    this.name = 'WeightLoadError';
  }
}

export interface LoadOptions {
  /** Prefix of the module's names inside `source` (e.g. `llm.`). */
  prefix?: string;
  /** Refuse weights in `source` (under the prefix) that the module does not have. Default true. */
  strict?: boolean;
  /** Allow the module to keep weights that `source` lacks (e.g. loading a pretrain checkpoint). Default false. */
  allowMissing?: boolean;
  /** Where the weights came from, for error messages. */
  origin?: string;
}

/** A source of named weights: tensors or host arrays with a shape. */
export type WeightSource = Map<string, tf.Tensor | { shape: number[]; data: Float32Array | Int32Array }>;

/**
 * Assign weights from `source` by checkpoint name. Missing / unexpected names and shape mismatches are
 * errors that list every offending name (never a partial silent load).
 */
export function loadWeights(module: Module, source: WeightSource, opts: LoadOptions = {}): string[] {
  const { prefix = '', strict = true, allowMissing = false, origin = 'weights' } = opts;
  const target = module.weightMap(prefix);
  const missing: string[] = [];
  const mismatched: string[] = [];
  for (const [name, v] of target) {
    const src = source.get(name);
    if (!src) {
      missing.push(name);
      continue;
    }
    if (src.shape.length !== v.shape.length || src.shape.some((d, i) => d !== v.shape[i])) {
      mismatched.push(`${name}: ${origin} has [${src.shape}], model expects [${v.shape}]`);
    }
  }
  const unexpected = strict ? [...source.keys()].filter((k) => k.startsWith(prefix) && !target.has(k)) : [];
  const problems: string[] = [];
  if (missing.length && !allowMissing) problems.push(`missing ${missing.length}: ${missing.join(', ')}`);
  if (unexpected.length) problems.push(`unexpected ${unexpected.length}: ${unexpected.join(', ')}`);
  if (mismatched.length) problems.push(`shape mismatch: ${mismatched.join('; ')}`);
  if (problems.length) {
    throw new WeightLoadError(`cannot load ${origin}:\n  ${problems.join('\n  ')}`, missing, unexpected);
  }
  const loaded: string[] = [];
  for (const [name, v] of target) {
    const src = source.get(name);
    if (!src) continue;
    if (src instanceof tf.Tensor) {
      v.assign(src.dtype === 'float32' ? src : tf.tidy(() => src.toFloat()));
    } else {
      tf.tidy(() => v.assign(tf.tensor(src.data, src.shape, 'float32')));
    }
    loaded.push(name);
  }
  return loaded;
}
