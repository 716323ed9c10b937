/**
 * `--dry-run`: parameter counts per module and the memory one training step needs, from the config alone:
 * the architecture comes from the YAML or the `config.json` of the pretrained directories (no weight file is
 * read), the step's shape from the data when its files are there, else from the config (`planShape`).
 *
 * Memory (float32, bytes) at the step's peak, the end of the backward pass:
 *   weights      4 x every parameter (frozen ones included: they are on the device)
 *   gradients    4 x trainable (x2 with grad_accum > 1: the accumulator beside a micro-batch's gradients)
 *   optimizer    8 x trainable (AdamW exp_avg + exp_avg_sq)
 *   activations  what the gradient tape holds: tfjs keeps every saved forward tensor AND the gradient of every
 *                intermediate until the backward pass ends. Per LLM decoder layer, in floats (N = B x T rows,
 *                T = text - 1 + image tokens + object tokens; kv = kv heads x head dim; S = T keys):
 *                  36.9 N*H + 11 N*I + 10.1 N*kv + 5 B*heads*T*S
 *                the last layer runs its queries only on the supervised rows (Nq = B x Mq): 15 N*H + 10.1 N*kv
 *                + Nq * (36.9 H + 11 I + 5 heads*T); the LM head 4 M*V for M supervised rows. Each LoRA
 *                adapter adds 2.67 N*out + 4 N*r (+ 5 N*in with dropout: the mask and the masked input).
 *                With activation checkpointing a layer keeps its input (and gets its gradient) only, ~2 N*H,
 *                and one layer's full set exists at a time, while it is recomputed.
 *                Trainable visual path: fusion 44 n*D + 17 n*C (n = B x image tokens), a depth-d projector
 *                (4 + 17.75 (d-1)) rows*H, the splice 3 N*H.
 *                These coefficients count the tensors our kernels keep; they were measured with the wasm
 *                memory guard (README "Memory plans": estimate vs measured) and hold on any backend that
 *                keeps the same tensors (all of tfjs' do; reshapes share buffers).
 *   Also checked (the peak is the larger): the frozen encoders' transient (no tape, one image at a time) and
 *   the AdamW update's (three new tensors per parameter, the largest one's at a time).
 * Not counted: allocator overhead, kernel workspaces, the host-side data pipeline and feature cache.
 */
import { existsSync } from 'node:fs';
import type { ExperimentConfig } from '../config/schema.js';
import type { MGLLaVAConfig, Stage } from '../model/mgllava.js';
import { headDimOf } from '../model/llm/config.js';
import { loraModules, type ModuleCount } from './param-count.js';

export interface StepShape {
  /** Micro-batch size. */
  batch: number;
  gradAccum: number;
  /** Longest text of the data (tokens, placeholder included). */
  maxText: number;
  /** Most boxes of one record before NMS (an upper bound on object tokens). */
  maxBoxes: number;
  /** Longest answer part: supervised rows reach the LM head (bounded by maxText). */
  maxSupervised: number;
  /** train.activation_checkpointing. */
  checkpointing?: boolean;
}

/** Activations by part (bytes), for the text output and the tests. */
export interface ActivationParts {
  llm: number;
  head: number;
  visual: number;
  /** Frozen encoders of one image, outside the tape. */
  frozenTransient: number;
  /** AdamW's temporaries for its largest parameter. */
  optimizerTransient: number;
}

export interface MemoryEstimate {
  weights: number;
  gradients: number;
  optimizer: number;
  activations: number;
  total: number;
  /** LLM sequence length assumed (text + image tokens + object tokens). */
  seqLen: number;
  parts: ActivationParts;
}

const F32 = 4;

/** Floats the tape holds for the LLM decoder and the LM head (see the file comment for the coefficients). */
function llmActivations(c: MGLLaVAConfig, b: number, t: number, mq: number, checkpointing: boolean): { llm: number; head: number } {
  const l = c.llm;
  const h = l.hiddenSize;
  const i = l.intermediateSize;
  const nh = l.numHeads;
  const kv = l.numKvHeads * headDimOf(l);
  const n = b * t;
  const nq = b * mq;
  const adapters = c.lora ? loraModules(l, c.lora) : [];
  const drop = c.lora && c.lora.dropout > 0;
  const r = c.lora?.r ?? 0;
  // Adapters of k/v see every row; the rest of the last layer only the kept query rows.
  const lora = (rows: number, kvRows: number) =>
    adapters.reduce((sum, a) => {
      const rr = a.module === 'k_proj' || a.module === 'v_proj' ? kvRows : rows;
      return sum + rr * (2.67 * a.out + 4 * r + (drop ? 5 * a.in : 0));
    }, 0);
  const full = 36.9 * n * h + 11 * n * i + 10.1 * n * kv + 5 * b * nh * t * t + lora(n, n);
  const last = 15 * n * h + 10.1 * n * kv + nq * (36.9 * h + 11 * i + 5 * nh * t) + lora(nq, n);
  const layers = l.numLayers;
  const llm = checkpointing
    ? 2 * n * h * layers + 7 * n * h + Math.max(layers > 1 ? full : 0, last)
    : (layers - 1) * full + last;
  return { llm, head: 4 * nq * l.vocabSize };
}

