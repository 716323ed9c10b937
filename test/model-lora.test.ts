// LoRA adapters on the LLaMA decoder: init, names (PEFT's, fused Phi-3 modules), merge equivalence, target
// validation, seeded dropout; activation checkpointing: identical gradients and weights, no leaks.
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { Rng } from '../src/util/rng.js';
import type { LlamaConfig } from '../src/model/llm/config.js';
import { LlamaForCausalLM } from '../src/model/llm/llama.js';
import { loraScaling, type LoraConfig } from '../src/model/llm/lora.js';
import { causalLmLoss } from '../src/model/loss.js';
import { AdamW } from '../src/train/adamw.js';

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
  initializerRange: 0.2,
  ...over,
});

const lora = (over: Partial<LoraConfig> = {}): LoraConfig => ({ r: 4, alpha: 8, dropout: 0, targets: 'all-linear', rslora: false, ...over });

function withAdapters(config: LlamaConfig, l: LoraConfig, seed = 1): LlamaForCausalLM {
  const m = new LlamaForCausalLM(config, { rng: new Rng(seed) });
  m.attachLora(l, { rng: new Rng(seed + 100) });
  // B starts at zero; give it values so that the adapters change the output.
  const rng = new Rng(seed + 200);
  for (const [n, v] of m.namedWeights()) {
    if (n.endsWith('lora_B.weight')) v.assign(tf.tensor(Float32Array.from({ length: v.size }, () => rng.normal() * 0.3), v.shape));
  }
  return m;
}

const ids = (b: number, t: number, v: number, seed = 3) => {
  const rng = new Rng(seed);
  return { data: Int32Array.from({ length: b * t }, () => rng.int(v)), shape: [b, t] as [number, number] };
};

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i]! - b[i]!));
  return d;
}

const logitsOf = (m: LlamaForCausalLM, opts: Parameters<LlamaForCausalLM['forward']>[0]) => {
  const { logits } = m.forward(opts);
  const out = logits.dataSync().slice();
  logits.dispose();
  return out;
};

/** The model with every adapted linear's weight replaced by its merged weight, adapters off. */
function mergedForward(m: LlamaForCausalLM, input: ReturnType<typeof ids>): Float32Array {
  const merged = m.mergedWeights();
  const weights = m.weightMap();
  const saved = new Map<string, tf.Tensor>();
  for (const [n, w] of merged) {
    saved.set(n, weights.get(n)!.clone());
    weights.get(n)!.assign(w);
  }
  const out = logitsOf(m, { inputIds: input, adapters: false });
  for (const [n, w] of saved) weights.get(n)!.assign(w);
  tf.dispose([...merged.values(), ...saved.values()]);
  return out as Float32Array;
}

