/**
 * Rename tables between pretrained checkpoint layouts and MG-LLaVA's checkpoint names.
 *
 *   CLIP (HF CLIPVisionModel / CLIPModel)   vision_model.*      <-> visual_encoder.vision_model.*
 *   ConvNeXt, open_clip checkpoint           visual.trunk.*      <-> visual_encoder_aux.*
 *   ConvNeXt, timm checkpoint                (no prefix)         <-> visual_encoder_aux.*
 *   LLaMA family (HF LlamaForCausalLM, Phi3) model.*, lm_head.* <-> llm.*   (src/model/llm/weight-map.ts
 *                                                                             splits / fuses Phi-3 tensors)
 *
 * Layouts are already PyTorch's on both sides (see src/nn/module.ts), so apart from the Phi-3 fusion every
 * mapping is a rename. Tensors a checkpoint carries but MG-LLaVA never uses are skipped *by name*, each with
 * a reason (the lists below); any other name the table does not know is unexpected and fails the import.
 */
import type { HostTensor } from './safetensors.js';
import { hfTensorToOurs, oursToHf } from '../model/llm/weight-map.js';
import type { LlamaConfig } from '../model/llm/config.js';

export type PretrainedKind = 'clip' | 'convnext' | 'llm';

/** Checkpoint-name prefix of each part inside MG-LLaVA. */
export const PART_PREFIX: Record<PretrainedKind, string> = {
  clip: 'visual_encoder.',
  convnext: 'visual_encoder_aux.',
  llm: 'llm.',
};

export interface NamedShape {
  name: string;
  shape: number[];
}

/** What a source tensor becomes, decided from its name and shape alone (no data read). */
export type SourcePlan =
  | { action: 'map'; targets: NamedShape[] }
  | { action: 'ignore'; reason: string }
  | { action: 'unknown' };

/** One checkpoint family's table, source -> ours. */
export interface PretrainedWeightMap {
  readonly kind: PretrainedKind;
  /** Human name for messages ('CLIP ViT (HF)'). */
  readonly label: string;
  plan(name: string, shape: number[]): SourcePlan;
  /** The data of a tensor `plan` maps, under our names (same order as the plan's targets). */
  convert(name: string, t: HostTensor): [string, HostTensor][];
}

/** A rule skipping tensors MG-LLaVA does not use: exact name or name prefix. */
interface IgnoreRule {
  match: string;
  prefix: boolean;
  reason: string;
}

function ignoredBy(rules: readonly IgnoreRule[], name: string): string | null {
  const r = rules.find((x) => (x.prefix ? name.startsWith(x.match) : name === x.match));
  return r ? r.reason : null;
}

/**
 * CLIP checkpoint names skipped on import. A full `CLIPModel` holds the text tower and both contrastive
 * projections; LLaVA only runs the vision transformer and takes a hidden state before any projection.
 */
export const CLIP_IGNORED: readonly IgnoreRule[] = [
  { match: 'text_model.', prefix: true, reason: 'CLIP text tower (unused)' },
  { match: 'text_projection.', prefix: true, reason: 'CLIP text projection (unused)' },
  { match: 'visual_projection.', prefix: true, reason: 'CLIP image projection (LLaVA takes a hidden state before it)' },
  { match: 'logit_scale', prefix: false, reason: 'CLIP contrastive temperature (unused)' },
  { match: 'vision_model.embeddings.position_ids', prefix: false, reason: 'index buffer saved by older transformers (recomputed)' },
];

/**
 * open_clip ConvNeXt checkpoint names skipped on import. MG-LLaVA takes the trunk's stage maps: the timm
 * classifier head inside the trunk, open_clip's projection head and everything of the text side are unused.
 * The text side is `text.*` for CustomTextCLIP and top-level `token_embedding`/`transformer`/... for CLIP.
 */
