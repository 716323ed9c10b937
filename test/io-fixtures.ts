/**
 * Test fixtures for weight import/export: pretrained directories in the Hugging Face / open_clip / timm
 * layouts built from the golden parameter files (renamed by hand here, independently of src/io/weight-maps.ts),
 * and a raw safetensors writer for the half-precision dtypes our writer does not produce.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { readSafetensors, writeSafetensors, writeShardedSafetensors, type HostTensor } from '../src/io/safetensors.js';

export const GOLDEN = path.resolve(import.meta.dirname, '../../shared/golden/public');

export type Weights = Map<string, HostTensor>;

export async function goldenParams(piece: string): Promise<Weights> {
  return readSafetensors(path.join(GOLDEN, `${piece}.params.safetensors`));
}

export async function goldenConfig(piece: string): Promise<Record<string, unknown>> {
  const m = JSON.parse(await readFile(path.join(GOLDEN, 'manifest.json'), 'utf8')) as {
    pieces: Record<string, { config: Record<string, unknown> }>;
  };
  return m.pieces[piece]!.config;
}

/** Entries whose name starts with `from`, renamed to `to + rest`. */
export function renamePrefix(w: Weights, from: string, to: string): Weights {
  return new Map([...w].filter(([n]) => n.startsWith(from)).map(([n, t]) => [to + n.slice(from.length), t]));
}

export function f32(shape: number[], fill = 0.5): HostTensor {
  const n = shape.reduce((a, b) => a * b, 1);
  return { dtype: 'float32', shape, data: new Float32Array(n).fill(fill) };
}

// --- half precision -------------------------------------------------------------------------------------

