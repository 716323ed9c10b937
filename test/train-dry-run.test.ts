import { describe, expect, it } from 'vitest';
import { MGLLaVA, type MGLLaVAConfig } from '../src/model/mgllava.js';
import { countParameters } from '../src/train/param-count.js';
import { estimateMemory, formatBytes } from '../src/train/dry-run.js';
import { Rng } from '../src/util/rng.js';

function config(over: { fusion?: 0 | 1 | 2 | 3 | null; objects?: boolean; multiLevel?: number | null; aux?: boolean; llm?: Partial<MGLLaVAConfig['llm']> } = {}): MGLLaVAConfig {
  const aux = over.aux ?? true;
  return {
    vision: { imageSize: 28, patchSize: 7, hiddenSize: 16, intermediateSize: 32, numLayers: 2, numHeads: 2, layerNormEps: 1e-5, numChannels: 3, selectLayer: -2, dropCls: true },
    visionAux: aux ? { dims: [4, 8, 8, 12], depths: [1, 2, 1, 1], layerNormEps: 1e-6, imageSize: 128, inChannels: 3 } : null,
    fusion: aux && over.fusion !== null ? { variant: over.fusion ?? 0, zeroInit: true } : null,
    objects: aux && over.objects !== false ? { outputSize: 7, samplingRatio: -1, projectorDepth: 2, multiLevelDim: over.multiLevel ?? null } : null,
    projectorDepth: 2,
    llm: { vocabSize: 30, hiddenSize: 16, intermediateSize: 24, numLayers: 2, numHeads: 4, numKvHeads: 2, rmsNormEps: 1e-6, ropeTheta: 10000, tieWordEmbeddings: false, attentionBias: false, ...over.llm },
  };
}

function builtCounts(c: MGLLaVAConfig): Map<string, number> {
  const m = new MGLLaVA(c, { rng: new Rng(0), skipInit: true });
  const out = new Map<string, number>();
  for (const [n, v] of m.weightMap()) out.set(n.split('.')[0]!, (out.get(n.split('.')[0]!) ?? 0) + v.size);
  m.dispose();
  return out;
}

describe('parameter counts (dry run)', () => {
  const cases: [string, MGLLaVAConfig][] = [
    ['fusion 0 + objects', config()],
    ['fusion 1', config({ fusion: 1 })],
    ['fusion 2', config({ fusion: 2 })],
    ['fusion 3', config({ fusion: 3 })],
    ['multi-level objects', config({ multiLevel: 10 })],
    ['no objects', config({ objects: false })],
    ['low-res only', config({ aux: false })],
    ['tied, biased, head_dim', config({ llm: { tieWordEmbeddings: true, attentionBias: true, headDim: 6 } })],
  ];
  it.each(cases)('%s: the formulas equal the built model', (_, c) => {
    const built = builtCounts(c);
    const counted = countParameters(c, 'finetune');
    expect(new Map(counted.map((m) => [m.module, m.params]))).toEqual(built);
  });

  it('marks the stage trainable sets', () => {
    const pre = countParameters(config(), 'pretrain');
    expect(pre.filter((m) => m.trainable).map((m) => m.module)).toEqual(['fuse_module', 'projector', 'bbox_projector']);
    const ft = countParameters(config(), 'finetune');
    expect(ft.filter((m) => m.trainable).map((m) => m.module)).toEqual(['fuse_module', 'projector', 'bbox_projector', 'llm']);
  });

  it('memory estimate: parts add up, grow with the batch, and a 7B finetune is far above the wasm heap', () => {
    const c = config();
    const shape = { batch: 2, gradAccum: 1, maxText: 40, maxBoxes: 5, maxSupervised: 20 };
    const pre = estimateMemory(c, countParameters(c, 'pretrain'), shape);
    expect(pre.total).toBe(pre.weights + pre.gradients + pre.optimizer + pre.activations);
    expect(pre.seqLen).toBe(39 + 16 + 5);
    const ft = estimateMemory(c, countParameters(c, 'finetune'), shape);
    expect(ft.optimizer).toBeGreaterThan(pre.optimizer);
    expect(estimateMemory(c, countParameters(c, 'pretrain'), { ...shape, batch: 8 }).activations).toBeGreaterThan(pre.activations);
    const big: MGLLaVAConfig = {
      ...c,
      vision: { ...c.vision, imageSize: 336, patchSize: 14, hiddenSize: 1024, intermediateSize: 4096, numLayers: 24, numHeads: 16 },
      visionAux: { dims: [192, 384, 768, 1536], depths: [3, 3, 27, 3], layerNormEps: 1e-6, imageSize: 768, inChannels: 3 },
      llm: { ...c.llm, vocabSize: 32000, hiddenSize: 4096, intermediateSize: 11008, numLayers: 32, numHeads: 32, numKvHeads: 32 },
    };
    const counts = countParameters(big, 'finetune');
    const llm = counts.find((m) => m.module === 'llm')!.params;
    expect(llm).toBe(6_738_415_616); // LLaMA-2-7B / Vicuna-7B
    const vit = counts.find((m) => m.module === 'visual_encoder')!.params;
    expect(vit).toBe(303_507_456); // CLIP ViT-L/14-336 vision tower (HF count incl. post_layernorm)
    const mem = estimateMemory(big, counts, { batch: 16, gradAccum: 1, maxText: 1472, maxBoxes: 100, maxSupervised: 800 });
    expect(mem.total).toBeGreaterThan(100 * 1024 ** 3);
    expect(formatBytes(mem.weights)).toMatch(/GiB$/);
  });
});
