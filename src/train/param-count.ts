/**
 * Parameter counts per top-level module, from the config alone (no weight is allocated: a dry run of a
 * 7B config must be able to say it will not fit before trying, and works from config.json files without
 * the weight files). test/train-dry-run.test.ts checks every formula against built models.
 *
 * With LoRA the LLM is two entries: `llm` (the base weights, frozen) and `llm.lora` (the adapters, under
 * `llm.model.layers.N.*.lora_{A,B}.weight`; trained by the finetune stage), and a third, `llm.modules_to_save`,
 * when the adapter trains lm_head / embed_tokens in full.
 */
import type { MGLLaVAConfig, Stage } from '../model/mgllava.js';
import { headDimOf, type LlamaConfig } from '../model/llm/config.js';
import { loraMembers, resolveLoraTargets, type LoraConfig } from '../model/llm/lora.js';
import type { ClipVitConfig } from '../model/vision/clip-vit.js';
import type { ConvNextConfig } from '../model/vision/convnext.js';

export interface ModuleCount {
  /** Top-level checkpoint prefix without the dot (visual_encoder, fuse_module, llm, ...); `llm.lora` for the adapters. */
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

/** in / out widths of the decoder's linears, by our (unfused) name. */
export function llamaLinearShapes(c: LlamaConfig): Record<string, { in: number; out: number }> {
  const h = c.hiddenSize;
  const hd = headDimOf(c);
  const q = c.numHeads * hd;
  const kv = c.numKvHeads * hd;
  const i = c.intermediateSize;
  return {
    q_proj: { in: h, out: q },
    k_proj: { in: h, out: kv },
    v_proj: { in: h, out: kv },
    o_proj: { in: q, out: h },
    gate_proj: { in: h, out: i },
    up_proj: { in: h, out: i },
    down_proj: { in: i, out: h },
  };
}

/** One decoder layer's adapters: per adapted module its input width, summed output width (fused: the members'). */
export function loraModules(c: LlamaConfig, lora: LoraConfig): { module: string; in: number; out: number }[] {
  const shapes = llamaLinearShapes(c);
  return resolveLoraTargets(lora, c.weightFormat ?? 'llama').map((module) => {
    const members = loraMembers(module).map((m) => shapes[m]!);
    return { module, in: members[0]!.in, out: members.reduce((n, m) => n + m.out, 0) };
  });
}

/** Adapter parameters of the whole LLM: r * (in + out) per adapted module and layer. */
export function loraParams(c: LlamaConfig, lora: LoraConfig): number {
  return c.numLayers * loraModules(c, lora).reduce((n, m) => n + lora.r * (m.in + m.out), 0);
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
  const lora = c.lora ?? null;
  // lm_head and embed_tokens are both [vocab, hidden]; a LoRA run trains those it saves in full.
  const saved = (lora?.modulesToSave?.length ?? 0) * c.llm.vocabSize * c.llm.hiddenSize;
  out.push({ module: 'llm', params: llama(c.llm) - saved, trainable: stage === 'finetune' && !lora });
  if (lora) out.push({ module: 'llm.lora', params: loraParams(c.llm, lora), trainable: stage === 'finetune' });
  if (saved > 0) out.push({ module: 'llm.modules_to_save', params: saved, trainable: stage === 'finetune' });
  return out;
}
