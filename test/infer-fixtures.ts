/**
 * Shared fixtures of the inference tests: a tiny random MG-LLaVA, a word tokenizer over its vocabulary, and
 * a tiny run directory over a small synthetic dataset.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { dumpConfig, validateConfig } from '../src/config/load.js';
import { modelConfigFrom } from '../src/config/build-model.js';
import type { ExperimentConfig } from '../src/config/schema.js';
import { synthDataset } from '../src/data/synth.js';
import { BASE_FILE, CONFIG_FILE, MODEL_FILE, STATE_FILE, stepDirName } from '../src/run/layout.js';
import { baseWeightNames } from '../src/model/factory.js';
import { writeWeightsFile } from '../src/io/weights-io.js';
import type { DecodeOptions, TextTokenizer } from '../src/data/tokenizer.js';
import { MGLLaVA, type MGLLaVAConfig } from '../src/model/mgllava.js';
import type { ImageInput } from '../src/infer/visual.js';
import { Rng } from '../src/util/rng.js';

export const VOCAB = 40;

/** Ids 0..2 are <unk>, <s>, </s>; id i >= 3 is the word `w<i>`. Unknown words encode to <unk>. */
export class WordTokenizer implements TextTokenizer {
  readonly name = 'test-words';
  readonly bosId = 1;
  readonly eosId: number | null;
  readonly eosToken: string | null;
  private readonly words: string[];

  constructor(readonly vocabSize = VOCAB, withEos = true) {
    this.words = ['<unk>', '<s>', '</s>', ...Array.from({ length: vocabSize - 3 }, (_, i) => `w${i + 3}`)];
    this.eosId = withEos ? 2 : null;
    this.eosToken = withEos ? '</s>' : null;
  }

  encode(text: string): number[] {
    return text.split(/\s+/).filter(Boolean).map((w) => Math.max(0, this.words.indexOf(w)));
  }

  decode(ids: readonly number[], o: DecodeOptions = {}): string {
    const skip = o.skipSpecialTokens ?? true;
    return ids.filter((id) => !skip || id > 2).map((id) => this.words[id]).join(' ');
  }

  tokenToId(token: string): number | undefined {
    const i = this.words.indexOf(token);
    return i >= 0 ? i : undefined;
  }
}

export function tinyConfig(kind: 'full' | 'lowres' = 'full'): MGLLaVAConfig {
  return {
    vision: { imageSize: 28, patchSize: 7, hiddenSize: 16, intermediateSize: 32, numLayers: 2, numHeads: 2, layerNormEps: 1e-5, numChannels: 3, selectLayer: -2, dropCls: true },
    visionAux: kind === 'lowres' ? null : { dims: [4, 8, 8, 8], depths: [1, 1, 1, 1], layerNormEps: 1e-6, imageSize: 128, inChannels: 3 },
    fusion: kind === 'lowres' ? null : { variant: 0, zeroInit: false },
    objects: kind === 'full' ? { outputSize: 7, samplingRatio: -1, projectorDepth: 2, multiLevelDim: null } : null,
    projectorDepth: 2,
    // A large init scale makes the random LM's logits peaky: greedy choices are well separated.
    llm: { vocabSize: VOCAB, hiddenSize: 16, intermediateSize: 24, numLayers: 2, numHeads: 2, numKvHeads: 1, headDim: 8, rmsNormEps: 1e-6, ropeTheta: 10000, tieWordEmbeddings: false, attentionBias: false, initializerRange: 0.5, weightFormat: 'llama' },
  };
}

export function tinyModel(seed = 1, kind: 'full' | 'lowres' = 'full'): MGLLaVA {
  return new MGLLaVA(tinyConfig(kind), { rng: new Rng(seed) });
}

/** A random preprocessed image for the tiny model, with a few boxes in aux pixels. */
export function randomImage(seed: number, kind: 'full' | 'lowres' = 'full'): ImageInput {
  const rng = new Rng(seed);
  const c = tinyConfig(kind);
  const aux = c.visionAux?.imageSize ?? c.vision.imageSize;
  const fill = (n: number) => Float32Array.from({ length: n }, () => rng.normal());
  const k = 1 + rng.int(3);
  const boxes = Array.from({ length: k }, () => {
    const x = rng.int(90);
    const y = rng.int(90);
    return [x, y, x + 8 + rng.int(30), y + 8 + rng.int(30)] as [number, number, number, number];
  });
  return { lowres: fill(c.vision.imageSize ** 2 * 3), aux: fill(aux * aux * 3), boxes: kind === 'full' ? boxes : null };
}

export interface TinyRun {
  /** The synthetic dataset folder (4 eval images x 3 questions). */
  data: string;
  runDir: string;
  config: ExperimentConfig;
  /** The model whose weights the run holds (step 5). The caller disposes it. */
  model: MGLLaVA;
}

/** A synthetic dataset and a run directory as the trainer writes it: config, base weights, step 5. */
export async function makeTinyRun(dir: string): Promise<TinyRun> {
  const data = path.join(dir, 'data');
  await synthDataset({ out: data, train: 1, eval: 4, size: 60, seed: 3 });
  const config = validateConfig(
    {
      name: 'tiny-eval',
      stage: 'finetune',
      seed: 5,
      output_dir: path.join(dir, 'checkpoints'),
      model: {
        vision: { image_size: 28, patch_size: 14, hidden_size: 16, intermediate_size: 32, num_layers: 2, num_heads: 2 },
        vision_aux: { dims: [4, 8, 8, 8], depths: [1, 1, 1, 1], image_size: 64 },
        fusion: { variant: 0, zero_init: false },
        objects: { output_size: 7 },
        llm: { vocab_size: 64, hidden_size: 16, intermediate_size: 24, num_layers: 1, num_heads: 2 },
      },
      data: {
        records: path.join(data, 'finetune.json'),
        boxes: path.join(data, 'boxes.json'),
        images: path.join(data, 'images'),
        template: 'vicuna',
        tokenizer: { type: 'hf', path: path.join(data, 'tokenizer.json') },
        max_length: 64,
      },
    },
    'test config',
  );
  const model = new MGLLaVA(modelConfigFrom(config.model), { rng: new Rng(config.seed) });
  const runDir = path.join(config.output_dir, config.name);
  const stepDir = path.join(runDir, stepDirName(5));
  await mkdir(stepDir, { recursive: true });
  await writeFile(path.join(runDir, CONFIG_FILE), dumpConfig(config));
  const all = model.weightMap();
  await writeWeightsFile(path.join(runDir, BASE_FILE), new Map(baseWeightNames(model, config).map((n) => [n, all.get(n)!])));
  await writeWeightsFile(path.join(stepDir, MODEL_FILE), model.trainableWeights('finetune'));
  await writeFile(path.join(stepDir, STATE_FILE), JSON.stringify({ format: 1, step: 5 }));
  return { data, runDir, config, model };
}
