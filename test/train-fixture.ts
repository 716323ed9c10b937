/**
 * A tiny training setup in a temp dir for the trainer tests: 24 synthetic images (mgllava data synth),
 * and pretrain/finetune YAML configs of a very small MG-LLaVA (2x2 ViT grid, 64 px aux, 1-layer LLM).
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { synthDataset } from '../src/data/synth.js';
import type { TrainOptions } from '../src/train/trainer.js';

export interface TinyTrainSetup {
  root: string;
  data: string;
  /** Default output_dir of the configs. */
  runs: string;
  pretrainYaml: string;
  finetuneYaml: string;
  cleanup(): Promise<void>;
}

export async function makeTinyTrainSetup(images = 24): Promise<TinyTrainSetup> {
  const root = await mkdtemp(path.join(tmpdir(), 'mgllava-train-'));
  const data = path.join(root, 'data');
  await synthDataset({ out: data, train: images, eval: 0, seed: 3, size: 64 });
  const runs = path.join(root, 'runs');
  const base = path.join(root, 'base.yaml');
  await writeFile(
    base,
    `seed: 7
output_dir: ${runs}
model:
  vision: { image_size: 28, patch_size: 14, hidden_size: 16, intermediate_size: 32, num_layers: 2, num_heads: 2 }
  vision_aux: { dims: [4, 8, 8, 8], depths: [1, 1, 1, 1], image_size: 64 }
  fusion: { variant: 0 }
  objects: { output_size: 7 }
  projector_depth: 2
  llm: { vocab_size: 64, hidden_size: 16, intermediate_size: 24, num_layers: 1, num_heads: 2, rms_norm_eps: 1.0e-6 }
data:
  records: ${data}/pretrain.json
  boxes: ${data}/boxes.json
  images: ${data}/images
  tokenizer: { type: hf, path: ${data}/tokenizer.json }
  max_length: 128
  prefetch: 1
  image_workers: 0
train:
  batch_size: 4
  lr: 1.0e-3
  warmup_ratio: 0.2
  max_steps: 8
  save_steps: 3
  save_total_limit: 2
  log_steps: 1
`,
  );
  const pretrainYaml = path.join(root, 'pretrain.yaml');
  await writeFile(pretrainYaml, `extends: base.yaml\nname: tiny-pretrain\nstage: pretrain\n`);
  const finetuneYaml = path.join(root, 'finetune.yaml');
  await writeFile(
    finetuneYaml,
    `extends: base.yaml\nname: tiny-finetune\nstage: finetune\ninit: { from: ${runs}/tiny-pretrain }\ndata: { records: ${data}/finetune.json }\ntrain: { max_steps: 4, lr: 1.0e-4, sampler: length_grouped }\n`,
  );
  return { root, data, runs, pretrainYaml, finetuneYaml, cleanup: () => rm(root, { recursive: true, force: true }) };
}

/** A stream that collects what is written to it (for the trainer's out/err). */
export function collector(): { stream: NodeJS.WriteStream; text: () => string } {
  const s = new PassThrough();
  const chunks: string[] = [];
  s.on('data', (c: Buffer) => chunks.push(c.toString()));
  return { stream: s as unknown as NodeJS.WriteStream, text: () => chunks.join('') };
}

/** Pretrain options on `setup` with the console captured: `log()` is what went to out, `warnings()` to err. */
export function capturedPretrain(setup: TinyTrainSetup, extra: Partial<TrainOptions> & { sets?: string[] }): TrainOptions & { log: () => string; warnings: () => string } {
  const out = collector();
  const err = collector();
  return { configFile: setup.pretrainYaml, stage: 'pretrain', progress: 'lines', out: out.stream, err: err.stream, log: out.text, warnings: err.text, ...extra };
}
