import { resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { runGolden } from '../src/golden/run.js';
import { RUNNERS } from '../src/golden/pieces/index.js';
import { loadWeights } from '../src/nn/module.js';
import { Rng } from '../src/util/rng.js';
import type { HostTensor } from '../src/io/safetensors.js';
import { fromHfConfig, toHfConfig, type LlamaConfig } from '../src/model/llm/config.js';
import { LlamaForCausalLM } from '../src/model/llm/llama.js';
import { hfToOurs, oursToHf } from '../src/model/llm/weight-map.js';
import { causalLmLoss, causalLmLossOnRows, shiftedTargets } from '../src/model/loss.js';

const GOLDEN = resolve(import.meta.dirname, '../../shared/golden/public');

const tiny = (over: Partial<LlamaConfig> = {}): LlamaConfig => ({
  vocabSize: 37,
  hiddenSize: 32,
  intermediateSize: 48,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 2,
  rmsNormEps: 1e-5,
  ropeTheta: 10000,
  tieWordEmbeddings: false,
  initializerRange: 0.2, // large enough that attention is far from uniform
  ...over,
});

const shapes = (m: LlamaForCausalLM) => [...m.namedWeights()].map(([n, v]) => [n, v.shape]);

function hostWeights(m: LlamaForCausalLM): Map<string, HostTensor> {
  return new Map([...m.namedWeights()].map(([n, v]) => [n, { dtype: 'float32', shape: [...v.shape], data: v.dataSync() as Float32Array }]));
}

function randomIds(rng: Rng, b: number, t: number, v: number): number[][] {
  return Array.from({ length: b }, () => Array.from({ length: t }, () => Math.floor(rng.next() * v)));
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i]! - b[i]!));
  return d;
}

