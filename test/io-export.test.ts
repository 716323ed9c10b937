import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { modelConfigFrom } from '../src/config/build-model.js';
import { configHash, dumpConfig, validateConfig } from '../src/config/load.js';
import { modelSchema, type ExperimentConfig } from '../src/config/schema.js';
import { buildVocab, tokenizerConfigJson, tokenizerJson } from '../src/data/synth/vocab.js';
import { ExportError, exportRun, MM_MODULES_FILE, XTUNER_PTH_FILE } from '../src/io/export.js';
import { loadPretrained, readPretrainedConfigs } from '../src/io/pretrained.js';
import { readSafetensors, SafetensorsReader, type HostTensor } from '../src/io/safetensors.js';
import { toHfConfig } from '../src/model/llm/config.js';
import { disposeFrozen, MGLLaVA, type Stage } from '../src/model/mgllava.js';
import { writeTorchPth } from '../src/io/torch-pth.js';
import { AdamW } from '../src/train/adamw.js';
import { saveCheckpoint, writeTextFile } from '../src/run/checkpoint.js';
import { BASE_FILE, RunDirError, runDirOf, type TrainState } from '../src/run/layout.js';
import { baseWeightNames, loadRunModel } from '../src/model/factory.js';
import { loadWeightsFile, writeWeightsFile } from '../src/io/weights-io.js';
import { Rng } from '../src/util/rng.js';
import { runCli } from './cli-harness.js';
import { goldenConfig, goldenParams, type Weights } from './io-fixtures.js';

let root: string;
let tokDir: string;
beforeAll(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'mgllava-export-'));
  tokDir = path.join(root, 'tokenizer');
  await mkdir(tokDir);
  await writeFile(path.join(tokDir, 'tokenizer.json'), JSON.stringify(tokenizerJson(buildVocab(['a red circle left of a blue square']))));
  await writeFile(path.join(tokDir, 'tokenizer_config.json'), JSON.stringify(tokenizerConfigJson(64)));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const TINY_VISION = {
  vision: { image_size: 28, patch_size: 14, hidden_size: 16, intermediate_size: 32, num_layers: 2, num_heads: 2 },
  vision_aux: { dims: [4, 8, 16, 32], depths: [1, 1, 1, 1], image_size: 64 },
  fusion: { variant: 0 },
  objects: { output_size: 7 },
};

function experiment(name: string, stage: Stage, llm: Record<string, unknown>): ExperimentConfig {
  return validateConfig(
    {
      name,
      stage,
      seed: 0,
      output_dir: root,
      model: { ...TINY_VISION, llm },
      data: { records: 'unused.json', boxes: 'unused-boxes.json', tokenizer: { type: 'hf', path: tokDir } },
      train: { save_total_limit: 3 },
    },
    `test ${name}`,
  );
}

/** Random values in every trainable weight (zero-init fusion would hide a weight that failed to load). */
function perturb(vars: Map<string, tf.Variable>, rng: Rng): void {
  for (const v of vars.values()) {
    const data = Float32Array.from({ length: v.size }, () => rng.normal() * 0.05);
    tf.tidy(() => v.assign(tf.tensor(data, v.shape)));
  }
}

/** A run dir as the trainer writes it: config.yaml, base.safetensors, one complete step checkpoint. */
async function writeRun(config: ExperimentConfig, model: MGLLaVA, step: number): Promise<string> {
  const runDir = runDirOf(config);
  await mkdir(runDir, { recursive: true });
  await writeTextFile(path.join(runDir, 'config.yaml'), dumpConfig(config));
  const all = model.weightMap();
  await writeWeightsFile(path.join(runDir, BASE_FILE), new Map(baseWeightNames(model, config).map((n) => [n, all.get(n)!])));
  const trainable = model.trainableWeights(config.stage as Stage);
  const optimizer = new AdamW(trainable);
  const state: TrainState = {
    format: 1,
    step,
    totalSteps: 2 * step,
    stage: config.stage as Stage,
    configHash: configHash(config),
    seeds: { init: 0, data: 0 },
    loader: { epoch: 0, position: step, size: 4 * step },
    optimizerStep: step,
    badStreak: 0,
    metricsLines: 0,
    elapsedSeconds: 1,
    initFrom: null,
    time: new Date(0).toISOString(),
  };
  await saveCheckpoint({ runDir, state, trainable, optimizer, keep: 3 });
  optimizer.dispose();
  return runDir;
}