export const OPEN_CLIP_IGNORED: readonly IgnoreRule[] = [
  { match: 'visual.trunk.head.', prefix: true, reason: 'timm classifier head of the trunk (MG-LLaVA uses the stage maps)' },
  { match: 'visual.head.', prefix: true, reason: 'open_clip image projection head (unused)' },
  { match: 'text.', prefix: true, reason: 'open_clip text tower (unused)' },
  { match: 'token_embedding.', prefix: true, reason: 'open_clip text tower (unused)' },
  { match: 'positional_embedding', prefix: false, reason: 'open_clip text tower (unused)' },
  { match: 'transformer.', prefix: true, reason: 'open_clip text tower (unused)' },
  { match: 'ln_final.', prefix: true, reason: 'open_clip text tower (unused)' },
  { match: 'text_projection', prefix: false, reason: 'open_clip text projection (unused)' },
  { match: 'attn_mask', prefix: false, reason: 'open_clip text attention mask buffer (unused)' },
  { match: 'logit_scale', prefix: false, reason: 'contrastive temperature (unused)' },
  { match: 'logit_bias', prefix: false, reason: 'contrastive bias (unused)' },
];

/** timm ConvNeXt checkpoint names skipped on import (the classifier head). */
export const TIMM_IGNORED: readonly IgnoreRule[] = [
  { match: 'head.', prefix: true, reason: 'timm classifier head (MG-LLaVA uses the stage maps)' },
];

/** A map whose mapped tensors are pure renames `from + rest` -> `to + rest`. */
function renameMap(kind: PretrainedKind, label: string, from: string, to: string, ignored: readonly IgnoreRule[]): PretrainedWeightMap {
  const rename = (name: string): string | null => (name.startsWith(from) ? to + name.slice(from.length) : null);
  return {
    kind,
    label,
    plan(name, shape) {
      const reason = ignoredBy(ignored, name);
      if (reason) return { action: 'ignore', reason };
      const ours = rename(name);
      return ours ? { action: 'map', targets: [{ name: ours, shape: [...shape] }] } : { action: 'unknown' };
    },
    convert(name, t) {
      const ours = rename(name);
      if (!ours || ignoredBy(ignored, name)) throw new Error(`${label} weight map: '${name}' is not a mapped tensor`);
      return [[ours, t]];
    },
  };
}

/** HF CLIP (`CLIPVisionModel` or full `CLIPModel`) -> `visual_encoder.vision_model.*`. */
export function clipWeightMap(): PretrainedWeightMap {
  return renameMap('clip', 'CLIP ViT (HF)', 'vision_model.', `${PART_PREFIX.clip}vision_model.`, CLIP_IGNORED);
}

export type ConvNextLayout = 'open_clip' | 'timm';

/** open_clip (`visual.trunk.*`) or timm (bare) ConvNeXt -> `visual_encoder_aux.*`. */
export function convNextWeightMap(layout: ConvNextLayout): PretrainedWeightMap {
  return layout === 'open_clip'
    ? renameMap('convnext', 'ConvNeXt (open_clip)', 'visual.trunk.', PART_PREFIX.convnext, OPEN_CLIP_IGNORED)
    : renameMap('convnext', 'ConvNeXt (timm)', '', PART_PREFIX.convnext, TIMM_IGNORED);
}

/**
 * A tensor with a shape and no data. The LLaMA weight-map functions only move rows around (slice/concat),
 * so running them on shape-only tensors yields the names and shapes of the real result without reading data.
 */
function shapeOnly(shape: number[]): HostTensor {
  return { dtype: 'float32', shape: [...shape], data: new Float32Array(0) };
}

const ROTARY_BUFFER = /(^|\.)rotary_emb\.inv_freq$/;

/** HF LLaMA-family checkpoint (LLaMA/Vicuna/Llama-3/Yi; Phi-3 fused q/k/v, gate/up split) -> `llm.*`. */
export function llmWeightMap(config: LlamaConfig): PretrainedWeightMap {
  const label = config.weightFormat === 'phi3' ? 'Phi-3 (HF)' : 'LLaMA (HF)';
  const prefixed = (pairs: [string, HostTensor][]): [string, HostTensor][] => pairs.map(([n, t]) => [PART_PREFIX.llm + n, t]);
  return {
    kind: 'llm',
    label,
    plan(name, shape) {
      // Our decoder's names are HF's; a name outside model.*/lm_head.* cannot be one of them.
      if (!name.startsWith('model.') && !name.startsWith('lm_head.')) return { action: 'unknown' };
      const targets = prefixed(hfTensorToOurs(name, shapeOnly(shape), config)).map(([n, t]) => ({ name: n, shape: t.shape }));
      if (targets.length) return { action: 'map', targets };
      return {
        action: 'ignore',
        reason: ROTARY_BUFFER.test(name) ? 'RoPE inv_freq buffer (recomputed)' : 'lm_head of a tied model (HF ties it to embed_tokens)',
      };
    },
    convert(name, t) {
      return prefixed(hfTensorToOurs(name, t, config));
    },
  };
}