/** float32 -> IEEE half bits, round to nearest even. */
export function toHalfBits(v: number): number {
  const u = new Uint32Array(new Float32Array([v]).buffer)[0]!;
  const sign = (u >>> 16) & 0x8000;
  const exp = ((u >>> 23) & 0xff) - 127 + 15;
  let mant = u & 0x7fffff;
  if (((u >>> 23) & 0xff) === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  if (exp >= 0x1f) return sign | 0x7c00;
  if (exp <= 0) {
    if (exp < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - exp;
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && h & 1)) h++;
    return sign | h;
  }
  let h = (exp << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++;
  return sign | h;
}

export function fromHalfBits(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** float32 -> bfloat16 bits (round to nearest even). */
export function toBf16Bits(v: number): number {
  const u = new Uint32Array(new Float32Array([v]).buffer)[0]!;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

export function fromBf16Bits(h: number): number {
  return new Float32Array(new Uint32Array([h << 16]).buffer)[0]!;
}

/** What a float32 tensor reads back as after being stored in `dtype`. */
export function roundTripHalf(t: HostTensor, dtype: 'F16' | 'BF16'): Float32Array {
  const [enc, dec] = dtype === 'F16' ? [toHalfBits, fromHalfBits] : [toBf16Bits, fromBf16Bits];
  return Float32Array.from(t.data, (x) => dec(enc(x)));
}

/** A safetensors file with every tensor stored as F16 or BF16 (hand-encoded: our writer only writes F32/I32). */
export async function writeHalfSafetensors(file: string, w: Weights, dtype: 'F16' | 'BF16'): Promise<void> {
  const enc = dtype === 'F16' ? toHalfBits : toBf16Bits;
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  const chunks: Uint8Array[] = [];
  let pos = 0;
  for (const [name, t] of w) {
    const bits = Uint16Array.from(t.data, (x) => enc(x));
    header[name] = { dtype, shape: t.shape, data_offsets: [pos, pos + bits.byteLength] };
    chunks.push(new Uint8Array(bits.buffer));
    pos += bits.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const len = new Uint8Array(8);
  new DataView(len.buffer).setBigUint64(0, BigInt(json.length), true);
  await writeFile(file, Buffer.concat([len, Buffer.from(json, 'utf8'), ...chunks]));
}

// --- pretrained directories from the e2e golden ----------------------------------------------------------

export interface E2eDirs {
  clip: string;
  aux: string;
  llm: string;
  /** Golden e2e parameters under MG-LLaVA checkpoint names. */
  params: Weights;
  config: Record<string, unknown>;
}

export interface DirOptions {
  /** Store the LLM as F16 / BF16 instead of F32. */
  llmDtype?: 'F32' | 'F16' | 'BF16';
  clipDtype?: 'F32' | 'F16' | 'BF16';
  /** Shard the LLM at this many bytes (HF index + shards). */
  llmShardBytes?: number;
  /** Add the tensors a full CLIPModel / open_clip model / old transformers save besides the used ones. */
  extras?: boolean;
}

async function writeWeights(file: string, w: Weights, dtype: 'F32' | 'F16' | 'BF16' = 'F32'): Promise<void> {
  if (dtype === 'F32') await writeSafetensors(file, w);
  else await writeHalfSafetensors(file, w, dtype);
}

/**
 * An HF CLIP dir, an open_clip ConvNeXt dir and an HF LLaMA dir holding the e2e golden weights, with
 * config files written from the manifest's config.
 */
export async function writeE2eDirs(root: string, o: DirOptions = {}): Promise<E2eDirs> {
  const params = await goldenParams('e2e');
  const config = await goldenConfig('e2e');
  const dirs = { clip: path.join(root, 'clip'), aux: path.join(root, 'convnext'), llm: path.join(root, 'llm') };
  for (const d of Object.values(dirs)) await mkdir(d, { recursive: true });

  const clip = renamePrefix(params, 'visual_encoder.', '');
  if (o.extras) {
    clip.set('text_model.embeddings.token_embedding.weight', f32([10, 8]));
    clip.set('text_model.final_layer_norm.weight', f32([8]));
    clip.set('visual_projection.weight', f32([8, 32]));
    clip.set('text_projection.weight', f32([8, 8]));
    clip.set('logit_scale', f32([]));
    clip.set('vision_model.embeddings.position_ids', { dtype: 'int32', shape: [1, 17], data: Int32Array.from({ length: 17 }, (_, i) => i) });
  }
  await writeWeights(path.join(dirs.clip, 'model.safetensors'), clip, o.clipDtype);
  const vit = config.vit as Record<string, unknown>;
  const clipConfig = o.extras
    ? { model_type: 'clip', architectures: ['CLIPModel'], text_config: { hidden_size: 8 }, vision_config: { model_type: 'clip_vision_model', ...vit } }
    : { model_type: 'clip_vision_model', architectures: ['CLIPVisionModel'], hidden_act: 'quick_gelu', ...vit };
  await writeFile(path.join(dirs.clip, 'config.json'), JSON.stringify(clipConfig, null, 2));

  const aux = renamePrefix(params, 'visual_encoder_aux.', 'visual.trunk.');
  if (o.extras) {
    aux.set('visual.trunk.head.norm.weight', f32([64]));
    aux.set('visual.trunk.head.norm.bias', f32([64]));
    aux.set('visual.head.mlp.fc1.weight', f32([16, 64]));
    aux.set('text.token_embedding.weight', f32([10, 8]));
    aux.set('logit_scale', f32([]));
  }
  await writeWeights(path.join(dirs.aux, 'open_clip_model.safetensors'), aux);
  const cnx = config.convnext as { dims: number[]; depths: number[]; image: number };
  await writeFile(
    path.join(dirs.aux, 'open_clip_config.json'),
    JSON.stringify({ model_cfg: { embed_dim: 16, vision_cfg: { dims: cnx.dims, depths: cnx.depths, image_size: cnx.image, timm_pool: '' } }, preprocess_cfg: {} }),
  );

  const llm = renamePrefix(params, 'llm.', '');
  if (o.extras) llm.set('model.layers.0.self_attn.rotary_emb.inv_freq', f32([8]));
  if (o.llmShardBytes) await writeShardedSafetensors(dirs.llm, llm, { maxShardBytes: o.llmShardBytes });
  else await writeWeights(path.join(dirs.llm, 'model.safetensors'), llm, o.llmDtype);
  await writeFile(path.join(dirs.llm, 'config.json'), JSON.stringify({ model_type: 'llama', architectures: ['LlamaForCausalLM'], ...(config.llm as object) }));
  return { ...dirs, params, config };
}

/** The YAML model section (as a plain object) of the e2e model with the given pretrained dirs. */
export function e2eModelSection(d: { clip: string | null; aux: string | null; llm: string | null }) {
  return {
    // Without a CLIP dir: the e2e ViT's architecture keys in the YAML instead.
    vision: d.clip
      ? { pretrained: d.clip }
      : { image_size: 56, patch_size: 14, hidden_size: 32, intermediate_size: 128, num_layers: 2, num_heads: 2 },
    vision_aux: d.aux ? { pretrained: d.aux, image_size: 128 } : { dims: [8, 16, 32, 64], depths: [1, 1, 1, 1], image_size: 128 },
    fusion: { variant: 0 },
    objects: { output_size: 56 },
    llm: d.llm
      ? { pretrained: d.llm }
      : { vocab_size: 100, hidden_size: 64, intermediate_size: 128, num_layers: 2, num_heads: 4, num_kv_heads: 2, rms_norm_eps: 1e-6 },
  };
}
