// The PEFT adapter format: key names, adapter_config.json checks (hostile and unsupported configs), config
// resolution against an adapter, writing and reading back, and merging (W + scaling * B A, fused Phi-3 rows).
import { mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  adapterConfigJson,
  mergeLora,
  oursFromPeftKey,
  parseAdapterConfig,
  peftKey,
  readAdapterConfig,
  readAdapterWeights,
  resolveLoraConfig,
  writePeftAdapter,
} from '../src/io/peft.js';
import { writeSafetensors, type HostTensor, type LazyTensor } from '../src/io/safetensors.js';
import { Rng } from '../src/util/rng.js';

const rnd = (shape: number[], seed: number): HostTensor => {
  const rng = new Rng(seed);
  return { dtype: 'float32', shape, data: Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => rng.normal()) };
};
const lazy = (t: HostTensor): LazyTensor => ({ dtype: 'float32', shape: t.shape, load: () => t });

describe('PEFT keys', () => {
  it('maps our LoRA names to PEFT keys and back (with or without the adapter name)', () => {
    const ours = 'llm.model.layers.3.self_attn.qkv_proj.lora_B.weight';
    expect(peftKey(ours)).toBe('base_model.model.model.layers.3.self_attn.qkv_proj.lora_B.weight');
    expect(oursFromPeftKey(peftKey(ours))).toBe(ours);
    expect(oursFromPeftKey('base_model.model.model.layers.0.mlp.down_proj.lora_A.default.weight')).toBe('llm.model.layers.0.mlp.down_proj.lora_A.weight');
    // modules_to_save: saved without the adapter name, in memory with it
    expect(peftKey('llm.lm_head.weight')).toBe('base_model.model.lm_head.weight');
    expect(oursFromPeftKey('base_model.model.lm_head.weight')).toBe('llm.lm_head.weight');
    expect(oursFromPeftKey('base_model.model.model.embed_tokens.modules_to_save.default.weight')).toBe('llm.model.embed_tokens.weight');
    for (const k of ['base_model.model.model.norm.weight', 'base_model.model.model.layers.0.mlp.down_proj.weight', 'model.layers.0.mlp.down_proj.lora_A.weight', 'base_model.model.model.layers.0.mlp.down_proj.lora_magnitude_vector']) {
      expect(oursFromPeftKey(k), k).toBeNull();
    }
    expect(() => peftKey('llm.model.layers.0.mlp.down_proj.weight')).toThrow(/not an adapter weight/);
  });
});