describe('LoRA adapters', () => {
  it('PEFT names and shapes, Kaiming-uniform A, zero B: the adapted model starts equal to its base', () => {
    const c = tiny();
    const m = new LlamaForCausalLM(c, { rng: new Rng(1) });
    const modules = m.attachLora(lora({ targets: ['q_proj', 'v_proj', 'down_proj'] }), { rng: new Rng(2) });
    expect(modules).toEqual(['q_proj', 'v_proj', 'down_proj']);
    const shapes = new Map([...m.namedWeights()].filter(([n]) => LlamaForCausalLM.isLoraWeight(n)).map(([n, v]) => [n, v.shape]));
    expect(shapes).toEqual(
      new Map(
        [0, 1].flatMap((i) => [
          [`model.layers.${i}.self_attn.q_proj.lora_A.weight`, [4, 32]],
          [`model.layers.${i}.self_attn.q_proj.lora_B.weight`, [32, 4]],
          [`model.layers.${i}.self_attn.v_proj.lora_A.weight`, [4, 32]],
          [`model.layers.${i}.self_attn.v_proj.lora_B.weight`, [16, 4]],
          [`model.layers.${i}.mlp.down_proj.lora_A.weight`, [4, 48]],
          [`model.layers.${i}.mlp.down_proj.lora_B.weight`, [32, 4]],
        ]),
      ),
    );
    const w = m.weightMap();
    const a = w.get('model.layers.0.mlp.down_proj.lora_A.weight')!.dataSync();
    const bound = 1 / Math.sqrt(48);
    expect(Math.max(...a.map(Math.abs))).toBeLessThanOrEqual(bound);
    expect(Math.max(...a.map(Math.abs))).toBeGreaterThan(bound / 2);
    expect(w.get('model.layers.1.self_attn.v_proj.lora_B.weight')!.dataSync().every((x) => x === 0)).toBe(true);
    const input = ids(2, 6, c.vocabSize);
    expect(logitsOf(m, { inputIds: input })).toEqual(logitsOf(m, { inputIds: input, adapters: false }));
    m.dispose();
  });

  it('attaching adapters draws nothing from the base weights: same base init with and without LoRA', () => {
    const plain = new LlamaForCausalLM(tiny(), { rng: new Rng(5) });
    const adapted = new LlamaForCausalLM(tiny(), { rng: new Rng(5) });
    adapted.attachLora(lora(), { rng: new Rng(6) });
    const base = adapted.weightMap();
    for (const [n, v] of plain.namedWeights()) expect(base.get(n)!.dataSync(), n).toEqual(v.dataSync());
    plain.dispose();
    adapted.dispose();
  });

  it.each([
    ['LLaMA, all-linear', tiny(), lora()],
    ['LLaMA, rsLoRA on q/v, GQA', tiny({ numKvHeads: 1 }), lora({ r: 8, alpha: 16, rslora: true, targets: ['q_proj', 'v_proj'] })],
    ['Phi-3 fused qkv_proj + gate_up_proj', tiny({ weightFormat: 'phi3' }), lora({ targets: ['qkv_proj', 'gate_up_proj'] })],
  ])('%s: forward with adapters = forward of the merged weights W + scaling B A', (_, c, l) => {
    const m = withAdapters(c, l);
    const input = ids(2, 7, c.vocabSize);
    const adapted = logitsOf(m, { inputIds: input });
    const base = logitsOf(m, { inputIds: input, adapters: false });
    expect(maxAbsDiff(adapted, base)).toBeGreaterThan(1e-2); // the adapters do something
    expect(maxAbsDiff(adapted, mergedForward(m, input))).toBeLessThan(2e-5);
    m.dispose();
  });

  it('Phi-3: one A and one B per fused module, B rows in q, k, v order; merged q = W_q + s B[0:q] A', () => {
    const c = tiny({ weightFormat: 'phi3' });
    const m = withAdapters(c, lora({ r: 3, alpha: 6 }));
    const w = m.weightMap();
    const names = [...w.keys()].filter((n) => LlamaForCausalLM.isLoraWeight(n) && n.startsWith('model.layers.0.'));
    expect(names.sort()).toEqual([
      'model.layers.0.mlp.down_proj.lora_A.weight',
      'model.layers.0.mlp.down_proj.lora_B.weight',
      'model.layers.0.mlp.gate_up_proj.lora_A.weight',
      'model.layers.0.mlp.gate_up_proj.lora_B.weight',
      'model.layers.0.self_attn.o_proj.lora_A.weight',
      'model.layers.0.self_attn.o_proj.lora_B.weight',
      'model.layers.0.self_attn.qkv_proj.lora_A.weight',
      'model.layers.0.self_attn.qkv_proj.lora_B.weight',
    ]);
    const A = w.get('model.layers.0.self_attn.qkv_proj.lora_A.weight')!;
    const B = w.get('model.layers.0.self_attn.qkv_proj.lora_B.weight')!;
    expect(A.shape).toEqual([3, 32]);
    expect(B.shape).toEqual([32 + 16 + 16, 3]); // q (4 heads x 8) + k + v (2 kv heads x 8)
    const merged = m.mergedWeights();
    const s = loraScaling({ r: 3, alpha: 6, rslora: false });
    // k rows of the fused B: rows 32..47
    const a = A.dataSync();
    const b = B.dataSync();
    const wk = w.get('model.layers.0.self_attn.k_proj.weight')!.dataSync();
    const expected = new Float32Array(16 * 32);
    for (let o = 0; o < 16; o++) {
      for (let i = 0; i < 32; i++) {
        let acc = 0;
        for (let k = 0; k < 3; k++) acc += b[(32 + o) * 3 + k]! * a[k * 32 + i]!;
        expected[o * 32 + i] = wk[o * 32 + i]! + s * acc;
      }
    }
    expect(maxAbsDiff(merged.get('model.layers.0.self_attn.k_proj.weight')!.dataSync(), expected)).toBeLessThan(1e-5);
    expect([...merged.keys()].filter((n) => n.startsWith('model.layers.0.')).sort()).toEqual(
      ['mlp.down_proj', 'mlp.gate_proj', 'mlp.up_proj', 'self_attn.k_proj', 'self_attn.o_proj', 'self_attn.q_proj', 'self_attn.v_proj'].map((n) => `model.layers.0.${n}.weight`),
    );
    tf.dispose([...merged.values()]);
    m.dispose();
  });

  it('targets: never lm_head; names the layout does not have are refused with the right module names', () => {
    const m = withAdapters(tiny(), lora());
    expect([...m.weightMap().keys()].some((n) => n.startsWith('lm_head.') && LlamaForCausalLM.isLoraWeight(n))).toBe(false);
    m.dispose();
    const phi3 = new LlamaForCausalLM(tiny({ weightFormat: 'phi3' }), { rng: new Rng(1) });
    expect(() => phi3.attachLora(lora({ targets: ['q_proj'] }), { rng: new Rng(1) })).toThrow(/'q_proj' is not a linear of this Phi-3 model.*qkv_proj/);
    phi3.dispose();
    const llama = new LlamaForCausalLM(tiny(), { rng: new Rng(1) });
    expect(() => llama.attachLora(lora({ targets: ['qkv_proj'] }), { rng: new Rng(1) })).toThrow(/Phi-3 fused module; this LLaMA model has separate q_proj, k_proj, v_proj/);
    expect(() => llama.attachLora(lora({ targets: ['lm_head' as never] }), { rng: new Rng(1) })).toThrow(/'lm_head' is not a linear/);
    expect(() => llama.attachLora(lora({ r: 0, dropout: 1 }), { rng: new Rng(1) })).toThrow(/r must be a positive integer.*dropout must be in \[0, 1\)/);
    llama.dispose();
  });

  it('dropout: seeded per pass (same seed, same output; another seed, another), off without a seed', () => {
    const c = tiny();
    const m = withAdapters(c, lora({ dropout: 0.3 }));
    const input = ids(2, 6, c.vocabSize);
    const a = logitsOf(m, { inputIds: input, dropoutSeed: 7 });
    expect(logitsOf(m, { inputIds: input, dropoutSeed: 7 })).toEqual(a);
    expect(maxAbsDiff(logitsOf(m, { inputIds: input, dropoutSeed: 8 }), a)).toBeGreaterThan(1e-3);
    const evalPass = logitsOf(m, { inputIds: input });
    expect(maxAbsDiff(evalPass, a)).toBeGreaterThan(1e-3);
    expect(maxAbsDiff(evalPass, mergedForward(m, input))).toBeLessThan(2e-5);
    expect(logitsOf(m, { inputIds: input, adapters: false, dropoutSeed: 7 })).toEqual(logitsOf(m, { inputIds: input, adapters: false }));
    m.dispose();
  });
});