/** Floats of the frozen encoders' forward for one image (no tape): the widest moment of a layer / block. */
function frozenTransient(c: MGLLaVAConfig, nImg: number): number {
  const v = c.vision;
  const tokens = nImg + 1;
  const vit = 2 * v.numHeads * tokens ** 2 + 2 * tokens * v.intermediateSize + 6 * tokens * v.hiddenSize;
  let convnext = 0;
  if (c.visionAux) {
    const a = c.visionAux;
    const side = a.imageSize / 4;
    const stages = a.dims.map((d, s) => d * (side / 2 ** s) ** 2);
    convnext = Math.max(...stages.map((x) => 11 * x)) + stages.reduce((x, y) => x + y, 0); // block MLP (4C, twice) + maps kept
  }
  return vit + convnext;
}

export function estimateMemory(c: MGLLaVAConfig, counts: readonly ModuleCount[], s: StepShape): MemoryEstimate {
  const all = counts.reduce((n, m) => n + m.params, 0);
  const trainable = counts.filter((m) => m.trainable).reduce((n, m) => n + m.params, 0);
  const grid = Math.floor(c.vision.imageSize / c.vision.patchSize);
  const nImg = grid * grid;
  const boxes = c.objects ? s.maxBoxes : 0;
  const seqLen = s.maxText - 1 + nImg + boxes;
  const b = s.batch;
  const mq = Math.max(1, Math.min(s.maxSupervised, seqLen - 1));
  const h = c.llm.hiddenSize;

  const { llm, head } = llmActivations(c, b, seqLen, mq, s.checkpointing ?? false);
  // Trainable visual path + splice.
  const n = b * nImg;
  let visual = (4 + 17.75 * (c.projectorDepth - 1)) * n * h + 3 * b * seqLen * h;
  if (c.fusion && c.visionAux) visual += 44 * n * c.vision.hiddenSize + 17 * n * c.visionAux.dims[c.visionAux.dims.length - 1]!;
  if (c.objects) visual += (4 + 17.75 * (c.objects.projectorDepth - 1)) * b * boxes * h;
  // Frozen features of the micro-batch, alive during the step.
  const features = b * nImg * c.vision.hiddenSize + (c.visionAux ? b * boxes * c.visionAux.dims.reduce((x, y) => x + y, 0) + n * c.visionAux.dims[c.visionAux.dims.length - 1]! : 0);
  const tape = llm + head + visual + features;
  const transient = frozenTransient(c, nImg);
  const largest = Math.max(0, ...counts.filter((m) => m.trainable).map((m) => largestTensor(c, m.module)));
  const optimizerTransient = 3 * largest;

  const weights = F32 * all;
  const gradients = F32 * trainable * (s.gradAccum > 1 ? 2 : 1);
  const optimizer = 2 * F32 * trainable;
  const activations = F32 * Math.max(tape, transient, optimizerTransient);
  return {
    weights,
    gradients,
    optimizer,
    activations,
    total: weights + gradients + optimizer + activations,
    seqLen,
    parts: { llm: F32 * llm, head: F32 * head, visual: F32 * (visual + features), frozenTransient: F32 * transient, optimizerTransient: F32 * optimizerTransient },
  };
}

/** Elements of the largest single weight of a top-level module (what AdamW's temporaries are sized by). */
function largestTensor(c: MGLLaVAConfig, module: string): number {
  const l = c.llm;
  if (module === 'llm') return Math.max(l.vocabSize * l.hiddenSize, l.hiddenSize * l.intermediateSize);
  if (module === 'llm.modules_to_save') return l.vocabSize * l.hiddenSize;
  if (module === 'llm.lora') return c.lora ? Math.max(...loraModules(l, c.lora).map((m) => c.lora!.r * Math.max(m.in, m.out))) : 0;
  const aux = c.visionAux;
  const d = c.vision.hiddenSize;
  if (module === 'fuse_module' && aux) return Math.max(aux.dims[aux.dims.length - 1]! ** 2, d * d);
  if (module === 'bbox_projector' && aux) return Math.max(aux.dims.reduce((x, y) => x + y, 0), l.hiddenSize) * l.hiddenSize;
  return Math.max(d * 2, l.hiddenSize) * l.hiddenSize;
}

/**
 * The step shape to plan for: the data's (longest text, most boxes, longest answer) when `data` is given,
 * else the config's bounds: `data.max_length` text tokens, `data.limit_num` object tokens (100 when unset),
 * every text token supervised.
 */
export function planShape(config: ExperimentConfig, data: { maxText: number; maxBoxes: number; maxSupervised: number } | null): StepShape & { from: 'data' | 'config' } {
  const t = config.train;
  const base = { batch: t.batch_size, gradAccum: t.grad_accum, checkpointing: t.activation_checkpointing };
  if (data) return { ...base, ...data, from: 'data' };
  const text = config.data.max_length;
  return { ...base, maxText: text, maxBoxes: config.model.objects ? (config.data.limit_num ?? 100) : 0, maxSupervised: text - 1, from: 'config' };
}

