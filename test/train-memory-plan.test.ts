// The memory planner (--dry-run): LoRA parameter counts against built models, plans from the config alone,
// and the estimate against the peak the wasm memory guard measures for real training steps (within 20 %).
import { describe, expect, it } from 'vitest';
import { MGLLaVA, type MGLLaVAConfig } from '../src/model/mgllava.js';
import type { LoraConfig } from '../src/model/llm/lora.js';
import { LlamaForCausalLM } from '../src/model/llm/llama.js';
import { countParameters } from '../src/train/param-count.js';
import { estimateMemory, fittingGpus, planJson, planRun, planShape } from '../src/train/dry-run.js';
import { trainStep } from '../src/train/step.js';
import { AdamW } from '../src/train/adamw.js';
import { peakMemory, resetPeakMemory } from '../src/backend/peak-memory.js';
import { wasmBytesInUse } from '../src/backend/memory.js';
import { Rng } from '../src/util/rng.js';
import type { Batch } from '../src/data/collate.js';
import { experimentSchema } from '../src/config/schema.js';

const GiB = 1024 ** 3;

function config(llm: Partial<MGLLaVAConfig['llm']> = {}, lora: LoraConfig | null = null): MGLLaVAConfig {
  return {
    vision: { imageSize: 28, patchSize: 7, hiddenSize: 16, intermediateSize: 32, numLayers: 2, numHeads: 2, layerNormEps: 1e-5, numChannels: 3, selectLayer: -2, dropCls: true },
    visionAux: { dims: [4, 8, 8, 12], depths: [1, 1, 1, 1], layerNormEps: 1e-6, imageSize: 128, inChannels: 3 },
    fusion: { variant: 0, zeroInit: true },
    objects: { outputSize: 7, samplingRatio: -1, projectorDepth: 2, multiLevelDim: null },
    projectorDepth: 2,
    llm: { vocabSize: 50, hiddenSize: 32, intermediateSize: 64, numLayers: 2, numHeads: 4, numKvHeads: 2, rmsNormEps: 1e-6, ropeTheta: 10000, tieWordEmbeddings: false, ...llm },
    lora,
  };
}

const LORA: LoraConfig = { r: 4, alpha: 8, dropout: 0, targets: 'all-linear', rslora: false };

/** 7B-class shapes (CLIP ViT-L/14-336, ConvNeXt-L at 768, Vicuna-7B). */
function vicuna7b(lora: LoraConfig | null): MGLLaVAConfig {
  const c = config({ vocabSize: 32000, hiddenSize: 4096, intermediateSize: 11008, numLayers: 32, numHeads: 32, numKvHeads: 32 }, lora);
  return {
    ...c,
    vision: { ...c.vision, imageSize: 336, patchSize: 14, hiddenSize: 1024, intermediateSize: 4096, numLayers: 24, numHeads: 16 },
    visionAux: { dims: [192, 384, 768, 1536], depths: [3, 3, 27, 3], layerNormEps: 1e-6, imageSize: 768, inChannels: 3 },
    objects: { ...c.objects!, outputSize: 56 },
  };
}

describe('parameter counts with LoRA', () => {
  it.each([
    ['LLaMA all-linear', config({}, LORA)],
    ['LLaMA q/v, GQA, r 8', config({ numKvHeads: 1 }, { ...LORA, r: 8, targets: ['q_proj', 'v_proj'] })],
    ['Phi-3 fused modules', config({ weightFormat: 'phi3' }, { ...LORA, targets: ['qkv_proj', 'gate_up_proj', 'down_proj'] })],
  ])('%s: llm + llm.lora equal the built model; finetune trains the adapters, not the LLM', (_, c) => {
    const m = new MGLLaVA(c, { rng: new Rng(0), skipInit: true });
    const adapters = [...m.weightMap()].filter(([n]) => LlamaForCausalLM.isLoraWeight(n)).reduce((s, [, v]) => s + v.size, 0);
    const base = [...m.weightMap()].filter(([n]) => n.startsWith('llm.') && !LlamaForCausalLM.isLoraWeight(n)).reduce((s, [, v]) => s + v.size, 0);
    const counts = countParameters(c, 'finetune');
    expect(counts.find((x) => x.module === 'llm.lora')).toEqual({ module: 'llm.lora', params: adapters, trainable: true });
    expect(counts.find((x) => x.module === 'llm')).toEqual({ module: 'llm', params: base, trainable: false });
    const trainable = [...m.trainableWeights('finetune').values()].reduce((s, v) => s + v.size, 0);
    expect(counts.filter((x) => x.trainable).reduce((s, x) => s + x.params, 0)).toBe(trainable);
    expect(countParameters(c, 'pretrain').find((x) => x.module === 'llm.lora')!.trainable).toBe(false);
    // The stage's set is also what the variables say: a checkpointed layer computes gradients for those only.
    const set = m.trainableWeights('finetune');
    for (const [n, v] of m.weightMap()) expect(v.trainable, n).toBe(set.has(n));
    expect(m.weightMap().get('llm.model.layers.0.mlp.down_proj.weight')!.trainable).toBe(false);
    m.trainableWeights('pretrain');
    expect([...m.weightMap()].filter(([n]) => n.startsWith('llm.')).every(([, v]) => !v.trainable)).toBe(true);
    m.dispose();
  });
});