/** Logits of one full forward pass (B=2, image + object tokens spliced in). */
function logitsOf(model: MGLLaVA): Float32Array {
  const rng = new Rng(11);
  const img = (s: number) => tf.tensor4d(Float32Array.from({ length: 2 * s * s * 3 }, () => rng.normal()), [2, s, s, 3]);
  const pixels = img(28);
  const aux = img(64);
  const boxes = [Float32Array.from([2, 3, 40, 50, 10, 10, 60, 30]), Float32Array.from([0, 0, 63, 63])];
  const frozen = model.encodeFrozen(pixels, aux, boxes);
  const ids = { data: Int32Array.from([1, 5, -200, 6, 7, 2, 1, 9, 10, -200, 11, 2]), shape: [2, 6] as [number, number] };
  const logits = tf.tidy(() => {
    const s = model.splice({ inputIds: ids, attentionMask: { data: new Int32Array(12).fill(1), shape: [2, 6] } }, model.visualTokens(frozen));
    return model.llm.forward({ inputsEmbeds: s.inputsEmbeds, attentionMask: s.attentionMask, positionIds: s.positionIds }).logits;
  });
  const out = logits.dataSync() as Float32Array;
  logits.dispose();
  disposeFrozen(frozen);
  pixels.dispose();
  aux.dispose();
  return out;
}

async function expectSameWeights(a: MGLLaVA, b: MGLLaVA): Promise<void> {
  const wb = b.weightMap();
  expect([...a.weightMap().keys()].sort()).toEqual([...wb.keys()].sort());
  for (const [name, v] of a.weightMap()) expect(Array.from(await wb.get(name)!.data()), name).toEqual(Array.from(await v.data()));
}

const hasTorch = spawnSync('/usr/bin/python3', ['-c', 'import torch'], { stdio: 'ignore' }).status === 0;

