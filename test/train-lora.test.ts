// LoRA finetunes through the stage runner: what trains and what a checkpoint holds, kill-and-resume,
// activation checkpointing (same weights), the measured peak in metrics.jsonl, PEFT export / lora.from
// round trip, merged exports (W + scaling * B A), and the dry run of the full-size LoRA recipe from
// directories holding only config.json.
import { existsSync } from 'node:fs';
import { cp, mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { collector, makeTinyTrainSetup, type TinyTrainSetup } from './train-fixture.js';
import { train } from '../src/train/trainer.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { exportRun } from '../src/io/export.js';
import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, peftKey } from '../src/io/peft.js';
import { buildModel, loadRunModel } from '../src/model/factory.js';
import { loadConfig } from '../src/config/load.js';
import { LlamaForCausalLM } from '../src/model/llm/llama.js';

let setup: TinyTrainSetup;
const LORA = ['model.llm.lora.r=4', 'model.llm.lora.alpha=8', 'model.llm.lora.dropout=0.1'];

/** A finetune run with LoRA (a run dir of its own under `name`). */
async function finetune(name: string, sets: string[] = [], o: { maxSteps?: number; resume?: string; onStep?: (s: { step: number; numTensors: number }) => void } = {}) {
  const out = collector();
  const r = await train({
    configFile: setup.finetuneYaml,
    stage: 'finetune',
    sets: [`name=${name}`, ...LORA, 'train.save_steps=2', 'train.log_steps=1', ...sets],
    maxSteps: o.maxSteps ?? null,
    resume: o.resume ?? null,
    progress: 'lines',
    out: out.stream,
    err: out.stream,
    onStep: o.onStep,
  });
  return { r, text: out.text() };
}

const lastStep = async (run: string) => (await readdir(run)).filter((d) => d.startsWith('step-')).sort().pop()!;

beforeAll(async () => {
  setup = await makeTinyTrainSetup();
  await train({ configFile: setup.pretrainYaml, stage: 'pretrain', sets: ['train.max_steps=2'], progress: 'off', out: collector().stream });
}, 300_000);
afterAll(async () => setup?.cleanup());

