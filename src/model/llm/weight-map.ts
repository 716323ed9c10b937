/**
 * HF checkpoint names <-> this decoder's weight names, for the LLaMA family.
 *
 * LLaMA / Vicuna / Llama-3 / Yi checkpoints already use our names (`model.layers.N.self_attn.q_proj.weight`
 * ...): the map is the identity, except that `rotary_emb.inv_freq` buffers (saved by older transformers
 * versions; recomputed here) and a tied model's duplicate `lm_head.weight` (HF ties it to the embeddings on
 * load and ignores the stored copy) are dropped.
 * Phi-3 fuses two groups, split on import and fused again on export:
 *   `self_attn.qkv_proj.weight [(H + 2*kvH) * hd, H]` = rows [q (H*hd) ; k (kvH*hd) ; v (kvH*hd)]
 *   `mlp.gate_up_proj.weight [2*I, H]`                 = rows [gate (I) ; up (I)]
 * Any prefix before the HF name (e.g. MG-LLaVA's `llm.`) is carried through unchanged.
 */
import type { HostTensor } from '../../io/safetensors.js';
import { headDimOf, type LlamaConfig } from './config.js';

/** Split `t` along dim 0 into blocks of `rows` rows each (copies). */
function splitRows(t: HostTensor, rows: number[], name: string): HostTensor[] {
  const total = rows.reduce((a, c) => a + c, 0);
  if (t.shape[0] !== total) throw new Error(`weight map: ${name} has ${t.shape[0]} rows, expected ${total} (${rows.join(' + ')})`);
  const inner = t.shape.slice(1).reduce((a, c) => a * c, 1);
  const out: HostTensor[] = [];
  let start = 0;
  for (const r of rows) {
    const data = t.data.slice(start * inner, (start + r) * inner);
    out.push({ dtype: t.dtype, shape: [r, ...t.shape.slice(1)], data });
    start += r;
  }
  return out;
}

/** Concatenate along dim 0 (copies); all parts must agree on the trailing dims and dtype. */
function concatRows(parts: HostTensor[], name: string): HostTensor {
  const first = parts[0]!;
  const tail = first.shape.slice(1);
  for (const p of parts) {
    if (p.dtype !== first.dtype || p.shape.length !== first.shape.length || p.shape.slice(1).some((d, i) => d !== tail[i])) {
      throw new Error(`weight map: cannot fuse ${name}: parts have shapes ${parts.map((q) => `[${q.shape}]`).join(', ')}`);
    }
  }
  const rows = parts.reduce((a, p) => a + p.shape[0]!, 0);
  const data = first.dtype === 'float32' ? new Float32Array(rows * (first.data.length / first.shape[0]!)) : new Int32Array(rows * (first.data.length / first.shape[0]!));
  let off = 0;
  for (const p of parts) {
    data.set(p.data, off);
    off += p.data.length;
  }
  return { dtype: first.dtype, shape: [rows, ...tail], data };
}

const FUSED_QKV = /^(.*\.self_attn\.)qkv_proj\.(weight|bias)$/;
const FUSED_GATE_UP = /^(.*\.mlp\.)gate_up_proj\.(weight|bias)$/;
const ROTARY_BUFFER = /(^|\.)rotary_emb\.inv_freq$/;
const LM_HEAD = /(^|\.)lm_head\.weight$/;

/**
 * One HF tensor -> our (name, tensor) pairs: fused Phi-3 tensors become two/three, dropped buffers none,
 * everything else itself.
 */
export function hfTensorToOurs(name: string, t: HostTensor, config: LlamaConfig): [string, HostTensor][] {
  if (ROTARY_BUFFER.test(name)) return [];
  if (config.tieWordEmbeddings && LM_HEAD.test(name)) return [];
  const hd = headDimOf(config);
  let m = FUSED_QKV.exec(name);
  if (m) {
    const [q, k, v] = splitRows(t, [config.numHeads * hd, config.numKvHeads * hd, config.numKvHeads * hd], name);
    return [
      [`${m[1]}q_proj.${m[2]}`, q!],
      [`${m[1]}k_proj.${m[2]}`, k!],
      [`${m[1]}v_proj.${m[2]}`, v!],
    ];
  }
  m = FUSED_GATE_UP.exec(name);
  if (m) {
    const [gate, up] = splitRows(t, [config.intermediateSize, config.intermediateSize], name);
    return [
      [`${m[1]}gate_proj.${m[2]}`, gate!],
      [`${m[1]}up_proj.${m[2]}`, up!],
    ];
  }
  return [[name, t]];
}

/** A whole HF checkpoint (any prefix) -> our names. Duplicate target names are an error. */
export function hfToOurs(weights: Map<string, HostTensor>, config: LlamaConfig): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  for (const [name, t] of weights) {
    for (const [ours, tensor] of hfTensorToOurs(name, t, config)) {
      if (out.has(ours)) throw new Error(`weight map: '${ours}' is produced twice (from '${name}' and an earlier tensor)`);
      out.set(ours, tensor);
    }
  }
  return out;
}

/**
 * Our weights -> the HF checkpoint layout of `config.weightFormat` ('llama': identity; 'phi3': q/k/v and
 * gate/up fused). A group that is only partly present is an error.
 */
export function oursToHf(weights: Map<string, HostTensor>, config: LlamaConfig): Map<string, HostTensor> {
  if ((config.weightFormat ?? 'llama') === 'llama') return new Map(weights);
  const out = new Map<string, HostTensor>();
  const groups: { pattern: RegExp; members: string[]; fused: string }[] = [
    { pattern: /^(.*\.self_attn\.)(q|k|v)_proj\.(weight|bias)$/, members: ['q', 'k', 'v'], fused: 'qkv_proj' },
    { pattern: /^(.*\.mlp\.)(gate|up)_proj\.(weight|bias)$/, members: ['gate', 'up'], fused: 'gate_up_proj' },
  ];
  for (const [name, t] of weights) {
    const group = groups.find((g) => g.pattern.test(name));
    if (!group) {
      out.set(name, t);
      continue;
    }
    const [, base, member, kind] = group.pattern.exec(name)!;
    if (member !== group.members[0]) continue; // the group is emitted once, at its first member
    const names = group.members.map((mem) => `${base}${mem}_proj.${kind}`);
    const missing = names.filter((n) => !weights.has(n));
    if (missing.length) throw new Error(`weight map: cannot fuse ${base}${group.fused}.${kind}: missing ${missing.join(', ')}`);
    out.set(`${base}${group.fused}.${kind}`, concatRows(names.map((n) => weights.get(n)!), `${base}${group.fused}.${kind}`));
  }
  // A member whose first member is absent was skipped above without being emitted: report it.
  for (const name of weights.keys()) {
    const group = groups.find((g) => g.pattern.test(name));
    if (!group) continue;
    const [, base, , kind] = group.pattern.exec(name)!;
    if (!out.has(`${base}${group.fused}.${kind}`)) throw new Error(`weight map: cannot fuse ${base}${group.fused}.${kind}: missing ${base}${group.members[0]}_proj.${kind}`);
  }
  return out;
}
