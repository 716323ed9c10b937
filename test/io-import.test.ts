import { readFile, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { modelConfigFrom } from '../src/config/build-model.js';
import { modelSchema } from '../src/config/schema.js';
import { e2eModelConfig } from '../src/golden/pieces/e2e.js';
import { readPretrainedConfigs, loadPretrained, findWeightsFile } from '../src/io/pretrained.js';
import { readSafetensors, writeSafetensors, type HostTensor } from '../src/io/safetensors.js';
import { llmHfPlan, llmHfTensor } from '../src/io/weight-maps.js';
import { fromHfConfig } from '../src/model/llm/config.js';
import { MGLLaVA } from '../src/model/mgllava.js';
import { WeightLoadError } from '../src/nn/module.js';
import { Rng } from '../src/util/rng.js';
import { EXIT } from '../src/errors.js';
import { tempRoot } from './temp-root.js';
import { runCli } from './cli-harness.js';
import { e2eModelSection, f32, goldenConfig, goldenParams, renamePrefix, roundTripHalf, writeE2eDirs, type Weights } from './io-fixtures.js';

const { root, fresh } = tempRoot('import');

type Section = ReturnType<typeof modelSchema.parse>;

function buildFrom(section: Section): MGLLaVA {
  return new MGLLaVA(modelConfigFrom(section, readPretrainedConfigs(section)), { rng: new Rng(3), skipInit: true });
}

async function weightsOf(model: MGLLaVA, prefix: string): Promise<Map<string, Float32Array>> {
  const out = new Map<string, Float32Array>();
  for (const [name, v] of model.weightMap()) if (name.startsWith(prefix)) out.set(name, (await v.data()) as Float32Array);
  return out;
}

/** Every `prefix` weight of the model equals `expected` (by name) exactly. */
async function expectWeights(model: MGLLaVA, prefix: string, expected: Weights, value = (t: HostTensor) => t.data): Promise<void> {
  const got = await weightsOf(model, prefix);
  expect([...got.keys()].sort()).toEqual([...expected.keys()].filter((k) => k.startsWith(prefix)).sort());
  for (const [name, data] of got) expect(Array.from(data), name).toEqual(Array.from(value(expected.get(name)!)));
}

async function expectLoadError(section: Section, ...fragments: string[]): Promise<string> {
  const model = buildFrom(section);
  try {
    const err = await loadPretrained(model, section).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(Error);
    const msg = (err as Error).message;
    for (const f of fragments) expect(msg).toContain(f);
    return msg;
  } finally {
    model.dispose();
  }
}

describe('pretrained directories built from the e2e golden', () => {
  it('config files give the e2e model config; weights load exactly, extras skipped by name', async () => {
    const tensorsBefore = tf.memory().numTensors;
    const d = await writeE2eDirs(await fresh('e2e'), { extras: true });
    const section = modelSchema.parse(e2eModelSection(d));
    const cfg = modelConfigFrom(section, readPretrainedConfigs(section));
    expect(cfg).toEqual(e2eModelConfig(d.config as never));
    const model = buildFrom(section);
    const reports = await loadPretrained(model, section);
    expect(reports.map((r) => [r.kind, r.loaded])).toEqual([
      ['clip', 39],
      ['convnext', 52],
      ['llm', 21],
    ]);
    expect(reports[0]!.ignored.map((i) => i.source).sort()).toEqual(
      ['logit_scale', 'text_model.embeddings.token_embedding.weight', 'text_model.final_layer_norm.weight', 'text_projection.weight', 'vision_model.embeddings.position_ids', 'visual_projection.weight'].sort(),
    );
    expect(reports[1]!.ignored.map((i) => i.source).sort()).toEqual(
      ['logit_scale', 'text.token_embedding.weight', 'visual.head.mlp.fc1.weight', 'visual.trunk.head.norm.bias', 'visual.trunk.head.norm.weight'].sort(),
    );
    expect(reports[2]!.ignored.map((i) => i.source)).toEqual(['model.layers.0.self_attn.rotary_emb.inv_freq']);
    await expectWeights(model, 'visual_encoder.', d.params);
    await expectWeights(model, 'visual_encoder_aux.', d.params);
    await expectWeights(model, 'llm.', d.params);
    // Parts without a pretrained dir are untouched (skipInit zeros).
    for (const [name, data] of await weightsOf(model, 'projector.')) expect(data.every((x) => x === 0), name).toBe(true);
    model.dispose();
    expect(tf.memory().numTensors).toBe(tensorsBefore);
  });

  it('widens F16 and BF16 checkpoints', async () => {
    const d = await writeE2eDirs(await fresh('half'), { llmDtype: 'F16', clipDtype: 'BF16' });
    const section = modelSchema.parse(e2eModelSection(d));
    const model = buildFrom(section);
    await loadPretrained(model, section);
    await expectWeights(model, 'llm.', d.params, (t) => roundTripHalf(t, 'F16'));
    await expectWeights(model, 'visual_encoder.', d.params, (t) => roundTripHalf(t, 'BF16'));
    // Half precision really lost something (the test would be vacuous otherwise).
    const emb = d.params.get('llm.model.embed_tokens.weight')!;
    expect(Array.from(roundTripHalf(emb, 'F16'))).not.toEqual(Array.from(emb.data));
    model.dispose();
  });

  it('reads a sharded LLM (index + shards)', async () => {
    const d = await writeE2eDirs(await fresh('sharded'), { llmShardBytes: 40_000 });
    expect(findWeightsFile(d.llm, 'llm')).toBe(path.join(d.llm, 'model.safetensors.index.json'));
    const section = modelSchema.parse(e2eModelSection(d));
    const model = buildFrom(section);
    await loadPretrained(model, section);
    await expectWeights(model, 'llm.', d.params);
    model.dispose();
  });

  it('missing, extra and mis-shaped tensors are one error listing every name', async () => {
    const d = await writeE2eDirs(await fresh('bad'));
    const clip = renamePrefix(d.params, 'visual_encoder.', '');
    clip.delete('vision_model.encoder.layers.1.mlp.fc2.bias');
    clip.set('vision_model.encoder.layers.0.mlp.fc3.weight', f32([2, 2]));
    clip.set('some_other_model.weight', f32([2]));
    clip.set('vision_model.pre_layrnorm.weight', f32([31]));
    await writeSafetensors(path.join(d.clip, 'model.safetensors'), clip);
    const section = modelSchema.parse(e2eModelSection(d));
    const msg = await expectLoadError(
      section,
      'missing 1: visual_encoder.vision_model.encoder.layers.1.mlp.fc2.bias',
      'unexpected 2: some_other_model.weight, vision_model.encoder.layers.0.mlp.fc3.weight (-> visual_encoder.vision_model.encoder.layers.0.mlp.fc3.weight)',
      'vision_model.pre_layrnorm.weight (-> visual_encoder.vision_model.pre_layrnorm.weight): checkpoint has [31], model expects [32]',
      path.join(d.clip, 'model.safetensors'),
    );
    expect(msg).toMatch(/^cannot load CLIP ViT \(HF\) weights/);
    const model = buildFrom(section);
    const err = await loadPretrained(model, section).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WeightLoadError);
    expect((err as WeightLoadError).missing).toEqual(['visual_encoder.vision_model.encoder.layers.1.mlp.fc2.bias']);
    // Nothing was assigned: names are checked before any data is read.
    for (const [name, data] of await weightsOf(model, 'visual_encoder.')) expect(data.every((x) => x === 0), name).toBe(true);
    model.dispose();
  });

  it('an LLM with a wrong vocabulary and a ConvNeXt with a missing block fail naming them', async () => {
    const d = await writeE2eDirs(await fresh('bad2'));
    const aux = renamePrefix(d.params, 'visual_encoder_aux.', 'visual.trunk.');
    aux.delete('visual.trunk.stages.2.blocks.0.gamma');
    await writeSafetensors(path.join(d.aux, 'open_clip_model.safetensors'), aux);
    await expectLoadError(modelSchema.parse(e2eModelSection({ ...d, llm: null, clip: null })), 'missing 1: visual_encoder_aux.stages.2.blocks.0.gamma', 'ConvNeXt (open_clip)');
    // config.json says 101 tokens, the checkpoint has 100 rows.
    const config = d.config.llm as Record<string, unknown>;
    await writeFile(path.join(d.llm, 'config.json'), JSON.stringify({ model_type: 'llama', ...config, vocab_size: 101 }));
    await expectLoadError(
      modelSchema.parse(e2eModelSection({ ...d, aux: null, clip: null })),
      'shape mismatch 2: ',
      'model.embed_tokens.weight (-> llm.model.embed_tokens.weight): checkpoint has [100,64], model expects [101,64]',
      'lm_head.weight (-> llm.lm_head.weight): checkpoint has [100,64], model expects [101,64]',
    );
  });

  it('a pytorch_model.bin that is not a checkpoint is refused in one line naming it (pickles load: io-torch-pretrained)', async () => {
    const d = await writeE2eDirs(await fresh('pickle'));
    await unlink(path.join(d.llm, 'model.safetensors'));
    await writeFile(path.join(d.llm, 'pytorch_model.bin'), 'not really a pickle');
    const section = modelSchema.parse(e2eModelSection(d));
    const msg = await expectLoadError(section, path.join(d.llm, 'pytorch_model.bin'), 'not a PyTorch checkpoint');
    expect(msg).not.toContain('\n');
  });

  it('a non-CLIP config and a dir without config.json are config errors', async () => {
    const d = await writeE2eDirs(await fresh('cfg'));
    await writeFile(path.join(d.clip, 'config.json'), JSON.stringify({ model_type: 'siglip_vision_model' }));
    expect(() => readPretrainedConfigs(modelSchema.parse(e2eModelSection(d)))).toThrow(/siglip_vision_model.*is not a CLIP config/);
    await unlink(path.join(d.llm, 'config.json'));
    expect(() => readPretrainedConfigs(modelSchema.parse(e2eModelSection({ ...d, clip: null })))).toThrow(/model\.llm\.pretrained .*no config\.json/);
  });

  it('timm ConvNeXt layout (bare names, config.json with architecture)', async () => {
    const d = await writeE2eDirs(await fresh('timm'));
    const timmDir = await fresh('timm-convnext');
    const trunk = renamePrefix(d.params, 'visual_encoder_aux.', '');
    trunk.set('head.norm.weight', f32([64]));
    trunk.set('head.fc.weight', f32([10, 64]));
    await writeSafetensors(path.join(timmDir, 'model.safetensors'), trunk);
    const cnx = d.config.convnext as { dims: number[]; depths: number[] };
    await writeFile(path.join(timmDir, 'config.json'), JSON.stringify({ architecture: 'convnext_tiny', num_classes: 10, model_args: { dims: cnx.dims, depths: cnx.depths } }));
    const section = modelSchema.parse(e2eModelSection({ clip: null, aux: timmDir, llm: null }));
    const model = buildFrom(section);
    const [report] = await loadPretrained(model, section);
    expect(report!.ignored.map((i) => i.source)).toEqual(['head.fc.weight', 'head.norm.weight']);
    await expectWeights(model, 'visual_encoder_aux.', d.params);
    model.dispose();
  });
});