describe('activation checkpointing (decoder layers)', () => {
  const lossOf = (m: LlamaForCausalLM, input: ReturnType<typeof ids>, embeds: tf.Variable, ck: boolean, seed: number | null) => () => {
    const { logits } = m.forward({ inputsEmbeds: embeds as unknown as tf.Tensor3D, checkpointLayers: ck, dropoutSeed: seed, logitRows: Int32Array.from([1, 4, 8, 9]) });
    return causalLmLoss(logits.reshape([1, 4, -1]), { data: Int32Array.from([input.data[0]!, input.data[1]!, input.data[2]!, input.data[3]!]), shape: [1, 4] }).loss;
  };

  it.each([
    ['full finetune', false],
    ['LoRA with dropout (base frozen)', true],
  ])('%s: gradients bit-identical with and without, no tensor left behind', (_, useLora) => {
    const c = tiny({ numLayers: 3 });
    const m = useLora ? withAdapters(c, lora({ dropout: 0.2 })) : new LlamaForCausalLM(c, { rng: new Rng(1) });
    // (the token embeddings are not used on the inputs_embeds path)
    for (const [n, v] of m.namedWeights()) v.trainable = useLora ? LlamaForCausalLM.isLoraWeight(n) : !n.startsWith('model.embed_tokens.');
    const input = ids(2, 6, c.vocabSize);
    const embeds = tf.variable(tf.tidy(() => tf.randomNormal([2, 6, 32], 0, 1, 'float32', 4)));
    const vars = [...[...m.namedWeights()].filter(([, v]) => v.trainable).map(([, v]) => v), embeds];
    const run = (ck: boolean) => {
      const { value, grads } = tf.variableGrads(lossOf(m, input, embeds, ck, useLora ? 11 : null), vars);
      const out = vars.map((v) => grads[v.name]!.dataSync().slice());
      const loss = value.dataSync()[0];
      tf.dispose([value, ...Object.values(grads)]);
      return { loss, out };
    };
    const plain = run(false);
    const before = tf.memory().numTensors;
    const ck = run(true);
    run(true);
    expect(tf.memory().numTensors).toBe(before);
    expect(ck.loss).toBe(plain.loss);
    expect(ck.out.length).toBe(vars.length);
    ck.out.forEach((g, i) => expect(maxAbsDiff(g, plain.out[i]!), vars[i]!.name).toBe(0));
    embeds.dispose();
    m.dispose();
  });

  it('same weights after AdamW steps with and without it (to 1e-6); generation with a cache is unaffected', () => {
    const c = tiny({ numLayers: 3 });
    const final = (ck: boolean) => {
      const m = withAdapters(c, lora({ dropout: 0.1 }), 9);
      for (const [n, v] of m.namedWeights()) v.trainable = LlamaForCausalLM.isLoraWeight(n);
      const trainable = new Map([...m.namedWeights()].filter(([, v]) => v.trainable));
      const opt = new AdamW(trainable);
      const input = ids(2, 6, c.vocabSize, 12);
      const counts: number[] = [];
      for (let step = 0; step < 4; step++) {
        const { value, grads } = tf.variableGrads(() => causalLmLoss(m.forward({ inputIds: input, checkpointLayers: ck, dropoutSeed: step }).logits, input).loss, [...trainable.values()]);
        const named = new Map([...trainable].map(([n, v]) => [n, grads[v.name]!]));
        opt.apply(named, 1e-2);
        tf.dispose([value, ...Object.values(grads)]);
        counts.push(tf.memory().numTensors);
      }
      expect(new Set(counts.slice(1)).size).toBe(1); // flat from the second step on
      const cache = m.createCache();
      m.activationCheckpointing = true;
      const gen = m.forward({ inputIds: ids(1, 3, c.vocabSize), cache }).logits.dataSync().slice();
      cache.dispose();
      const weights = new Map([...trainable].map(([n, v]) => [n, v.dataSync().slice()]));
      opt.dispose();
      m.dispose();
      return { weights, gen };
    };
    const a = final(false);
    const b = final(true);
    for (const [n, w] of a.weights) expect(maxAbsDiff(w, b.weights.get(n)!), n).toBeLessThanOrEqual(1e-6);
    expect(b.gen).toEqual(a.gen);
  });
});
