/**
 * LoRA on the LLaMA-family decoder linears, as PEFT's `LoraLayer` for `nn.Linear` does it:
 *
 *   y = x W^T (+ b) + scaling * (dropout(x) A^T) B^T,   A = lora_A.weight [r, in], B = lora_B.weight [out, r]
 *   scaling = alpha / r, or alpha / sqrt(r) with rsLoRA
 *
 * A starts Kaiming-uniform (a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in)), PEFT's default), B at zero, so an
 * adapted model starts equal to its base. The base weights stay where they are; an adapter adds two
 * children next to the linear it adapts, under PEFT's names: `self_attn.q_proj.lora_A.weight`, ...
 *
 * Phi-3 checkpoints fuse q/k/v (`qkv_proj`) and gate/up (`gate_up_proj`); PEFT adapts those as one linear:
 * one A [r, H] and one B [(q+k+v) rows, r]. This decoder keeps q/k/v as separate linears, so a fused
 * adapter shares `dropout(x) A^T` between its members and gives each member its block of B's rows
 * (`members`), which is the same arithmetic. Targets are named as the checkpoint names its modules.
 */
import * as tf from '@tensorflow/tfjs';
import type { InitContext } from '../../nn/module.js';
import { Linear } from '../../nn/linear.js';
import type { LlamaWeightFormat } from './config.js';

/** Linear modules of a LLaMA checkpoint (separate q/k/v, gate/up). */
export const LLAMA_LORA_TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;
/** Linear modules of a Phi-3 checkpoint (fused qkv and gate/up). */
export const PHI3_LORA_TARGETS = ['qkv_proj', 'o_proj', 'gate_up_proj', 'down_proj'] as const;

export type LoraTarget = (typeof LLAMA_LORA_TARGETS)[number] | (typeof PHI3_LORA_TARGETS)[number];

/**
 * Whole modules a LoRA run trains in full and saves with its adapter (PEFT's `modules_to_save`). An LLM whose
 * head must change (a small model trained from scratch, new tokens) cannot get there through the decoder's
 * adapters alone: a frozen head bounds the logits it can produce.
 */
export const LORA_SAVED_MODULES = ['lm_head', 'embed_tokens'] as const;
export type LoraSavedModule = (typeof LORA_SAVED_MODULES)[number];
/** A saved module's weight, by checkpoint name under the LLM (PEFT's key after `base_model.model.`). */
export const SAVED_MODULE_WEIGHT: Record<LoraSavedModule, string> = { lm_head: 'lm_head.weight', embed_tokens: 'model.embed_tokens.weight' };

export interface LoraConfig {
  r: number;
  alpha: number;
  /** Dropout on the adapter's input (training passes only). */
  dropout: number;
  /** Module names, or every linear of the decoder layers (never lm_head). */
  targets: readonly LoraTarget[] | 'all-linear';
  /** scaling = alpha / sqrt(r) instead of alpha / r. */
  rslora: boolean;
  /** Modules trained in full beside the adapters (PEFT's modules_to_save); none when absent. */
  modulesToSave?: readonly LoraSavedModule[];
}

export function loraScaling(c: Pick<LoraConfig, 'r' | 'alpha' | 'rslora'>): number {
  return c.rslora ? c.alpha / Math.sqrt(c.r) : c.alpha / c.r;
}

/** Which fused module each of our linears belongs to in a Phi-3 checkpoint (the rest are their own module). */
const PHI3_FUSED: Record<string, { module: LoraTarget; members: string[] }> = {
  q_proj: { module: 'qkv_proj', members: ['q_proj', 'k_proj', 'v_proj'] },
  gate_proj: { module: 'gate_up_proj', members: ['gate_proj', 'up_proj'] },
};

/**
 * The adapted modules for a checkpoint layout, in checkpoint order; an error names a target the layout does
 * not have (a Phi-3 model has qkv_proj, not q_proj), any problem with r / alpha / dropout, and lm_head in
 * modules_to_save of a model whose lm_head is its embed_tokens.
 */