describe('parameter counts with modules_to_save', () => {
  it.each([
    ['lm_head', config({}, { ...LORA, modulesToSave: ['lm_head'] })],
    ['lm_head + embed_tokens', config({}, { ...LORA, modulesToSave: ['lm_head', 'embed_tokens'] })],
    ['embed_tokens, tied', config({ tieWordEmbeddings: true }, { ...LORA, modulesToSave: ['embed_tokens'] })],
  ])('%s: llm.modules_to_save counts the saved weights, trained by the finetune with the adapters', (_, c) => {
    const m = new MGLLaVA(c, { rng: new Rng(0), skipInit: true });
    const saved = [...m.weightMap()].filter(([n]) => n.startsWith('llm.') && !LlamaForCausalLM.isLoraWeight(n) && m.llm.isAdapterWeight(n, 'llm.'));
    const counts = countParameters(c, 'finetune');
    expect(counts.find((x) => x.module === 'llm.modules_to_save')).toEqual({ module: 'llm.modules_to_save', params: saved.reduce((s, [, v]) => s + v.size, 0), trainable: true });
    const base = [...m.weightMap()].filter(([n]) => n.startsWith('llm.') && !m.llm.isAdapterWeight(n, 'llm.')).reduce((s, [, v]) => s + v.size, 0);
    expect(counts.find((x) => x.module === 'llm')!.params).toBe(base);
    const trainable = [...m.trainableWeights('finetune').values()].reduce((s, v) => s + v.size, 0);
    expect(counts.filter((x) => x.trainable).reduce((s, x) => s + x.params, 0)).toBe(trainable);
    m.dispose();
  });
});

describe('memory plans', () => {
  it('a Vicuna-7B LoRA finetune with checkpointing at 1 x 2048 positions stays below 80 GiB; without LoRA and checkpointing it does not', () => {
    const shape = { batch: 1, gradAccum: 1, maxText: 1373, maxBoxes: 100, maxSupervised: 1372 }; // 1372 + 576 + 100 = 2048
    const lora = { r: 128, alpha: 256, dropout: 0.05, targets: 'all-linear' as const, rslora: false };
    const plan = (c: MGLLaVAConfig, ck: boolean) => estimateMemory(c, countParameters(c, 'finetune'), { ...shape, checkpointing: ck });
    const loraCk = plan(vicuna7b(lora), true);
    expect(loraCk.seqLen).toBe(2048);
    expect(loraCk.total).toBeLessThan(80 * GiB);
    expect(loraCk.weights).toBeGreaterThan(26 * GiB); // float32 base weights
    const loraPlain = plan(vicuna7b(lora), false);
    expect(loraPlain.activations).toBeGreaterThan(10 * loraCk.activations); // T^2 attention per layer, 32 layers
    const full = plan(vicuna7b(null), true);
    expect(full.gradients + full.optimizer).toBeGreaterThan(70 * GiB);
    expect(full.total).toBeGreaterThan(100 * GiB);
    expect(fittingGpus(loraCk.total)).toContain(80);
    expect(fittingGpus(full.total)).toEqual([141].filter((g) => full.total <= g * 1e9));
  });

  it('plans from the config when the data is not there, and prints the --json line', () => {
    const exp = experimentSchema.parse({
      name: 'x',
      stage: 'finetune',
      model: { vision: { image_size: 28, patch_size: 7, hidden_size: 16, intermediate_size: 32, num_layers: 2, num_heads: 2 }, llm: { vocab_size: 50, hidden_size: 32, intermediate_size: 64, num_layers: 2, num_heads: 4, lora: { r: 4 } } },
      data: { records: '/nonexistent/records.json', tokenizer: { type: 'byte' }, max_length: 100 },
      train: { batch_size: 2, activation_checkpointing: true },
    });
    const shape = planShape(exp, null);
    expect(shape).toMatchObject({ batch: 2, maxText: 100, maxBoxes: 0, maxSupervised: 99, checkpointing: true, from: 'config' });
    const c = config({}, LORA);
    const p = planRun({ ...c, objects: null, fusion: null, visionAux: null }, 'finetune', shape, countParameters({ ...c, objects: null, fusion: null, visionAux: null }, 'finetune'));
    const line = planJson(p);
    expect(line).not.toContain('\n');
    const j = JSON.parse(line);
    expect(Object.keys(j)).toEqual(expect.arrayContaining(['params', 'memoryGiB', 'batch', 'positions', 'checkpointing', 'lora']));
    expect(Object.keys(j.params)).toEqual(['total', 'trainable', 'frozen']);
    expect(Object.keys(j.memoryGiB)).toEqual(['weights', 'grads', 'optimizer', 'activations', 'total']);
    expect(j.params.total).toBe(j.params.trainable + j.params.frozen);
    expect(j).toMatchObject({ batch: 2, positions: 99 + 16, checkpointing: true, lora: { r: 4, alpha: 8 } });
  });
});

