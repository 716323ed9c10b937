/**
 * Open a Hugging Face OWLv2 directory (e.g. a local copy of google/owlv2-large-patch14-ensemble):
 *
 *   config.json        Owlv2Config (text_config, vision_config, projection_dim; absent keys = HF defaults)
 *   model.safetensors  (or a sharded *.safetensors.index.json; else pytorch_model.bin or its .bin index, read by the
 *                      PyTorch checkpoint reader src/io/torch-reader.ts) weights under their HF names, loaded as they are
 *   tokenizer.json     the CLIP BPE tokenizer (+ tokenizer_config.json), through the repo's HF tokenizer wrapper
 *
 * Names and shapes are checked from the headers before any data is read (one error lists every missing,
 * unexpected and mis-shaped tensor); tensors are then read and assigned one at a time, half precision widened
 * to float32 by the reader. Safetensors are preferred when a directory has both. Nothing is downloaded.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { DataError, MgllavaError, WeightsError, fsError } from '../../errors.js';
import { openWeightsFile } from '../../io/pretrained.js';
import { HF_BIN_INDEX, PICKLE_EXT } from '../../io/torch-reader.js';
import { loadTokenizer, type TextTokenizer } from '../../data/tokenizer.js';
import { Rng } from '../../util/rng.js';
import { owlv2ConfigFromHf, type Owlv2Config } from './config.js';
import { Owlv2Detector } from './owlv2.js';

/** Checkpoint tensors that are buffers of older transformers versions, not parameters: skipped when present. */
const BUFFER_NAMES = /(^|\.)embeddings\.position_ids$/;

export interface LoadedOwlv2 {
  model: Owlv2Detector;
  tokenizer: TextTokenizer;
  config: Owlv2Config;
  /** The weights file (single safetensors or index). */
  weights: string;
}

export function readOwlv2Config(dir: string): Owlv2Config {
  const file = path.join(dir, 'config.json');
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code) throw fsError(e, file, 'reading the detector config');
    throw new MgllavaError(`${file}: not valid JSON (${(e as Error).message})`, 'config');
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new MgllavaError(`${file}: expected a JSON object`, 'config');
  return owlv2ConfigFromHf(json as Record<string, unknown>, file);
}

/**
 * The weights of a directory: model.safetensors, a safetensors index or the only *.safetensors; else
 * pytorch_model.bin.index.json, pytorch_model.bin or the only .bin/.pth/.pt file.
 */
export function findOwlv2Weights(dir: string): string {
  const files = readdirSync(dir).filter((f) => statSync(path.join(dir, f)).isFile());
  for (const name of ['model.safetensors.index.json', 'model.safetensors']) if (files.includes(name)) return path.join(dir, name);
  const indexes = files.filter((f) => f.endsWith('.safetensors.index.json'));
  const singles = files.filter((f) => f.endsWith('.safetensors'));
  if (indexes.length === 1) return path.join(dir, indexes[0]!);
  if (indexes.length === 0 && singles.length === 1) return path.join(dir, singles[0]!);
  if (indexes.length + singles.length > 1) throw new WeightsError(`${dir}: several safetensors files or indexes (${[...indexes, ...singles].join(', ')}); keep one`);
  for (const name of [HF_BIN_INDEX, 'pytorch_model.bin']) if (files.includes(name)) return path.join(dir, name);
  const pickles = files.filter((f) => PICKLE_EXT.test(f));
  if (pickles.length === 1) return path.join(dir, pickles[0]!);
  if (pickles.length > 1) throw new WeightsError(`${dir}: several PyTorch checkpoint files (${pickles.join(', ')}) and no ${HF_BIN_INDEX}; keep one`);
  throw new WeightsError(`${dir}: no OWLv2 weights (expected model.safetensors, *.safetensors.index.json or pytorch_model.bin)`);
}

/** Assign every weight of `model` from the checkpoint at `file` (safetensors or PyTorch), strictly by HF name. */
export async function loadOwlv2Weights(model: Owlv2Detector, file: string): Promise<void> {
  const reader = await openWeightsFile(file);
  try {
    const target = model.weightMap();
    const names = reader.keys().filter((n) => !BUFFER_NAMES.test(n));
    const missing = [...target.keys()].filter((n) => !reader.has(n));
    const unexpected = names.filter((n) => !target.has(n));
    const mismatched = names
      .filter((n) => target.has(n))
      .flatMap((n) => {
        const want = target.get(n)!.shape;
        const got = reader.info(n).shape;
        return got.length === want.length && got.every((d, i) => d === want[i]) ? [] : [`${n}: file [${got}], config.json implies [${want}]`];
      });
    const problems = [
      ...(missing.length ? [`missing ${missing.length}: ${missing.slice(0, 8).join(', ')}${missing.length > 8 ? ', ...' : ''}`] : []),
      ...(unexpected.length ? [`unexpected ${unexpected.length}: ${unexpected.slice(0, 8).join(', ')}${unexpected.length > 8 ? ', ...' : ''}`] : []),
      ...(mismatched.length ? [`shape mismatch: ${mismatched.slice(0, 4).join('; ')}`] : []),
    ];
    if (problems.length) throw new WeightsError(`${file}: not the OWLv2 checkpoint config.json describes: ${problems.join('; ')}`);
    for (const n of names) {
      const t = await reader.read(n);
      tf.tidy(() => target.get(n)!.assign(tf.tensor(t.data, t.shape, 'float32')));
    }
  } finally {
    await reader.close();
  }
}

/** config.json + weights + tokenizer.json of an HF OWLv2 directory. */
export async function loadOwlv2(dir: string): Promise<LoadedOwlv2> {
  if (!existsSync(dir)) throw new DataError(`--detector ${dir}: no such directory`);
  if (!statSync(dir).isDirectory()) throw new DataError(`--detector ${dir}: not a directory (name the folder holding config.json, model.safetensors, tokenizer.json)`);
  const config = readOwlv2Config(dir);
  const weights = findOwlv2Weights(dir);
  if (!existsSync(path.join(dir, 'tokenizer.json'))) {
    throw new DataError(`${dir}: no tokenizer.json (the CLIP tokenizer of the checkpoint)`, { hint: 'copy tokenizer.json (and tokenizer_config.json) from the model repository' });
  }
  let tokenizer: TextTokenizer;
  try {
    tokenizer = await loadTokenizer({ type: 'hf', path: dir });
  } catch (e) {
    if (e instanceof MgllavaError) throw e;
    throw new DataError(`${path.join(dir, 'tokenizer.json')}: ${(e as Error).message}`);
  }
  const model = new Owlv2Detector(config, { rng: new Rng(0), skipInit: true });
  try {
    await loadOwlv2Weights(model, weights);
  } catch (e) {
    model.dispose();
    throw e;
  }
  return { model, tokenizer, config, weights };
}