/** A tiny model section around an LLM dir (no pretrained encoders). */
function llmOnlySection(llmDir: string): Section {
  return modelSchema.parse({
    vision: { image_size: 28, patch_size: 14, hidden_size: 8, intermediate_size: 16, num_layers: 1, num_heads: 2 },
    llm: { pretrained: llmDir },
  });
}

describe('LLaMA-family layouts', () => {
  it('Phi-3 fused qkv_proj / gate_up_proj are split on import', async () => {
    const params = await goldenParams('llama_a');
    const config = await goldenConfig('llama_a');
    const dir = await fresh('phi3');
    // Fuse by hand: rows [q; k; v] and [gate; up].
    const fused: Weights = new Map();
    const cat = (names: string[]): HostTensor => {
      const parts = names.map((x) => params.get(x)!);
      const data = new Float32Array(parts.reduce((a, p) => a + p.data.length, 0));
      let off = 0;
      for (const p of parts) {
        data.set(p.data, off);
        off += p.data.length;
      }
      return { dtype: 'float32', shape: [parts.reduce((a, p) => a + p.shape[0]!, 0), parts[0]!.shape[1]!], data };
    };
    for (const [name, t] of params) {
      const m = /^(.*)\.(self_attn\.(q|k|v)_proj|mlp\.(gate|up)_proj)\.weight$/.exec(name);
      if (!m) fused.set(name, t);
      else if (m[3] === 'q') fused.set(`${m[1]}.self_attn.qkv_proj.weight`, cat(['q', 'k', 'v'].map((p) => `${m[1]}.self_attn.${p}_proj.weight`)));
      else if (m[4] === 'gate') fused.set(`${m[1]}.mlp.gate_up_proj.weight`, cat(['gate', 'up'].map((p) => `${m[1]}.mlp.${p}_proj.weight`)));
    }
    expect(fused.size).toBe(params.size - 3 * 2);
    await writeSafetensors(path.join(dir, 'model.safetensors'), fused);
    await writeFile(path.join(dir, 'config.json'), JSON.stringify({ model_type: 'phi3', ...config }));
    const section = llmOnlySection(dir);
    const model = buildFrom(section);
    expect(model.config.llm.weightFormat).toBe('phi3');
    await loadPretrained(model, section);
    await expectWeights(model, 'llm.', new Map([...params].map(([k, t]) => [`llm.${k}`, t])));

    // And back: the export plan fuses them into the same tensors.
    const ours = [...model.llm.weightMap('llm.')].map(([name, v]) => ({ name, shape: v.shape }));
    const plan = llmHfPlan(ours, model.config.llm);
    expect(plan.map((p) => p.hfName).sort()).toEqual([...fused.keys()].sort());
    const host = new Map([...params].map(([k, t]) => [`llm.${k}`, t]));
    for (const p of plan) expect(Array.from(llmHfTensor(p, host, model.config.llm).data), p.hfName).toEqual(Array.from(fused.get(p.hfName)!.data));
    model.dispose();
  });

  it('a tied model skips a stored lm_head copy', async () => {
    const params = await goldenParams('llama_b');
    const dir = await fresh('tied');
    await writeSafetensors(path.join(dir, 'model.safetensors'), new Map([...params, ['lm_head.weight', params.get('model.embed_tokens.weight')!]]));
    await writeFile(path.join(dir, 'config.json'), JSON.stringify({ model_type: 'llama', ...(await goldenConfig('llama_b')) }));
    const section = llmOnlySection(dir);
    const model = buildFrom(section);
    expect(fromHfConfig({ model_type: 'llama', ...(await goldenConfig('llama_b')) }).tieWordEmbeddings).toBe(true);
    const [report] = await loadPretrained(model, section);
    expect(report!.ignored).toEqual([{ source: 'lm_head.weight', reason: expect.stringContaining('tied') }]);
    await expectWeights(model, 'llm.', new Map([...params].map(([k, t]) => [`llm.${k}`, t])));
    model.dispose();
  });
});