export function resolveLoraTargets(c: LoraConfig, format: LlamaWeightFormat = 'llama', tiedEmbeddings = false): LoraTarget[] {
  const problems: string[] = [];
  if (tiedEmbeddings && c.modulesToSave?.includes('lm_head')) {
    problems.push("modules_to_save 'lm_head': this model ties lm_head to embed_tokens; name embed_tokens (the one weight both use)");
  }
  if (!(Number.isInteger(c.r) && c.r > 0)) problems.push(`r must be a positive integer (got ${c.r})`);
  if (!(c.alpha > 0)) problems.push(`alpha must be > 0 (got ${c.alpha})`);
  if (!(c.dropout >= 0 && c.dropout < 1)) problems.push(`dropout must be in [0, 1) (got ${c.dropout})`);
  const available: readonly LoraTarget[] = format === 'phi3' ? PHI3_LORA_TARGETS : LLAMA_LORA_TARGETS;
  let chosen: LoraTarget[] = [];
  if (c.targets === 'all-linear') chosen = [...available];
  else {
    if (c.targets.length === 0) problems.push('targets is empty');
    for (const t of c.targets) {
      if (available.includes(t)) continue;
      const hint =
        format === 'phi3'
          ? ' (Phi-3 checkpoints fuse q/k/v into qkv_proj and gate/up into gate_up_proj; PEFT adapts the fused modules)'
          : t === 'qkv_proj' || t === 'gate_up_proj'
            ? ` (${t} is a Phi-3 fused module; this LLaMA model has separate ${t === 'qkv_proj' ? 'q_proj, k_proj, v_proj' : 'gate_proj, up_proj'})`
            : '';
      problems.push(`target '${t}' is not a linear of this ${format === 'phi3' ? 'Phi-3' : 'LLaMA'} model: use ${available.join(', ')} or all-linear${hint}`);
    }
    chosen = available.filter((t) => c.targets.includes(t));
  }
  if (problems.length) throw new Error(`LoRA config: ${problems.join('; ')}`);
  return chosen;
}

/** The members (our linears, in fused row order) of an adapted module, e.g. qkv_proj -> q_proj, k_proj, v_proj. */
export function loraMembers(module: LoraTarget): string[] {
  const fused = Object.values(PHI3_FUSED).find((f) => f.module === module);
  return fused ? fused.members : [module];
}

/** What one forward pass does with the adapters. */
export interface AdapterPass {
  /** false: every adapter switched off (the base model's output). */
  enabled: boolean;
  /**
   * Dropout seed of this pass (a training pass); null: no dropout. Each adapter derives its own mask
   * seed from it, its layer and its module, so a recomputed layer (activation checkpointing) draws the
   * same masks.
   */
  dropoutSeed: number | null;
}

export const ADAPTERS_ON: AdapterPass = { enabled: true, dropoutSeed: null };

/** One module's adapter: lora_A [r, in] and lora_B [sum of member rows, r]; not a Module (its owner registers A and B). */
export class LoraAdapter {
  readonly loraA: Linear;
  readonly loraB: Linear;
  readonly scaling: number;
  /** Row offset and count of each member in B. */
  private readonly rows: Map<string, { start: number; size: number }>;

  constructor(
    readonly module: LoraTarget,
    inFeatures: number,
    members: { name: string; outFeatures: number }[],
    readonly config: LoraConfig,
    ctx: InitContext,
  ) {
    const out = members.reduce((n, m) => n + m.outFeatures, 0);
    // PEFT: kaiming_uniform_(A, a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)); zeros_(B).
    this.loraA = new Linear({ inFeatures, outFeatures: config.r, bias: false }, ctx, { weight: { kind: 'torchDefault', fanIn: inFeatures } });
    this.loraB = new Linear({ inFeatures: config.r, outFeatures: out, bias: false }, ctx, { weight: { kind: 'zeros' } });
    this.scaling = loraScaling(config);
    this.rows = new Map();
    let start = 0;
    for (const m of members) {
      this.rows.set(m.name, { start, size: m.outFeatures });
      start += m.outFeatures;
    }
  }

  get members(): string[] {
    return [...this.rows.keys()];
  }

  /** scaling * dropout(x) A^T: x [N, in] -> [N, r] (the scaling is applied on the narrow side). */
  down(x: tf.Tensor2D, dropoutSeed: number | null): tf.Tensor2D {
    return tf.tidy(() => {
      const p = this.config.dropout;
      const xin = dropoutSeed !== null && p > 0 ? dropout(x, p, dropoutSeed) : x;
      return tf.mul(tf.matMul(xin, this.loraA.weight, false, true), this.scaling) as tf.Tensor2D;
    });
  }

  /** Member `name`'s delta from `down`'s output: [N, r] -> [N, out_member]. */
  up(xa: tf.Tensor2D, name: string): tf.Tensor2D {
    return tf.tidy(() => tf.matMul(xa, this.memberB(name), false, true) as tf.Tensor2D);
  }

  /** scaling * B_member A: the member's weight delta [out_member, in] (what a merged checkpoint adds). */
  mergedDelta(name: string): tf.Tensor2D {
    return tf.tidy(() => tf.mul(tf.matMul(this.memberB(name), this.loraA.weight), this.scaling) as tf.Tensor2D);
  }

  /** The member's rows of B, [out_member, r]. */
  private memberB(name: string): tf.Tensor2D {
    const r = this.rows.get(name);
    if (!r) throw new Error(`LoRA ${this.module}: no member '${name}' (has ${this.members.join(', ')})`);
    const b = this.loraB.weight as tf.Tensor2D;
    return this.rows.size === 1 ? b : tf.slice(b, [r.start, 0], [r.size, this.config.r]);
  }
}