export function pretrainedWeightMap(kind: PretrainedKind, o: { llm?: LlamaConfig; convnextLayout?: ConvNextLayout }): PretrainedWeightMap {
  switch (kind) {
    case 'clip':
      return clipWeightMap();
    case 'convnext':
      return convNextWeightMap(o.convnextLayout ?? 'open_clip');
    case 'llm':
      if (!o.llm) throw new Error('pretrainedWeightMap: the LLM map needs the LLaMA config');
      return llmWeightMap(o.llm);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Ours -> pretrained layouts (export).

/** `visual_encoder.vision_model.X` -> HF CLIP `vision_model.X`. */
export function clipNameToHf(ours: string): string {
  if (!ours.startsWith(`${PART_PREFIX.clip}vision_model.`)) throw new Error(`'${ours}' is not a CLIP ViT weight of MG-LLaVA`);
  return ours.slice(PART_PREFIX.clip.length);
}

/** `visual_encoder_aux.X` -> open_clip `visual.trunk.X` or timm `X`. */
export function convNextNameToPretrained(ours: string, layout: ConvNextLayout): string {
  if (!ours.startsWith(PART_PREFIX.convnext)) throw new Error(`'${ours}' is not a ConvNeXt weight of MG-LLaVA`);
  const rest = ours.slice(PART_PREFIX.convnext.length);
  return layout === 'open_clip' ? `visual.trunk.${rest}` : rest;
}

/** One tensor of an HF LLM checkpoint and the `llm.*` weights it is made of. */
export interface HfTensorPlan {
  hfName: string;
  shape: number[];
  /** Our names (with `llm.`), in fusion order (q, k, v / gate, up); one name for a plain rename. */
  sources: string[];
}

/**
 * The HF checkpoint of our `llm.*` weights (names + shapes, no data), in the order of `weights`:
 * identity names for LLaMA, fused q/k/v and gate/up for Phi-3 (`config.weightFormat`).
 */
export function llmHfPlan(weights: readonly NamedShape[], config: LlamaConfig): HfTensorPlan[] {
  const bare = new Map<string, HostTensor>();
  for (const w of weights) {
    if (!w.name.startsWith(PART_PREFIX.llm)) throw new Error(`'${w.name}' is not an LLM weight of MG-LLaVA (no '${PART_PREFIX.llm}' prefix)`);
    bare.set(w.name.slice(PART_PREFIX.llm.length), shapeOnly(w.shape));
  }
  const hf = oursToHf(bare, config);
  const fused = (hfName: string): string[] => {
    const m = /^(.*\.)(qkv_proj|gate_up_proj)\.(weight|bias)$/.exec(hfName);
    if (!m || bare.has(hfName)) return [hfName];
    const members = m[2] === 'qkv_proj' ? ['q_proj', 'k_proj', 'v_proj'] : ['gate_proj', 'up_proj'];
    return members.map((p) => `${m[1]}${p}.${m[3]}`);
  };
  return [...hf].map(([hfName, t]) => ({ hfName, shape: t.shape, sources: fused(hfName).map((n) => PART_PREFIX.llm + n) }));
}

/** The data of one planned HF tensor from its sources' data (bare or `llm.` names both accepted as keys). */
export function llmHfTensor(plan: HfTensorPlan, sources: Map<string, HostTensor>, config: LlamaConfig): HostTensor {
  const bare = new Map<string, HostTensor>();
  for (const s of plan.sources) {
    const t = sources.get(s);
    if (!t) throw new Error(`LLM export: ${plan.hfName} needs ${s}, which was not given`);
    bare.set(s.slice(PART_PREFIX.llm.length), t);
  }
  const out = oursToHf(bare, config).get(plan.hfName);
  if (!out) throw new Error(`LLM export: ${plan.sources.join(', ')} did not produce ${plan.hfName}`);
  return out;
}