/** Whether the data's files are there to measure the step shape from (otherwise the plan uses the config's bounds). */
export function dataAvailable(config: ExperimentConfig): boolean {
  const d = config.data;
  const tok = d.tokenizer.type === 'hf' ? d.tokenizer.path : null;
  return existsSync(d.records) && (!tok || existsSync(tok)) && (!d.boxes || existsSync(d.boxes));
}

export interface RunPlan {
  stage: Stage;
  counts: ModuleCount[];
  memory: MemoryEstimate;
  shape: StepShape & { from: 'data' | 'config' };
  lora: MGLLaVAConfig['lora'];
}

export function planRun(mcfg: MGLLaVAConfig, stage: Stage, shape: StepShape & { from: 'data' | 'config' }, counts: ModuleCount[]): RunPlan {
  return { stage, counts, memory: estimateMemory(mcfg, counts, shape), shape, lora: mcfg.lora ?? null };
}

const GIB = 1024 ** 3;
const gib = (bytes: number) => Math.round((bytes / GIB) * 100) / 100;

/** The `--dry-run --json` line. */
export function planJson(p: RunPlan): string {
  const total = p.counts.reduce((n, m) => n + m.params, 0);
  const trainable = p.counts.filter((m) => m.trainable).reduce((n, m) => n + m.params, 0);
  const m = p.memory;
  return JSON.stringify({
    params: { total, trainable, frozen: total - trainable },
    memoryGiB: { weights: gib(m.weights), grads: gib(m.gradients), optimizer: gib(m.optimizer), activations: gib(m.activations), total: gib(m.total) },
    batch: p.shape.batch,
    positions: m.seqLen,
    checkpointing: p.shape.checkpointing ?? false,
    lora: p.lora ? { r: p.lora.r, alpha: p.lora.alpha, dropout: p.lora.dropout, targets: p.lora.targets, rslora: p.lora.rslora } : null,
    stage: p.stage,
    shapeFrom: p.shape.from,
  });
}

/** GPU memory sizes (GB as sold, 1e9 bytes) the README table and the text output check a plan against. */
export const GPU_SIZES_GB = [24, 40, 80, 141] as const;

/** Which of GPU_SIZES_GB hold `bytes` (as estimated; leave headroom for what the estimate does not count). */
export function fittingGpus(bytes: number): number[] {
  return GPU_SIZES_GB.filter((g) => bytes <= g * 1e9);
}

export function formatBytes(n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${u[i]}`;
}

export function formatCount(n: number): string {
  return n >= 1e9 ? `${(n / 1e9).toFixed(2)} B` : n >= 1e6 ? `${(n / 1e6).toFixed(2)} M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)} K` : String(n);
}

/** The parameter table and the memory lines printed by --dry-run. */
export function formatDryRun(counts: readonly ModuleCount[], mem: MemoryEstimate, ceiling: number | null, o: { checkpointing?: boolean; from?: 'data' | 'config'; batch?: number } = {}): string {
  const rows = counts.map((m) => [m.module, formatCount(m.params), m.trainable ? 'trainable' : 'frozen']);
  const total = counts.reduce((n, m) => n + m.params, 0);
  const tr = counts.filter((m) => m.trainable).reduce((n, m) => n + m.params, 0);
  rows.push(['total', formatCount(total), `${formatCount(tr)} trainable, ${formatCount(total - tr)} frozen`]);
  const w = [0, 1].map((k) => Math.max(...rows.map((r) => r[k]!.length)));
  const lines = ['parameters:', ...rows.map((r) => `  ${r[0]!.padEnd(w[0]!)}  ${r[1]!.padStart(w[1]!)}  ${r[2]}`)];
  const shape = `${o.batch !== undefined ? `batch ${o.batch} x ` : ''}${mem.seqLen} positions${o.from === 'config' ? ' (from the config: data.max_length text tokens, data.limit_num object tokens; the data files are not there)' : ''}`;
  const gpus = fittingGpus(mem.total);
  lines.push(
    `memory estimate (one step, ${shape}${o.checkpointing ? ', activation checkpointing' : ''}):`,
    `  weights      ${formatBytes(mem.weights)}`,
    `  gradients    ${formatBytes(mem.gradients)}`,
    `  optimizer    ${formatBytes(mem.optimizer)}`,
    `  activations  ${formatBytes(mem.activations)} (LLM ${formatBytes(mem.parts.llm)}, LM head ${formatBytes(mem.parts.head)}, visual path ${formatBytes(mem.parts.visual)})`,
    `  total        ${formatBytes(mem.total)}${ceiling !== null ? ` (wasm ceiling ${formatBytes(ceiling)})` : ''}; fits ${gpus.length ? gpus.map((g) => `${g} GB`).join(', ') : 'none of 24/40/80/141 GB'}`,
  );
  return `${lines.join('\n')}\n`;
}