describe('adapter_config.json', () => {
  const good = { peft_type: 'LORA', task_type: 'CAUSAL_LM', r: 16, lora_alpha: 32, lora_dropout: 0.05, target_modules: ['q_proj', 'v_proj'], use_rslora: true, bias: 'none' };

  it('reads a plain LoRA config; what we write reads back the same', () => {
    expect(parseAdapterConfig(good, 'f')).toEqual({ r: 16, alpha: 32, dropout: 0.05, targets: ['q_proj', 'v_proj'], rslora: true });
    const c = { r: 4, alpha: 8, dropout: 0.1, targets: ['qkv_proj', 'gate_up_proj'] as const, rslora: false };
    expect(parseAdapterConfig(adapterConfigJson({ ...c, targets: [...c.targets] }, 'some/base'), 'f')).toEqual({ ...c, targets: [...c.targets] });
    expect(adapterConfigJson({ ...c, targets: [...c.targets] }, null)).toMatchObject({ peft_type: 'LORA', task_type: 'CAUSAL_LM', base_model_name_or_path: null, lora_alpha: 8 });
  });

  it.each([
    [{ ...good, peft_type: 'IA3' }, /peft_type "IA3" is not "LORA"/],
    [{ ...good, task_type: 'SEQ_CLS' }, /task_type "SEQ_CLS"/],
    [{ ...good, r: 0 }, /'r' = 0 is not valid/],
    [{ ...good, r: 2.5 }, /'r' = 2.5 is not valid/],
    [{ ...good, lora_dropout: 1 }, /'lora_dropout' = 1/],
    [{ ...good, use_dora: true }, /uses use_dora/],
    [{ ...good, bias: 'all' }, /uses bias "all"/],
    [{ ...good, rank_pattern: { q_proj: 4 } }, /uses rank_pattern/],
    [{ ...good, modules_to_save: ['score'] }, /modules_to_save \["score"\]: mgllava saves lm_head and embed_tokens only/],
    [{ ...good, modules_to_save: 'lm_head' }, /modules_to_save "lm_head"/],
    [{ ...good, target_modules: '.*q_proj' }, /regular expressions are not supported/],
    [{ ...good, target_modules: ['query'] }, /\["query"\] are not LLaMA\/Phi-3 decoder linears/],
    [{ ...good, target_modules: ['lm_head'] }, /\["lm_head"\]/],
    [{ ...good, use_rslora: 'yes' }, /'use_rslora' = "yes"/],
    [[1, 2], /expected a JSON object/],
  ])('refuses %j', (json, message) => {
    expect(() => parseAdapterConfig(json, 'adapter_config.json')).toThrow(message);
  });

  it('resolves the YAML section against the adapter: unset keys from it, clashing r or scaling refused, dropout free', () => {
    const adapter = parseAdapterConfig(good, 'f');
    expect(resolveLoraConfig({}, null)).toEqual({ r: 8, alpha: 8, dropout: 0, targets: 'all-linear', rslora: false });
    expect(resolveLoraConfig({ from: 'd' }, adapter)).toEqual(adapter);
    expect(resolveLoraConfig({ from: 'd', dropout: 0 }, adapter).dropout).toBe(0);
    expect(() => resolveLoraConfig({ from: 'd', r: 8 }, adapter)).toThrow(/r 8 \(adapter: 16\)/);
    expect(() => resolveLoraConfig({ from: 'd', rslora: false }, adapter)).toThrow(/scaling 2 .*adapter: alpha 32, rslora true/);
    // the same scaling from other numbers is fine (alpha 32 / sqrt 16 = 8 = alpha 128 / 16)
    expect(() => resolveLoraConfig({ from: 'd', alpha: 128, rslora: false }, adapter)).not.toThrow();
    expect(() => resolveLoraConfig({ from: 'd', targets: ['q_proj'] }, adapter)).toThrow(/targets/);
    // modules_to_save: from the adapter when unset, written to adapter_config.json, a clash refused
    const withHead = parseAdapterConfig({ ...good, modules_to_save: ['lm_head', 'lm_head'] }, 'f');
    expect(withHead.modulesToSave).toEqual(['lm_head']);
    expect(resolveLoraConfig({ from: 'd' }, withHead).modulesToSave).toEqual(['lm_head']);
    expect(adapterConfigJson({ ...withHead, targets: ['q_proj'] }, null).modules_to_save).toEqual(['lm_head']);
    expect(adapterConfigJson({ ...adapter, targets: ['q_proj'] }, null).modules_to_save).toBeNull();
    expect(() => resolveLoraConfig({ from: 'd', modules_to_save: [] }, withHead)).toThrow(/modules_to_save \[\] \(adapter: \["lm_head"\]\)/);
  });

  it('reads a directory, with one-line errors for what is missing', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'mgllava-peft-'));
    expect(() => readAdapterConfig(path.join(dir, 'nope'))).toThrow(/not a directory/);
    expect(() => readAdapterConfig(dir)).toThrow(/no adapter_config.json/);
    await writeFile(path.join(dir, 'adapter_config.json'), '{ not json');
    expect(() => readAdapterConfig(dir)).toThrow(/adapter_config.json/);
    await writeFile(path.join(dir, 'adapter_model.bin'), 'pickle');
    await expect(readAdapterWeights(dir)).rejects.toThrow(/only adapter_model.bin/);
  });
});