describe('LlamaForCausalLM', () => {
  it('matches the golden pieces llama_a (ids, GQA, padding) and llama_b (tied, inputs_embeds)', async () => {
    const report = await runGolden(GOLDEN, RUNNERS, ['llama_a', 'llama_b']);
    for (const name of ['llama_a', 'llama_b']) {
      const p = report.pieces[name]!;
      expect(p.reason ?? '', name).toBe('');
      expect(p.ok).toBe(true);
    }
    const a = report.pieces.llama_a!.checks.map((c) => c.name);
    expect(a).toEqual(expect.arrayContaining(['output.logits', 'output.loss', 'intermediate.hidden.3', 'intermediate.rope_sin', 'grad.lm_head.weight']));
    expect(report.pieces.llama_b!.checks.map((c) => c.name)).toContain('grad_input.inputs_embeds');
  });

  it('names its weights like HF LlamaForCausalLM (no lm_head when tied, biases only with attentionBias)', () => {
    const m = new LlamaForCausalLM(tiny({ numLayers: 1, tieWordEmbeddings: true, attentionBias: true }), { rng: new Rng(1) });
    expect(shapes(m)).toEqual([
      ['model.embed_tokens.weight', [37, 32]],
      ['model.layers.0.input_layernorm.weight', [32]],
      ['model.layers.0.self_attn.q_proj.weight', [32, 32]],
      ['model.layers.0.self_attn.q_proj.bias', [32]],
      ['model.layers.0.self_attn.k_proj.weight', [16, 32]],
      ['model.layers.0.self_attn.k_proj.bias', [16]],
      ['model.layers.0.self_attn.v_proj.weight', [16, 32]],
      ['model.layers.0.self_attn.v_proj.bias', [16]],
      ['model.layers.0.self_attn.o_proj.weight', [32, 32]],
      ['model.layers.0.self_attn.o_proj.bias', [32]],
      ['model.layers.0.post_attention_layernorm.weight', [32]],
      ['model.layers.0.mlp.gate_proj.weight', [48, 32]],
      ['model.layers.0.mlp.up_proj.weight', [48, 32]],
      ['model.layers.0.mlp.down_proj.weight', [32, 48]],
      ['model.norm.weight', [32]],
    ]);
    m.dispose();
  });

  it('round-trips its config', () => {
    const m = new LlamaForCausalLM(tiny({ headDim: 12, maxPositionEmbeddings: 64 }), { rng: new Rng(2) });
    const again = new LlamaForCausalLM(m.getConfig(), { rng: new Rng(3), skipInit: true });
    expect(shapes(again)).toEqual(shapes(m));
    expect(again.getConfig()).toEqual(m.getConfig());
    m.dispose();
    again.dispose();
  });

  it('reads HF configs of the family and refuses what it would compute differently', () => {
    const llama3 = fromHfConfig({
      model_type: 'llama', vocab_size: 128256, hidden_size: 4096, intermediate_size: 14336, num_hidden_layers: 32,
      num_attention_heads: 32, num_key_value_heads: 8, rms_norm_eps: 1e-5, rope_theta: 500000, tie_word_embeddings: false,
      hidden_act: 'silu', max_position_embeddings: 8192, rope_scaling: null, attention_bias: false,
    });
    expect(llama3).toMatchObject({ numKvHeads: 8, headDim: 128, ropeTheta: 500000, weightFormat: 'llama', maxPositionEmbeddings: 8192 });
    const phi3 = fromHfConfig({
      model_type: 'phi3', vocab_size: 32064, hidden_size: 3072, intermediate_size: 8192, num_hidden_layers: 32,
      num_attention_heads: 32, num_key_value_heads: 32, rms_norm_eps: 1e-5, rope_theta: 10000, sliding_window: 2047,
    });
    expect(phi3).toMatchObject({ weightFormat: 'phi3', numKvHeads: 32, headDim: 96, tieWordEmbeddings: false });
    const vicuna = fromHfConfig({
      model_type: 'llama', vocab_size: 32000, hidden_size: 4096, intermediate_size: 11008, num_hidden_layers: 32,
      num_attention_heads: 32, rms_norm_eps: 1e-5,
    });
    expect(vicuna).toMatchObject({ numKvHeads: 32, ropeTheta: 10000, attentionBias: false });
    expect(fromHfConfig({ ...toHfConfig(llama3) })).toEqual(llama3);
    const base = { model_type: 'llama', vocab_size: 10, hidden_size: 8, intermediate_size: 8, num_hidden_layers: 1, num_attention_heads: 2, rms_norm_eps: 1e-6 };
    expect(() => fromHfConfig({ ...base, rope_scaling: { rope_type: 'llama3', factor: 8 } })).toThrow(/rope_scaling/);
    expect(() => fromHfConfig({ ...base, hidden_act: 'gelu' })).toThrow(/hidden_act/);
    expect(() => fromHfConfig({ ...base, model_type: 'mistral' })).toThrow(/model_type/);
    expect(() => fromHfConfig({ ...base, num_key_value_heads: 3 })).toThrow(/multiple of numKvHeads/);
    expect(() => fromHfConfig({ ...base, rms_norm_eps: undefined })).toThrow(/rms_norm_eps/);
  });

  it('incremental decoding with the KV cache equals the uncached logits (left padding too)', () => {
    const m = new LlamaForCausalLM(tiny({ numKvHeads: 2 }), { rng: new Rng(4) });
    const ids = randomIds(new Rng(5), 2, 9, 37);
    // row 1 is left-padded by two positions
    const mask = [Array(9).fill(1), [0, 0, ...Array(7).fill(1)]];
    const full = m.forward({ inputIds: ids, attentionMask: mask });
    const fullData = full.logits.dataSync();
    const cache = m.createCache();
    const pieces = [4, 1, 2, 1, 1]; // prefill 4, then 1, a chunk of 2, then 1, 1
    let start = 0;
    const got = new Float32Array(fullData.length);
    for (const len of pieces) {
      const sl = (rows: number[][]) => rows.map((r) => r.slice(start, start + len));
      const out = m.forward({ inputIds: sl(ids), attentionMask: sl(mask), cache });
      const d = out.logits.dataSync();
      for (let b = 0; b < 2; b++) for (let t = 0; t < len; t++) got.set(d.subarray((b * len + t) * 37, (b * len + t + 1) * 37), (b * 9 + start + t) * 37);
      out.logits.dispose();
      start += len;
    }
    expect(cache.length).toBe(9);
    // compare real positions (padded queries differ only in their own, irrelevant, outputs)
    for (let b = 0; b < 2; b++) {
      for (let t = 0; t < 9; t++) {
        if (mask[b]![t] === 0) continue;
        const a = got.subarray((b * 9 + t) * 37, (b * 9 + t + 1) * 37);
        const e = fullData.subarray((b * 9 + t) * 37, (b * 9 + t + 1) * 37);
        expect(maxAbsDiff(a, e), `row ${b} pos ${t}`).toBeLessThan(1e-5);
      }
    }
    full.logits.dispose();
    cache.dispose();
    expect(() => m.forward({ inputIds: [[1]], cache: m.createCache() }).logits.dispose()).not.toThrow();
    m.dispose();
  });

  it('GQA: kv head j serves query heads j*r .. j*r+r-1 (equals MHA with repeated k/v weights)', () => {
    for (const numKvHeads of [1, 2]) {
      const gqa = new LlamaForCausalLM(tiny({ numKvHeads }), { rng: new Rng(6) });
      const mha = new LlamaForCausalLM(tiny({ numKvHeads: 4 }), { rng: new Rng(7), skipInit: true });
      const r = 4 / numKvHeads;
      const hd = 8;
      const src = hostWeights(gqa);
      const repeated = new Map(src);
      for (const [name, t] of src) {
        if (!/\.(k|v)_proj\.weight$/.test(name)) continue;
        const cols = t.shape[1]!;
        const data = new Float32Array(4 * hd * cols);
        for (let h = 0; h < 4; h++) data.set(t.data.subarray(Math.floor(h / r) * hd * cols, (Math.floor(h / r) + 1) * hd * cols), h * hd * cols);
        repeated.set(name, { dtype: 'float32', shape: [4 * hd, cols], data });
      }
      loadWeights(mha, repeated);
      const ids = randomIds(new Rng(8), 2, 6, 37);
      const a = gqa.forward({ inputIds: ids, attentionMask: [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]] }).logits;
      const b = mha.forward({ inputIds: ids, attentionMask: [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]] }).logits;
      expect(maxAbsDiff(a.dataSync(), b.dataSync()), `r = ${r}`).toBeLessThan(1e-5);
      tf.dispose([a, b]);
      gqa.dispose();
      mha.dispose();
    }
  });

  it('gives finite outputs for an all-padding row and refuses the <image> id', () => {
    const m = new LlamaForCausalLM(tiny(), { rng: new Rng(9) });
    const ids = randomIds(new Rng(10), 2, 5, 37);
    const out = m.forward({ inputIds: ids, attentionMask: [[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], outputHiddenStates: true });
    expect(out.hiddenStates).toHaveLength(4);
    expect(out.logits.dataSync().every(Number.isFinite)).toBe(true);
    tf.dispose([out.logits, ...out.hiddenStates!]);
    expect(() => m.forward({ inputIds: [[1, -200, 3]] })).toThrow(/-200.*splice/);
    expect(() => m.forward({ inputIds: [[1, 37]] })).toThrow(/outside \[0, 37\)/);
    m.dispose();
  });

  it('logitRows computes the lm_head only where asked, with the same loss', () => {
    const m = new LlamaForCausalLM(tiny({ tieWordEmbeddings: true }), { rng: new Rng(11) });
    const ids = randomIds(new Rng(12), 2, 7, 37);
    const labels = ids.map((r, b) => r.map((x, t) => (t < 3 || (b === 1 && t > 5) ? -100 : x)));
    const plan = shiftedTargets(labels);
    const full = m.forward({ inputIds: ids });
    const rows = m.forward({ inputIds: ids, logitRows: plan.rows });
    expect(rows.logits.shape).toEqual([plan.count, 37]);
    const fullData = full.logits.dataSync();
    const rowData = rows.logits.dataSync();
    plan.rows.forEach((r, i) => expect(maxAbsDiff(rowData.subarray(i * 37, i * 37 + 37), fullData.subarray(r * 37, r * 37 + 37))).toBeLessThan(1e-6));
    const a = causalLmLoss(full.logits, labels);
    const b = causalLmLossOnRows(rows.logits, plan);
    expect(a.count).toBe(b.count);
    expect(b.loss.dataSync()[0]).toBeCloseTo(a.loss.dataSync()[0]!, 5);
    tf.dispose([full.logits, rows.logits, a.loss, b.loss]);
    m.dispose();
  });

  it('splits and fuses Phi-3 weights (round trip), drops rotary buffers and a tied duplicate lm_head', () => {
    const config = tiny({ weightFormat: 'phi3' });
    const m = new LlamaForCausalLM(config, { rng: new Rng(13) });
    const ours = hostWeights(m);
    const hf = oursToHf(ours, config);
    expect(hf.get('model.layers.1.self_attn.qkv_proj.weight')!.shape).toEqual([32 + 2 * 16, 32]);
    expect(hf.get('model.layers.0.mlp.gate_up_proj.weight')!.shape).toEqual([96, 32]);
    expect([...hf.keys()].some((k) => /\.(q|k|v|gate|up)_proj\./.test(k))).toBe(false);
    // the fused rows are [q; k; v] and [gate; up]
    const qkv = hf.get('model.layers.0.self_attn.qkv_proj.weight')!.data;
    expect(Array.from(qkv.subarray(32 * 32, 32 * 32 + 16 * 32))).toEqual(Array.from(ours.get('model.layers.0.self_attn.k_proj.weight')!.data));
    const back = hfToOurs(hf, config);
    expect([...back.keys()].sort()).toEqual([...ours.keys()].sort());
    for (const [k, t] of ours) expect(Array.from(back.get(k)!.data), k).toEqual(Array.from(t.data));
    const again = new LlamaForCausalLM(config, { rng: new Rng(14), skipInit: true });
    expect(loadWeights(again, back)).toHaveLength(ours.size);
    again.dispose();
    // prefixes carry through; buffers and tied duplicates are dropped; llama format is the identity
    const prefixed = new Map([...hf].map(([k, t]) => [`llm.${k}`, t]));
    prefixed.set('llm.model.layers.0.self_attn.rotary_emb.inv_freq', { dtype: 'float32', shape: [4], data: new Float32Array(4) });
    const mapped = hfToOurs(prefixed, config);
    expect(mapped.has('llm.model.layers.0.self_attn.q_proj.weight')).toBe(true);
    expect([...mapped.keys()].some((k) => k.includes('rotary'))).toBe(false);
    const tied = hfToOurs(new Map([['lm_head.weight', ours.get('lm_head.weight')!]]), { ...config, tieWordEmbeddings: true });
    expect(tied.size).toBe(0);
    expect(oursToHf(ours, { ...config, weightFormat: 'llama' }).size).toBe(ours.size);
    const partial = new Map(ours);
    partial.delete('model.layers.0.self_attn.v_proj.weight');
    expect(() => oursToHf(partial, config)).toThrow(/missing model\.layers\.0\.self_attn\.v_proj\.weight/);
    const wrong = new Map(hf);
    wrong.set('model.layers.0.mlp.gate_up_proj.weight', { dtype: 'float32', shape: [95, 32], data: new Float32Array(95 * 32) });
    expect(() => hfToOurs(wrong, config)).toThrow(/95 rows, expected 96/);
    m.dispose();
  });

  it('does not leak tensors in forward + backward (and with a cache)', () => {
    const m = new LlamaForCausalLM(tiny(), { rng: new Rng(15) });
    const ids = randomIds(new Rng(16), 2, 6, 37);
    const vars = [...m.namedWeights()].map(([, v]) => v);
    const step = () => {
      const { value, grads } = tf.variableGrads(() => causalLmLoss(m.forward({ inputIds: ids, attentionMask: [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]] }).logits, ids).loss, vars);
      tf.dispose([value, ...Object.values(grads)]);
    };
    step();
    const before = tf.memory().numTensors;
    step();
    const cache = m.createCache();
    m.forward({ inputIds: ids, cache }).logits.dispose();
    m.forward({ inputIds: [[1], [2]], cache }).logits.dispose();
    cache.dispose();
    expect(tf.memory().numTensors).toBe(before);
    m.dispose();
  });

  it('prints the train-step throughput of a 4-layer/256/seq128/batch4/vocab2000 decoder', () => {
    const cfg = tiny({ vocabSize: 2000, hiddenSize: 256, intermediateSize: 688, numLayers: 4, numHeads: 4, numKvHeads: 4, initializerRange: 0.02 });
    const m = new LlamaForCausalLM(cfg, { rng: new Rng(17) });
    const [b, t] = [4, 128];
    const ids = randomIds(new Rng(18), b, t, 2000);
    const vars = [...m.namedWeights()].map(([, v]) => v);
    const step = () => {
      const { value, grads } = tf.variableGrads(() => causalLmLoss(m.forward({ inputIds: ids }).logits, ids).loss, vars);
      const loss = value.dataSync()[0]!;
      tf.dispose([value, ...Object.values(grads)]);
      return loss;
    };
    expect(Number.isFinite(step())).toBe(true); // warm-up
    const times: number[] = [];
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      step();
      times.push(performance.now() - t0);
    }
    const median = times.sort((x, y) => x - y)[1]!;
    console.log(`[llama throughput] ${tf.getBackend()}: train step (fwd+bwd) ${median.toFixed(0)} ms median of 3 = ${((b * t * 1000) / median).toFixed(0)} tokens/s`);
    m.dispose();
  });
});