/**
 * The adapters of one block (attention or MLP) by member linear. `attach` builds them and hands A and B to
 * the block to register under PEFT's names; `begin` starts one pass over the block.
 */
export class BlockLora {
  private readonly byMember = new Map<string, LoraAdapter>();
  readonly adapters: LoraAdapter[] = [];

  /**
   * Adapt the modules of `modules` that this block has: `linears` are the block's linears by member name;
   * `register(name, linear)` adds a child to the block (e.g. `q_proj.lora_A`).
   */
  constructor(
    linears: Record<string, Linear>,
    modules: readonly LoraTarget[],
    config: LoraConfig,
    ctx: InitContext,
    register: (name: string, child: Linear) => void,
  ) {
    for (const module of modules) {
      const members = loraMembers(module);
      if (!members.every((m) => m in linears)) continue; // the other block's module
      const lins = members.map((m) => linears[m]!);
      const inFeatures = lins[0]!.config.inFeatures;
      const adapter = new LoraAdapter(module, inFeatures, members.map((name, i) => ({ name, outFeatures: lins[i]!.config.outFeatures })), config, ctx);
      register(`${module}.lora_A`, adapter.loraA);
      register(`${module}.lora_B`, adapter.loraB);
      this.adapters.push(adapter);
      for (const m of members) this.byMember.set(m, adapter);
    }
  }

  get size(): number {
    return this.adapters.length;
  }

  /** One pass over the block (null when adapters are off): deltas by member, one `down` per adapter. */
  begin(pass: AdapterPass, layer: number): BlockPass | null {
    if (!pass.enabled || this.adapters.length === 0) return null;
    const downs = new Map<LoraAdapter, tf.Tensor2D>();
    return {
      delta: (member, x, rows) => {
        const a = this.byMember.get(member);
        if (!a) return null;
        let xa = downs.get(a);
        if (!xa) {
          xa = a.down(x, pass.dropoutSeed === null ? null : adapterSeed(pass.dropoutSeed, layer, a.module));
          downs.set(a, xa);
        }
        return a.up(rows ? (tf.gather(xa, rows) as tf.Tensor2D) : xa, member);
      },
    };
  }

  /** scaling * B A per adapted member linear, [out, in] (the caller disposes them). */
  mergedDeltas(): Map<string, tf.Tensor2D> {
    const out = new Map<string, tf.Tensor2D>();
    for (const [m, a] of this.byMember) out.set(m, a.mergedDelta(m));
    return out;
  }
}

/** One pass of a block's adapters. */
export interface BlockPass {
  /**
   * The member linear's LoRA delta for the block input x [N, in] (members of one adapter must share x),
   * restricted to `rows` of x when given; null when the member is not adapted.
   */
  delta(member: string, x: tf.Tensor2D, rows?: tf.Tensor1D): tf.Tensor2D | null;
}

/** y + the member's delta, or y unchanged. */
export function withDelta(y: tf.Tensor, lp: BlockPass | null, member: string, x: tf.Tensor2D, rows?: tf.Tensor1D): tf.Tensor2D {
  const d = lp?.delta(member, x, rows);
  return (d ? tf.add(y, d) : y) as tf.Tensor2D;
}

/**
 * The dropout seed of one training pass: a function of the run's seed, the optimizer step and the micro-batch,
 * so a resumed run draws the same masks as an uninterrupted one.
 */
export function trainingPassSeed(runSeed: number, step: number, micro: number): number {
  return adapterSeed(runSeed >>> 0, step, `micro-${micro}`);
}

/** One dropout mask seed per (pass, layer, module): a 32-bit mix, so nearby seeds give unrelated masks. */
export function adapterSeed(passSeed: number, layer: number, module: string): number {
  let h = (passSeed ^ 0x9e3779b9) >>> 0;
  const mix = (v: number) => {
    h = Math.imul(h ^ v, 0x85ebca6b) >>> 0;
    h = (h ^ (h >>> 13)) >>> 0;
    h = Math.imul(h, 0xc2b2ae35) >>> 0;
    h = (h ^ (h >>> 16)) >>> 0;
  };
  mix(layer + 1);
  for (let i = 0; i < module.length; i++) mix(module.charCodeAt(i));
  return h;
}

/** Inverted dropout with a seeded mask: zero with probability p, the rest scaled by 1/(1-p). */
function dropout(x: tf.Tensor2D, p: number, seed: number): tf.Tensor2D {
  return tf.tidy(() => {
    const keep = tf.greaterEqual(tf.randomUniform(x.shape, 0, 1, 'float32', seed), p); // [N, in] bool
    return tf.mul(x, tf.mul(tf.cast(keep, 'float32'), 1 / (1 - p))) as tf.Tensor2D;
  });
}