/** A synthetic micro-batch: the image token at position 1, the last `sup` tokens supervised, K boxes per image. */
function batch(c: MGLLaVAConfig, b: number, text: number, k: number, sup: number): Batch {
  const rng = new Rng(5);
  const inputIds = new Int32Array(b * text);
  const labels = new Int32Array(b * text).fill(-100);
  for (let i = 0; i < b * text; i++) {
    const t = i % text;
    inputIds[i] = t === 1 ? -200 : rng.int(c.llm.vocabSize);
    if (t >= text - sup) labels[i] = inputIds[i]!;
  }
  const aux = c.visionAux!.imageSize;
  const low = c.vision.imageSize;
  const boxes = Array.from({ length: b }, () => Float32Array.from({ length: k * 4 }, (_, i) => (i % 4 < 2 ? 2 + (i % 3) : aux - 3 - (i % 5))));
  return {
    indices: [...Array(b).keys()],
    ids: [...Array(b).keys()].map(String),
    size: b,
    seqLen: text,
    inputIds,
    labels,
    attentionMask: new Uint8Array(b * text).fill(1),
    lengths: new Int32Array(b).fill(text),
    hasImage: Array(b).fill(true),
    auxSize: aux,
    lowresSize: low,
    aux: Float32Array.from({ length: b * aux * aux * 3 }, () => rng.normal()),
    lowres: Float32Array.from({ length: b * low * low * 3 }, () => rng.normal()),
    boxes,
    boxLabels: boxes.map(() => Array(k).fill('x')),
  };
}

describe('estimate vs measured (wasm memory guard)', () => {
  const llm = { vocabSize: 500, hiddenSize: 128, intermediateSize: 320, numLayers: 3, numHeads: 4, numKvHeads: 2 };
  it.each([
    ['pretrain', 'pretrain', null, false],
    ['full finetune', 'finetune', null, false],
    ['full finetune, checkpointing', 'finetune', null, true],
    ['LoRA finetune', 'finetune', LORA, false],
    ['LoRA finetune, checkpointing', 'finetune', LORA, true],
  ] as const)('%s: the estimate is within 20 % of the measured peak of two training steps', async (_, stage, lora, ck) => {
    if (wasmBytesInUse() === null) return; // the guard measures on wasm only
    const c = config(llm, lora);
    const shape = { batch: 2, gradAccum: 1, maxText: 60, maxBoxes: 3, maxSupervised: 12, checkpointing: ck };
    const base = wasmBytesInUse()!;
    resetPeakMemory();
    const model = new MGLLaVA(c, { rng: new Rng(1) });
    model.setActivationCheckpointing(ck);
    const trainable = model.trainableWeights(stage); // (also marks the variables: what checkpointing differentiates)
    const optimizer = new AdamW(trainable);
    const batches = [batch(c, 2, 60, 3, 12)];
    for (let i = 0; i < 2; i++) await trainStep({ model, trainable, optimizer, batches, lr: 1e-4, maxNorm: 1 });
    const measured = peakMemory().bytes - base;
    optimizer.dispose();
    model.dispose();
    const est = estimateMemory(c, countParameters(c, stage), shape).total;
    expect(est / measured).toBeGreaterThan(0.8);
    expect(est / measured).toBeLessThan(1.2);
  });
});
