/**
 * Named weights <-> safetensors files, one tensor at a time (a full-size LLM never sits twice in host memory).
 *
 * Loading checks every name and shape from the file header before any data is read, so a wrong file is an
 * error listing the offending names and the model is left untouched.
 */
import * as tf from '@tensorflow/tfjs';
import { SafetensorsReader, writeSafetensors, type LazyTensor } from './safetensors.js';
import { hostTensorFromTf } from './host-tensor.js';
import { WeightLoadError } from '../nn/module.js';
import { WeightsError } from '../errors.js';

export interface LoadFileOptions {
  /** Weights the file may lack (default: none may be missing). */
  allowMissing?: boolean;
  /** Only these target names are expected in the file; a file name outside them is unexpected. Default: all. */
  only?: (name: string) => boolean;
  /** File tensors to leave unread (neither loaded nor unexpected). */
  skip?: (name: string) => boolean;
}

/**
 * Assign the tensors of `file` to `target` (checkpoint name -> variable). Every tensor of the file must name a
 * target weight of the same shape. Returns the names assigned.
 */
export async function loadWeightsFile(target: Map<string, tf.Variable>, file: string, o: LoadFileOptions = {}): Promise<string[]> {
  const reader = await SafetensorsReader.open(file);
  try {
    const wanted = o.only ?? (() => true);
    const names = reader.keys().filter((n) => !o.skip?.(n));
    const unexpected: string[] = [];
    const mismatched: string[] = [];
    for (const name of names) {
      const v = target.get(name);
      if (!v || !wanted(name)) {
        unexpected.push(name);
        continue;
      }
      const shape = reader.info(name).shape;
      if (shape.length !== v.shape.length || shape.some((d, i) => d !== v.shape[i])) {
        mismatched.push(`${name}: file has [${shape}], model expects [${v.shape}]`);
      }
    }
    const missing = o.allowMissing ? [] : [...target.keys()].filter((n) => wanted(n) && !reader.has(n));
    const problems: string[] = [];
    if (unexpected.length) problems.push(`unexpected ${unexpected.length}: ${unexpected.join(', ')}`);
    if (missing.length) problems.push(`missing ${missing.length}: ${missing.join(', ')}`);
    if (mismatched.length) problems.push(`shape mismatch: ${mismatched.join('; ')}`);
    if (problems.length) throw new WeightLoadError(`cannot load ${file}:\n  ${problems.join('\n  ')}`, missing, unexpected);
    const loaded: string[] = [];
    for (const name of names) {
      const h = await reader.read(name);
      if (h.dtype !== 'float32') throw new WeightLoadError(`cannot load ${file}: ${name} is ${h.dtype}, weights are float32`);
      checkFinite(file, name, h.data as Float32Array);
      tf.tidy(() => target.get(name)!.assign(tf.tensor(h.data, h.shape, 'float32')));
      loaded.push(name);
    }
    return loaded;
  } finally {
    await reader.close();
  }
}

/**
 * Refuse a weight with NaN or Inf values: such a checkpoint (a diverged run, a corrupt file) would load and then
 * answer nothing in chat, score 0 in eval and export silently (issue 12 (f)).
 */
export function checkFinite(file: string, name: string, data: ArrayLike<number>): void {
  let bad = 0;
  let first = -1;
  for (let i = 0; i < data.length; i++) {
    if (!Number.isFinite(data[i]!)) {
      if (bad === 0) first = i;
      bad++;
    }
  }
  if (bad) {
    throw new WeightsError(`${file}: ${name} has ${bad} non-finite value(s) (first at flat index ${first}: ${data[first]}): the checkpoint is unusable`, {
      hint: 'a diverged run or a corrupt file; use an earlier checkpoint (--step N)',
    });
  }
}

/** Write variables (read back one at a time as the file is written) atomically. */
export async function writeWeightsFile(file: string, weights: Map<string, tf.Tensor>, metadata?: Record<string, string>): Promise<void> {
  const lazy = new Map<string, LazyTensor>();
  for (const [name, t] of weights) {
    if (t.dtype !== 'float32') throw new Error(`writeWeightsFile: ${name} is ${t.dtype}, expected float32`);
    lazy.set(name, { dtype: 'float32', shape: [...t.shape], load: () => hostTensorFromTf(t) });
  }
  await writeSafetensors(file, lazy, metadata);
}