/** torch.load a .pth (weights_only when torch has it) and return its meta and state dict as plain JSON. */
function torchLoad(file: string): { type: string; meta: Record<string, unknown>; sd: Record<string, { dtype: string; shape: number[]; values: number[] }> } {
  const script = `
import json, sys, inspect, torch
kw = {'weights_only': True} if 'weights_only' in inspect.signature(torch.load).parameters else {}
d = torch.load(sys.argv[1], map_location='cpu', **kw)
sd = d['state_dict']
print(json.dumps({'type': type(sd).__name__, 'meta': d['meta'],
  'sd': {k: {'dtype': str(v.dtype), 'shape': list(v.shape), 'values': v.flatten().tolist()} for k, v in sd.items()}}))
`;
  const r = spawnSync('/usr/bin/python3', ['-c', script, file], { encoding: 'utf8', maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`torch.load failed: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

describe('torch .pth writer', () => {
  it.skipIf(!hasTorch)('int32, scalar, empty and zip64 variants load in torch with intact CRCs', async () => {
    const sd = new Map<string, HostTensor>([
      ['w', { dtype: 'float32', shape: [2, 3], data: Float32Array.from([1, -2, 3.5, 1e-30, -0, 6]) }],
      ['step', { dtype: 'int32', shape: [], data: Int32Array.from([-7]) }],
      ['empty', { dtype: 'float32', shape: [0, 4], data: new Float32Array(0) }],
      ['ünïcode.bias', { dtype: 'int32', shape: [3], data: Int32Array.from([2 ** 31 - 1, -(2 ** 31), 0]) }],
    ]);
    for (const forceZip64 of [false, true]) {
      const file = path.join(root, `unit-${forceZip64}.pth`);
      await writeTorchPth(file, sd, { meta: { iter: 5, big: 5_000_000_000, neg: -300, name: 'x', ok: true, none: null }, forceZip64 });
      const crc = spawnSync('/usr/bin/python3', ['-c', 'import sys, zipfile; print(zipfile.ZipFile(sys.argv[1]).testzip())', file], { encoding: 'utf8' });
      expect(crc.stdout.trim()).toBe('None');
      const loaded = torchLoad(file);
      expect(loaded.meta).toEqual({ iter: 5, big: 5_000_000_000, neg: -300, name: 'x', ok: true, none: null });
      expect(Object.keys(loaded.sd)).toEqual([...sd.keys()]);
      for (const [name, t] of sd) {
        expect(loaded.sd[name]!.dtype).toBe(t.dtype === 'float32' ? 'torch.float32' : 'torch.int32');
        expect(loaded.sd[name]!.shape).toEqual(t.shape);
        expect(loaded.sd[name]!.values).toEqual(Array.from(t.data));
      }
    }
  });
});

describe('export a finetune run', () => {
  let config: ExperimentConfig;
  let model: MGLLaVA;
  let runDir: string;
  let reference: Float32Array;

  beforeAll(async () => {
    config = experiment('ft', 'finetune', { vocab_size: 48, hidden_size: 32, intermediate_size: 64, num_layers: 2, num_heads: 4, num_kv_heads: 2 });
    model = new MGLLaVA(modelConfigFrom(config.model), { rng: new Rng(5) });
    perturb(model.trainableWeights('finetune'), new Rng(6));
    runDir = await writeRun(config, model, 7);
    reference = logitsOf(model);
  });
  afterAll(() => model?.dispose());

  it('the run dir recovers the model (sanity of the fixture)', async () => {
    const run = await loadRunModel(runDir);
    expect(Array.from(logitsOf(run.model))).toEqual(Array.from(reference));
    run.model.dispose();
  });

  it('hf: export -> import as llm.pretrained + mm_modules -> identical weights and logits', async () => {
    const tensorsBefore = tf.memory().numTensors;
    const out = path.join(root, 'ft-hf');
    const result = await exportRun(runDir, { format: 'hf', out, maxShardBytes: 20_000 });
    expect(result.step).toBe(7);
    // Sharded: every shard under the cap unless it is a single tensor.
    const index = JSON.parse(await readFile(path.join(out, 'model.safetensors.index.json'), 'utf8')) as { weight_map: Record<string, string> };
    const shards = [...new Set(Object.values(index.weight_map))];
    expect(shards.length).toBeGreaterThan(2);
    for (const s of shards) {
      const r = await SafetensorsReader.open(path.join(out, s));
      const bytes = r.keys().reduce((a, k) => a + r.info(k).byteLength, 0);
      if (r.keys().length > 1) expect(bytes, s).toBeLessThanOrEqual(20_000);
      await r.close();
    }
    expect(Object.keys(index.weight_map).sort()).toEqual([...model.llm.weightMap()].map(([n]) => n).sort());
    // + the generation ids of the synthetic tokenizer (<s> 1, </s> 2, <pad> 3) and 1472 text + 4 image positions.
    const generation = { bos_token_id: 1, eos_token_id: 2, pad_token_id: 3 };
    expect(JSON.parse(await readFile(path.join(out, 'config.json'), 'utf8'))).toEqual({ ...toHfConfig(model.config.llm), ...generation, max_position_embeddings: 1476, torch_dtype: 'float32' });
    expect(JSON.parse(await readFile(path.join(out, 'generation_config.json'), 'utf8'))).toEqual(generation);
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) expect(await readFile(path.join(out, f), 'utf8')).toBe(await readFile(path.join(tokDir, f), 'utf8'));
    const mm = await readSafetensors(path.join(out, MM_MODULES_FILE));
    expect([...mm.keys()].sort()).toEqual([...model.trainableWeights('pretrain').keys()].sort());
    const description = JSON.parse(await readFile(path.join(out, 'mgllava.json'), 'utf8'));
    expect(description.model.llm.pretrained).toBe('.');
    expect(await readFile(path.join(out, 'README.md'), 'utf8')).toContain('LlamaForCausalLM');

    // Import: the LLM from the exported HF dir, the modules from mm_modules, the (random) encoders from base.
    const section = modelSchema.parse({ ...config.model, llm: { pretrained: out } });
    const imported = new MGLLaVA(modelConfigFrom(section, readPretrainedConfigs(section)), { rng: new Rng(99), skipInit: true });
    await loadPretrained(imported, section);
    const target = imported.weightMap();
    await loadWeightsFile(target, path.join(out, MM_MODULES_FILE), { allowMissing: true });
    await loadWeightsFile(target, path.join(runDir, BASE_FILE), { allowMissing: true });
    await expectSameWeights(model, imported);
    expect(Array.from(logitsOf(imported))).toEqual(Array.from(reference));
    imported.dispose();
    expect(tf.memory().numTensors).toBe(tensorsBefore);
  });

  it('a finetune run on a pretrained LLM dir reloads its trained llm.* weights, not the pretrained ones', async () => {
    const pretrainedDir = path.join(root, 'ft-hf'); // the HF export of the previous test
    const cfg = experiment('ft-on-pretrained', 'finetune', { pretrained: pretrainedDir });
    const trained = new MGLLaVA(modelConfigFrom(cfg.model, readPretrainedConfigs(cfg.model)), { rng: new Rng(12) });
    await loadPretrained(trained, cfg.model);
    perturb(trained.trainableWeights('finetune'), new Rng(13)); // the LLM moves away from the pretrained dir
    const dir = await writeRun(cfg, trained, 2);
    const run = await loadRunModel(dir);
    await expectSameWeights(trained, run.model);
    run.model.dispose();
    trained.dispose();
  });

  it('xtuner: the reference checkpoint keys, as safetensors and as a torch .pth', async () => {
    const out = path.join(root, 'ft-xtuner');
    const result = await exportRun(runDir, { format: 'xtuner', out });
    expect(result.skipped).toEqual([]);
    expect(result.files).toEqual(['model.safetensors', XTUNER_PTH_FILE, 'mgllava.json']);
    const sd = await readSafetensors(path.join(out, 'model.safetensors'));
    const trainable = model.trainableWeights('finetune');
    expect([...sd.keys()].sort()).toEqual([...trainable.keys()].sort());
    expect([...sd.keys()].some((k) => k.startsWith('llm.'))).toBe(true);
    for (const [name, v] of trainable) expect(Array.from(sd.get(name)!.data), name).toEqual(Array.from(await v.data()));
    if (!hasTorch) return; // python3 + torch not installed: the .pth is checked where they are
    const loaded = torchLoad(path.join(out, XTUNER_PTH_FILE));
    expect(loaded.type).toBe('OrderedDict');
    expect(loaded.meta).toMatchObject({ source: 'mgllava', stage: 'finetune', iter: 7, seed: 0 });
    expect(Object.keys(loaded.sd).sort()).toEqual([...sd.keys()].sort());
    for (const [name, t] of sd) {
      expect(loaded.sd[name]!.dtype).toBe('torch.float32');
      expect(loaded.sd[name]!.shape).toEqual(t.shape);
      expect(loaded.sd[name]!.values, name).toEqual(Array.from(t.data));
    }
  });

  it('refuses a non-empty --out and a run without checkpoints', async () => {
    const out = path.join(root, 'ft-xtuner');
    await expect(exportRun(runDir, { format: 'xtuner', out })).rejects.toThrow(ExportError);
    await expect(exportRun(runDir, { format: 'xtuner', out, overwrite: true, pth: false })).resolves.toMatchObject({ files: ['model.safetensors', 'mgllava.json'] });
    const empty = path.join(root, 'no-steps');
    await mkdir(empty);
    await writeTextFile(path.join(empty, 'config.yaml'), dumpConfig(config));
    await expect(exportRun(empty, { format: 'hf', out: path.join(root, 'x') })).rejects.toThrow(RunDirError);
    await expect(exportRun(runDir, { format: 'hf', out: path.join(root, 'x'), step: 3 })).rejects.toThrow(/no complete checkpoint for step 3/);
  });

  it('mgllava export (CLI)', async () => {
    const out = path.join(root, 'ft-cli');
    const r = await runCli(['export', runDir, '--format', 'hf', '--out', out, '--max-shard-mb', '0.02']);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/exported .* step 7 \(finetune\) as hf/);
    expect(existsSync(path.join(out, 'model.safetensors.index.json'))).toBe(true);
  });
});

describe('export a pretrain run whose LLM is a pretrained Phi-3 directory', () => {
  it('hf re-fuses the LLM exactly as the source stored it; xtuner leaves the frozen LLM out', async () => {
    const params = await goldenParams('llama_a');
    const phi3Dir = path.join(root, 'phi3');
    await mkdir(phi3Dir);
    const fused: Weights = new Map();
    const cat = (names: string[]): HostTensor => {
      const parts = names.map((x) => params.get(x)!);
      const data = new Float32Array(parts.reduce((a, p) => a + p.data.length, 0));
      parts.reduce((off, p) => (data.set(p.data, off), off + p.data.length), 0);
      return { dtype: 'float32', shape: [parts.reduce((a, p) => a + p.shape[0]!, 0), parts[0]!.shape[1]!], data };
    };
    for (const [name, t] of params) {
      const m = /^(.*)\.(self_attn\.(q|k|v)_proj|mlp\.(gate|up)_proj)\.weight$/.exec(name);
      if (!m) fused.set(name, t);
      else if (m[3] === 'q') fused.set(`${m[1]}.self_attn.qkv_proj.weight`, cat(['q', 'k', 'v'].map((p) => `${m[1]}.self_attn.${p}_proj.weight`)));
      else if (m[4] === 'gate') fused.set(`${m[1]}.mlp.gate_up_proj.weight`, cat(['gate', 'up'].map((p) => `${m[1]}.mlp.${p}_proj.weight`)));
    }
    const { writeSafetensors } = await import('../src/io/safetensors.js');
    await writeSafetensors(path.join(phi3Dir, 'model.safetensors'), fused);
    const hfConfig = { model_type: 'phi3', ...(await goldenConfig('llama_a')) };
    await writeFile(path.join(phi3Dir, 'config.json'), JSON.stringify(hfConfig));

    const config = experiment('pt-phi3', 'pretrain', { pretrained: phi3Dir });
    const model = new MGLLaVA(modelConfigFrom(config.model, readPretrainedConfigs(config.model)), { rng: new Rng(8) });
    await loadPretrained(model, config.model);
    perturb(model.trainableWeights('pretrain'), new Rng(9));
    const runDir = await writeRun(config, model, 3);
    // The frozen pretrained LLM is neither in base.safetensors nor in the step.
    expect((await readSafetensors(path.join(runDir, BASE_FILE))).has('llm.model.norm.weight')).toBe(false);

    const out = path.join(root, 'pt-phi3-hf');
    await exportRun(runDir, { format: 'hf', out });
    const exported = await readSafetensors(path.join(out, 'model.safetensors'));
    expect([...exported.keys()].sort()).toEqual([...fused.keys()].sort());
    for (const [name, t] of fused) expect(Array.from(exported.get(name)!.data), name).toEqual(Array.from(t.data));
    expect(JSON.parse(await readFile(path.join(out, 'config.json'), 'utf8'))).toMatchObject({ model_type: 'phi3', architectures: ['Phi3ForCausalLM'] });
    expect((await readdir(out)).sort()).toEqual(['README.md', 'config.json', 'generation_config.json', 'mgllava.json', MM_MODULES_FILE, 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json'].sort());

    const xt = await exportRun(runDir, { format: 'xtuner', out: path.join(root, 'pt-phi3-xtuner'), pth: false });
    const sd = await readSafetensors(path.join(xt.out, 'model.safetensors'));
    expect([...sd.keys()].sort()).toEqual([...model.trainableWeights('pretrain').keys()].sort());
    expect([...sd.keys()].every((k) => !k.startsWith('llm.'))).toBe(true);
    model.dispose();
  });
});
