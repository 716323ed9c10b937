/**
 * Parameter counts per top-level module, from the config alone (no weight is allocated: a dry run of a
 * 7B config must be able to say it will not fit before trying). test/train-dry-run.test.ts checks every
 * formula against built models.
 */
import type { MGLLaVAConfig, Stage } from '../model/mgllava.js';
import { headDimOf, type LlamaConfig } from '../model/llm/config.js';
import type { ClipVitConfig } from '../model/vision/clip-vit.js';
import type { ConvNextConfig } from '../model/vision/convnext.js';

export interface ModuleCount {
  /** Top-level checkpoint prefix without the dot (visual_encoder, fuse_module, llm, ...). */
  module: string;
  params: number;
  trainable: boolean;
}

const linear = (i: number, o: number, bias = true) => i * o + (bias ? o : 0);
const layerNorm = (d: number) => 2 * d;

function clipVit(c: ClipVitConfig): number {
  const { hiddenSize: d, intermediateSize: i } = c;
  const grid = Math.floor(c.imageSize / c.patchSize);
  const embeddings = d + d * c.numChannels * c.patchSize ** 2 + (grid * grid + 1) * d;
  const layer = 4 * linear(d, d) + 2 * layerNorm(d) + linear(d, i) + linear(i, d);
  return embeddings + 2 * layerNorm(d) + c.numLayers * layer;
}

function convNext(c: ConvNextConfig): number {
  const block = (d: number) => d + (d * 49 + d) + layerNorm(d) + linear(d, 4 * d) + linear(4 * d, d);
  let n = c.dims[0]! * c.inChannels * 16 + c.dims[0]! + layerNorm(c.dims[0]!);
  c.dims.forEach((d, s) => {
    if (s > 0) n += layerNorm(c.dims[s - 1]!) + c.dims[s - 1]! * d * 4 + d;
    n += c.depths[s]! * block(d);
  });
  return n;
}

function llama(c: LlamaConfig): number {
  const h = c.hiddenSize;
  const hd = headDimOf(c);
  const bias = c.attentionBias ?? false;
  const attn = linear(h, c.numHeads * hd, bias) + 2 * linear(h, c.numKvHeads * hd, bias) + linear(c.numHeads * hd, h, bias);
  const layer = attn + 3 * h * c.intermediateSize + 2 * h;
  return c.vocabSize * h + c.numLayers * layer + h + (c.tieWordEmbeddings ? 0 : c.vocabSize * h);
}

function projector(inDim: number, outDim: number, depth: number): number {
  return linear(inDim, outDim) + (depth - 1) * linear(outDim, outDim);
}

/** Counts per top-level module in checkpoint order, with the stage's trainable flag. */
export function countParameters(c: MGLLaVAConfig, stage: Stage): ModuleCount[] {
  const out: ModuleCount[] = [{ module: 'visual_encoder', params: clipVit(c.vision), trainable: false }];
  const aux = c.visionAux;
  if (aux) out.push({ module: 'visual_encoder_aux', params: convNext(aux), trainable: false });
  const d = c.vision.hiddenSize;
  const h = c.llm.hiddenSize;
  let projIn = d;
  if (c.fusion && aux) {
    const hi = aux.dims[aux.dims.length - 1]!;
    const v = c.fusion.variant;
    let n = 0;
    if (v !== 3) n += linear(hi, hi) + linear(hi, d) + (d * 49 + d) + linear(d, d);
    if (v <= 1) n += linear(2 * d, d / 2) + linear(d / 2, 1);
    if (n > 0) out.push({ module: 'fuse_module', params: n, trainable: true }); // variant 3 is a plain concat
    projIn = v === 0 ? d : v === 3 ? d + hi : 2 * d;
  }
  out.push({ module: 'projector', params: projector(projIn, h, c.projectorDepth), trainable: true });
  if (c.objects && aux) {
    const concat = aux.dims.reduce((a, b) => a + b, 0);
    const ml = c.objects.multiLevelDim;
    if (ml) out.push({ module: 'multi_level_linear', params: aux.dims.reduce((n, ch) => n + linear(ch, ml), 0), trainable: true });
    out.push({ module: 'bbox_projector', params: projector(ml ?? concat, h, c.objects.projectorDepth), trainable: true });
  }
  out.push({ module: 'llm', params: llama(c.llm), trainable: stage === 'finetune' });
  return out;
}