describe('mgllava import', () => {
  const run = (...argv: string[]) => runCli(argv);

  it('converts each kind to one safetensors under checkpoint names', async () => {
    const d = await writeE2eDirs(await fresh('cli'), { extras: true, llmShardBytes: 40_000 });
    for (const [kind, dir, prefix] of [
      ['clip', d.clip, 'visual_encoder.'],
      ['convnext', d.aux, 'visual_encoder_aux.'],
      ['llm', d.llm, 'llm.'],
    ] as const) {
      const out = path.join(root, `cli-${kind}.safetensors`);
      const r = await run('import', '--kind', kind, '--from', dir, '--out', out);
      expect(r.err).toBe('');
      expect(r.code).toBe(0);
      const got = await readSafetensors(out);
      const want = [...d.params].filter(([k]) => k.startsWith(prefix));
      expect([...got.keys()].sort()).toEqual(want.map(([k]) => k).sort());
      for (const [k, t] of want) expect(Array.from(got.get(k)!.data), k).toEqual(Array.from(t.data));
    }
    // An existing --out is replaced only with --overwrite (it may be another model's weights).
    const out = path.join(root, 'cli-clip.safetensors');
    const before = await readFile(out);
    const again = await run('import', '--kind', 'llm', '--from', d.llm, '--out', out);
    expect(again.code).toBe(EXIT.usage);
    expect(again.err).toMatch(/--out .*cli-clip\.safetensors exists: pass --overwrite/);
    expect((await readFile(out)).equals(before)).toBe(true);
    const replaced = await run('import', '--kind', 'llm', '--from', d.llm, '--out', out, '--overwrite');
    expect(replaced.code).toBe(0);
    expect([...(await readSafetensors(out)).keys()].every((k) => k.startsWith('llm.'))).toBe(true);
  });

  it('--list shows names, dtypes, shapes and the mapping', async () => {
    const d = await writeE2eDirs(await fresh('list'), { extras: true, clipDtype: 'BF16' });
    const r = await run('import', '--kind', 'clip', '--from', d.clip, '--list');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/vision_model\.pre_layrnorm\.weight\s+BF16\s+\[32\]\s+-> visual_encoder\.vision_model\.pre_layrnorm\.weight/);
    expect(r.out).toMatch(/logit_scale\s+BF16\s+\[\]\s+skipped: CLIP contrastive temperature/);
    expect(r.out).toContain('39 mapped, 6 skipped, 0 unexpected');
  });

  it('unknown tensors and a missing --out are errors', async () => {
    const d = await writeE2eDirs(await fresh('cli-bad'));
    const clip = renamePrefix(d.params, 'visual_encoder.', '');
    clip.set('mystery.weight', f32([3]));
    await writeSafetensors(path.join(d.clip, 'model.safetensors'), clip);
    const out = path.join(root, 'never.safetensors');
    const r = await run('import', '--kind', 'clip', '--from', d.clip, '--out', out);
    expect(r.code).toBe(EXIT.weights);
    expect(r.err).toContain('mystery.weight');
    const r2 = await run('import', '--kind', 'clip', '--from', d.clip);
    expect(r2.code).not.toBe(0);
    expect(r2.err).toContain('--out');
  });
});