describe('adapter weights', () => {
  it('round trip: written under PEFT keys, read back under ours; foreign keys refused', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'mgllava-peft-'));
    const a = rnd([4, 8], 1);
    const b = rnd([6, 4], 2);
    const adapters = new Map([
      ['llm.model.layers.0.self_attn.q_proj.lora_A.weight', a],
      ['llm.model.layers.0.self_attn.q_proj.lora_B.weight', b],
    ]);
    const files = await writePeftAdapter(dir, { config: { r: 4, alpha: 8, dropout: 0, targets: ['q_proj'], rslora: false }, baseModel: null, adapters });
    expect(files).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
    const back = await readAdapterWeights(dir);
    expect([...back.keys()]).toEqual([...adapters.keys()]);
    expect(Array.from(back.get('llm.model.layers.0.self_attn.q_proj.lora_B.weight')!.data)).toEqual(Array.from(b.data));
    expect(readAdapterConfig(dir)).toEqual({ r: 4, alpha: 8, dropout: 0, targets: ['q_proj'], rslora: false });
    await writeSafetensors(path.join(dir, 'adapter_model.safetensors'), new Map([['base_model.model.model.norm.weight', rnd([2], 3)]]));
    await expect(readAdapterWeights(dir)).rejects.toThrow(/1 tensors are neither LoRA weights of decoder linears nor lm_head \/ embed_tokens: base_model.model.model.norm.weight/);
  });

  it('merge: W + scaling * B A per member (fused rows in order), adapters dropped, mismatches refused', async () => {
    // A Phi-3-style fused qkv adapter over q (4 rows), k (2), v (2), in = 3, r = 2; scaling alpha/r = 1.5.
    const w = { q: rnd([4, 3], 1), k: rnd([2, 3], 2), v: rnd([2, 3], 3) };
    const A = rnd([2, 3], 4);
    const B = rnd([8, 2], 5);
    const p = 'llm.model.layers.0.self_attn.';
    const weights = new Map<string, LazyTensor>([
      [`${p}q_proj.weight`, lazy(w.q)],
      [`${p}k_proj.weight`, lazy(w.k)],
      [`${p}v_proj.weight`, lazy(w.v)],
      [`${p}qkv_proj.lora_A.weight`, lazy(A)],
      [`${p}qkv_proj.lora_B.weight`, lazy(B)],
      ['llm.lm_head.weight', lazy(rnd([5, 3], 6))],
    ]);
    const merged = mergeLora(weights, { r: 2, alpha: 3, dropout: 0, targets: 'all-linear', rslora: false });
    expect([...merged.keys()].sort()).toEqual(['llm.lm_head.weight', `${p}k_proj.weight`, `${p}q_proj.weight`, `${p}v_proj.weight`]);
    const k = await merged.get(`${p}k_proj.weight`)!.load();
    for (let o = 0; o < 2; o++) {
      for (let i = 0; i < 3; i++) {
        let acc = 0;
        for (let r = 0; r < 2; r++) acc += B.data[(4 + o) * 2 + r]! * A.data[r * 3 + i]!;
        expect(k.data[o * 3 + i]!).toBeCloseTo(w.k.data[o * 3 + i]! + 1.5 * acc, 5);
      }
    }
    const bad = new Map(weights);
    bad.set(`${p}qkv_proj.lora_B.weight`, lazy(rnd([7, 2], 5)));
    expect(() => mergeLora(bad, { r: 2, alpha: 3, dropout: 0, targets: 'all-linear', rslora: false })).toThrow(/has 7 rows, its base weights q_proj \+ k_proj \+ v_proj have 8/);
    const orphan = new Map(weights);
    orphan.delete(`${p}v_proj.weight`);
    expect(() => mergeLora(orphan, { r: 2, alpha: 3, dropout: 0, targets: 'all-linear', rslora: false })).toThrow(/no base weight .*v_proj.weight/);
  });
});