describe('LoRA finetune (stage runner)', () => {
  it('trains adapters + projectors + fusion only; checkpoints hold them, base.safetensors the frozen LLM; metrics log the peak memory', async () => {
    const counts: number[] = [];
    const { r, text } = await finetune('lora-a', [], { onStep: (s) => counts.push(s.numTensors) });
    expect(r.step).toBe(4);
    expect(new Set(counts).size).toBe(1); // no leak across steps
    const run = path.join(setup.runs, 'lora-a');
    const model = await readSafetensors(path.join(run, await lastStep(run), 'model.safetensors'));
    const names = [...model.keys()];
    expect(names.filter((n) => n.startsWith('llm.')).every((n) => LlamaForCausalLM.isLoraWeight(n))).toBe(true);
    expect(names.filter((n) => LlamaForCausalLM.isLoraWeight(n)).length).toBe(14); // 1 layer x 7 modules x (A, B)
    expect(names.some((n) => n.startsWith('projector.'))).toBe(true);
    expect(names.some((n) => n.startsWith('fuse_module.'))).toBe(true);
    const optimizer = await readSafetensors(path.join(run, await lastStep(run), 'optimizer.safetensors'));
    expect([...optimizer.keys()].some((n) => n.startsWith('llm.') && !LlamaForCausalLM.isLoraWeight(n.replace(/\.exp_avg(_sq)?$/, '')))).toBe(false);
    const base = await readSafetensors(path.join(run, 'base.safetensors'));
    expect(base.has('llm.model.layers.0.self_attn.q_proj.weight')).toBe(true);
    expect([...base.keys()].some((n) => LlamaForCausalLM.isLoraWeight(n))).toBe(false);
    // the B matrices moved away from zero: the adapters learned
    expect(Math.max(...(model.get('llm.model.layers.0.mlp.down_proj.lora_B.weight')!.data as Float32Array).map(Math.abs))).toBeGreaterThan(0);
    const lines = (await readFile(path.join(run, 'metrics.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l));
    const peaks = lines.filter((l) => 'peak_memory_bytes' in l).map((l) => l.peak_memory_bytes as number);
    expect(peaks.length).toBeGreaterThan(0);
    expect(peaks[0]!).toBeGreaterThan(0);
    expect(text).toMatch(/peak memory \d+\.\d MiB \((wasm heap|tfjs tensors)\)/);
  });

  it('killed after 2 steps and resumed (--resume auto) = 4 uninterrupted steps; checkpointing gives the same weights (1e-6)', async () => {
    const full = await finetune('lora-full');
    await finetune('lora-resumed', [], { maxSteps: 2 });
    const resumed = await finetune('lora-resumed', [], { resume: 'auto' });
    expect(resumed.r.losses.map((l) => l.loss)).toEqual(full.r.losses.slice(2).map((l) => l.loss));
    const ck = await finetune('lora-ck', ['train.activation_checkpointing=true']);
    const weights = async (name: string) => readSafetensors(path.join(setup.runs, name, await lastStep(path.join(setup.runs, name)), 'model.safetensors'));
    const [a, b, c] = await Promise.all([weights('lora-full'), weights('lora-resumed'), weights('lora-ck')]);
    for (const [n, t] of a) {
      const d = (x: typeof t) => Math.max(...Array.from(t.data, (v, i) => Math.abs(v - x.data[i]!)));
      expect(d(b.get(n)!), `resumed ${n}`).toBeLessThanOrEqual(1e-6);
      expect(d(c.get(n)!), `checkpointed ${n}`).toBeLessThanOrEqual(1e-6);
    }
  });

  it('PEFT export: adapter_config.json and keys as PEFT writes them; lora.from loads them back exactly', async () => {
    const run = path.join(setup.runs, 'lora-a');
    const out = path.join(setup.root, 'peft');
    const res = await exportRun(run, { format: 'peft', out });
    expect(res.files).toEqual(expect.arrayContaining([ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, 'mm_modules.safetensors']));
    const cfg = JSON.parse(await readFile(path.join(out, ADAPTER_CONFIG_FILE), 'utf8'));
    expect(cfg).toMatchObject({
      peft_type: 'LORA',
      task_type: 'CAUSAL_LM',
      r: 4,
      lora_alpha: 8,
      lora_dropout: 0.1,
      use_rslora: false,
      base_model_name_or_path: null,
      target_modules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
    });
    const adapter = await readSafetensors(path.join(out, ADAPTER_WEIGHTS_FILE));
    expect([...adapter.keys()]).toContain('base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight');
    expect([...adapter.keys()].every((k) => /^base_model\.model\.model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\.lora_[AB]\.weight$/.test(k))).toBe(true);
    const trained = await readSafetensors(path.join(run, await lastStep(run), 'model.safetensors'));
    for (const [n, t] of trained) if (LlamaForCausalLM.isLoraWeight(n)) expect(Array.from(adapter.get(peftKey(n))!.data)).toEqual(Array.from(t.data));
    const mm = await readSafetensors(path.join(out, 'mm_modules.safetensors'));
    expect([...mm.keys()].every((k) => /^(fuse_module|projector|bbox_projector)\./.test(k))).toBe(true);

    // A model built from a config with lora.from carries exactly the exported adapters; a clashing r is refused.
    const { config } = loadConfig(setup.finetuneYaml, ['name=lora-from', ...LORA, `model.llm.lora.from=${out}`]);
    const fresh = await buildModel(config);
    try {
      const w = fresh.weightMap();
      for (const [n, t] of trained) if (LlamaForCausalLM.isLoraWeight(n)) expect(Array.from(w.get(n)!.dataSync()), n).toEqual(Array.from(t.data));
    } finally {
      fresh.dispose();
    }
    const clash = loadConfig(setup.finetuneYaml, ['name=lora-from', ...LORA, 'model.llm.lora.r=8', `model.llm.lora.from=${out}`]).config;
    await expect(buildModel(clash)).rejects.toThrow(/disagrees with the adapter.*r 8 \(adapter: 4\)/);
    await finetune('lora-from', [`model.llm.lora.from=${out}`], { maxSteps: 1 }); // trains from it
  });

  it('merged exports (xtuner, hf) hold W + scaling * B A; without --merge a LoRA run is refused', async () => {
    const run = path.join(setup.runs, 'lora-a');
    await expect(exportRun(run, { format: 'xtuner', out: path.join(setup.root, 'x0') })).rejects.toThrow(/--merge/);
    const out = path.join(setup.root, 'xtuner-merged');
    await exportRun(run, { format: 'xtuner', out, merge: true, pth: false });
    const merged = await readSafetensors(path.join(out, 'model.safetensors'));
    expect([...merged.keys()].some((n) => LlamaForCausalLM.isLoraWeight(n))).toBe(false);
    const loaded = await loadRunModel(run);
    try {
      const expected = loaded.model.llm.mergedWeights('llm.');
      expect(expected.size).toBe(7);
      for (const [n, w] of expected) {
        const got = merged.get(n)!;
        const want = w.dataSync();
        expect(Math.max(...Array.from(got.data, (v, i) => Math.abs(v - want[i]!))), n).toBeLessThan(1e-6);
      }
      tf.dispose([...expected.values()]);
      // every LLM weight is there (a full checkpoint), the projectors too
      const llm = [...loaded.model.llm.namedWeights('llm.')].filter(([n]) => !LlamaForCausalLM.isLoraWeight(n)).map(([n]) => n);
      expect(llm.every((n) => merged.has(n))).toBe(true);
      expect(merged.has('projector.model.0.weight')).toBe(true);
    } finally {
      loaded.model.dispose();
    }
    const hf = path.join(setup.root, 'hf-merged');
    await exportRun(run, { format: 'hf', out: hf, merge: true });
    const shards = (await readdir(hf)).filter((f) => f.startsWith('model') && f.endsWith('.safetensors'));
    const hfWeights = new Map<string, unknown>();
    for (const f of shards) for (const [k, v] of await readSafetensors(path.join(hf, f))) hfWeights.set(k, v);
    expect(hfWeights.has('model.layers.0.mlp.down_proj.weight')).toBe(true);
    expect([...hfWeights.keys()].some((n) => LlamaForCausalLM.isLoraWeight(n))).toBe(false);
    expect((hfWeights.get('model.layers.0.mlp.down_proj.weight') as { data: Float32Array }).data).toEqual(merged.get('llm.model.layers.0.mlp.down_proj.weight')!.data);
  });

  it('modules_to_save [lm_head]: the head trains with the adapters, is saved with them (PEFT key, adapter_config) and loads back', async () => {
    const head = 'llm.lm_head.weight';
    await finetune('lora-head', ['model.llm.lora.modules_to_save=[lm_head]'], { maxSteps: 2 });
    const run = path.join(setup.runs, 'lora-head');
    const model = await readSafetensors(path.join(run, await lastStep(run), 'model.safetensors'));
    const base = await readSafetensors(path.join(run, 'base.safetensors'));
    expect(model.has(head)).toBe(true);
    expect(base.has(head)).toBe(false);
    expect(base.has('llm.model.embed_tokens.weight')).toBe(true); // not saved: stays frozen in base
    const optimizer = await readSafetensors(path.join(run, await lastStep(run), 'optimizer.safetensors'));
    expect(optimizer.has(`${head}.exp_avg`)).toBe(true);
    // it moved away from the pretrain run's head
    const { config: pre } = loadConfig(setup.finetuneYaml, []);
    const start = await buildModel(pre);
    try {
      const h0 = start.weightMap().get(head)!.dataSync();
      expect(Math.max(...Array.from(model.get(head)!.data, (v, i) => Math.abs(v - h0[i]!)))).toBeGreaterThan(0);
    } finally {
      start.dispose();
    }
    const out = path.join(setup.root, 'peft-head');
    await exportRun(run, { format: 'peft', out });
    const cfg = JSON.parse(await readFile(path.join(out, ADAPTER_CONFIG_FILE), 'utf8'));
    expect(cfg.modules_to_save).toEqual(['lm_head']);
    const adapter = await readSafetensors(path.join(out, ADAPTER_WEIGHTS_FILE));
    expect(Array.from(adapter.get('base_model.model.lm_head.weight')!.data)).toEqual(Array.from(model.get(head)!.data));
    // lora.from takes modules_to_save from adapter_config.json and loads the head with the adapters
    const { config } = loadConfig(setup.finetuneYaml, ['name=lora-head-from', ...LORA, `model.llm.lora.from=${out}`]);
    const fresh = await buildModel(config);
    try {
      const w = fresh.weightMap();
      for (const [n, t] of model) if (LlamaForCausalLM.isLoraWeight(n) || n === head) expect(Array.from(w.get(n)!.dataSync()), n).toEqual(Array.from(t.data));
      expect(fresh.trainableWeights('finetune').has(head)).toBe(true);
    } finally {
      fresh.dispose();
    }
    // a merged export carries the trained head
    const merged = path.join(setup.root, 'head-merged');
    await exportRun(run, { format: 'xtuner', out: merged, merge: true, pth: false });
    expect(Array.from((await readSafetensors(path.join(merged, 'model.safetensors'))).get(head)!.data)).toEqual(Array.from(model.get(head)!.data));
  });

  it('a run started from lora.from keeps a copy of the adapter config: resumable, and it opens after that directory is gone', async () => {
    const adapterDir = path.join(setup.root, 'peft-to-move');
    await cp(path.join(setup.root, 'peft'), adapterDir, { recursive: true }); // the PEFT export of the test above
    const sets = [`model.llm.lora.from=${adapterDir}`];
    await finetune('lora-from-moved', sets, { maxSteps: 2 });
    const run = path.join(setup.runs, 'lora-from-moved');
    expect(existsSync(path.join(run, 'lora-from.adapter_config.json'))).toBe(true);
    expect((await finetune('lora-from-moved', sets, { resume: 'auto' })).r.step).toBe(4); // the run-dir guard knows the file
    await rm(adapterDir, { recursive: true });
    const trained = await readSafetensors(path.join(run, await lastStep(run), 'model.safetensors'));
    const loaded = await loadRunModel(run);
    try {
      expect(loaded.model.llm.lora).toMatchObject({ r: 4, alpha: 8, dropout: 0.1 });
      const w = loaded.model.weightMap();
      for (const [n, t] of trained) if (LlamaForCausalLM.isLoraWeight(n)) expect(Array.from(w.get(n)!.dataSync()), n).toEqual(Array.from(t.data));
    } finally {
      loaded.model.dispose();
    }
    const again = path.join(setup.root, 'peft-again');
    await exportRun(run, { format: 'peft', out: again });
    expect(JSON.parse(await readFile(path.join(again, ADAPTER_CONFIG_FILE), 'utf8'))).toMatchObject({ r: 4, lora_alpha: 8 });
    // without the copy the missing directory is still named
    await rm(path.join(run, 'lora-from.adapter_config.json'));
    await expect(loadRunModel(run)).rejects.toThrow(/peft-to-move/);
  });
});

/** config.json files only (no weights) of the full-size parts, as their HF / open_clip directories carry them. */
async function configOnlyDirs(root: string): Promise<Record<string, string>> {
  const dirs = { clip: path.join(root, 'clip'), convnext: path.join(root, 'convnext'), vicuna: path.join(root, 'vicuna'), phi3: path.join(root, 'phi3') };
  for (const d of Object.values(dirs)) await mkdir(d, { recursive: true });
  await writeFile(
    path.join(dirs.clip, 'config.json'),
    JSON.stringify({ model_type: 'clip_vision_model', hidden_size: 1024, intermediate_size: 4096, num_hidden_layers: 24, num_attention_heads: 16, image_size: 336, patch_size: 14, layer_norm_eps: 1e-5, hidden_act: 'quick_gelu' }),
  );
  await writeFile(path.join(dirs.convnext, 'open_clip_config.json'), JSON.stringify({ model_cfg: { embed_dim: 768, vision_cfg: { timm_model_name: 'convnext_large', timm_pool: '', image_size: 320 } } }));
  await writeFile(
    path.join(dirs.vicuna, 'config.json'),
    JSON.stringify({ model_type: 'llama', vocab_size: 32000, hidden_size: 4096, intermediate_size: 11008, num_hidden_layers: 32, num_attention_heads: 32, num_key_value_heads: 32, rms_norm_eps: 1e-5, rope_theta: 10000, max_position_embeddings: 4096, tie_word_embeddings: false }),
  );
  await writeFile(
    path.join(dirs.phi3, 'config.json'),
    JSON.stringify({ model_type: 'phi3', vocab_size: 32064, hidden_size: 3072, intermediate_size: 8192, num_hidden_layers: 32, num_attention_heads: 32, num_key_value_heads: 32, rms_norm_eps: 1e-5, rope_theta: 10000, max_position_embeddings: 4096, tie_word_embeddings: false }),
  );
  return dirs;
}

describe('dry run of the full-size LoRA recipes from config.json alone', () => {
  it('configs/vicuna-7b/finetune-lora.yaml --dry-run --json: one line, below 80 GiB with checkpointing; no weights, no data needed', async () => {
    const dirs = await configOnlyDirs(path.join(setup.root, 'cfg-only'));
    expect(existsSync(path.join(dirs.vicuna, 'model.safetensors'))).toBe(false);
    const sets = [`model.vision.pretrained=${dirs.clip}`, `model.vision_aux.pretrained=${dirs.convnext}`, `model.llm.pretrained=${dirs.vicuna}`, `output_dir=${setup.runs}`];
    const run = async (file: string, extra: string[] = []) => {
      const out = collector();
      await train({ configFile: file, stage: 'finetune', sets: [...sets, ...extra], dryRun: true, json: true, progress: 'off', out: out.stream });
      return out.text();
    };
    const root = path.resolve(import.meta.dirname, '..');
    const text = await run(path.join(root, 'configs/vicuna-7b/finetune-lora.yaml'));
    expect(text.trim().split('\n')).toHaveLength(1);
    const plan = JSON.parse(text);
    expect(plan).toMatchObject({ batch: 1, checkpointing: true, lora: { r: 128, alpha: 256, dropout: 0.05 }, shapeFrom: 'config' });
    expect(plan.positions).toBe(1472 - 1 + 576 + 100);
    expect(plan.memoryGiB.total).toBeLessThan(80);
    expect(plan.params.trainable).toBeLessThan(0.1 * plan.params.total);
    expect(plan.memoryGiB.total).toBeCloseTo(plan.memoryGiB.weights + plan.memoryGiB.grads + plan.memoryGiB.optimizer + plan.memoryGiB.activations, 1);
    // the full finetune of the same model does not fit 80 GB; Phi-3's fused modules plan too
    const full = JSON.parse(await run(path.join(root, 'configs/vicuna-7b/finetune.yaml')));
    expect(full.memoryGiB.total).toBeGreaterThan(80);
    const phi3 = JSON.parse(await run(path.join(root, 'configs/phi3-mini/finetune-lora.yaml'), [`model.llm.pretrained=${dirs.phi3}`]));
    expect(phi3.lora.targets).toBe('all-linear');
    expect(phi3.memoryGiB.total).toBeLessThan(plan.memoryGiB.total);
  });
});
