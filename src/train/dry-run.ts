/**
 * `--dry-run`: parameter counts per module and a rough memory estimate of one training step, so a config
 * that cannot fit is refused before anything big is allocated.
 *
 * Memory (float32, bytes):
 *   weights     4 x all parameters
 *   gradients   4 x trainable (x2 with grad_accum > 1: the accumulator beside a micro-batch's gradient)
 *   optimizer   8 x trainable (AdamW exp_avg + exp_avg_sq)
 *   activations the larger of the frozen encoders' transient peak (no tape) and what the tape keeps for the
 *               backward pass (trainable visual path + every LLM layer: the gradient flows through the LLM
 *               even when it is frozen), for the longest sequence of the data at the micro-batch size.
 * It is an estimate (allocator overhead, kernel workspaces and the host-side data pipeline are not counted).
 */
import type { MGLLaVAConfig } from '../model/mgllava.js';
import { headDimOf } from '../model/llm/config.js';
import type { ModuleCount } from './param-count.js';

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
}

export interface MemoryEstimate {
  weights: number;
  gradients: number;
  optimizer: number;
  activations: number;
  total: number;
  /** LLM sequence length assumed (text + image tokens + object tokens). */
  seqLen: number;
}

const F32 = 4;

export function estimateMemory(c: MGLLaVAConfig, counts: readonly ModuleCount[], s: StepShape): MemoryEstimate {
  const all = counts.reduce((n, m) => n + m.params, 0);
  const trainable = counts.filter((m) => m.trainable).reduce((n, m) => n + m.params, 0);
  const grid = Math.floor(c.vision.imageSize / c.vision.patchSize);
  const nImg = grid * grid;
  const boxes = c.objects ? s.maxBoxes : 0;
  const seqLen = s.maxText - 1 + nImg + boxes;
  const b = s.batch;

  // Frozen path (no tape): a few live activations of the widest layer at a time.
  const v = c.vision;
  const vit = b * (nImg + 1) * (v.intermediateSize + 4 * v.hiddenSize) + b * v.numHeads * (nImg + 1) ** 2;
  let convnext = 0;
  if (c.visionAux) {
    const a = c.visionAux;
    const side = a.imageSize / 4;
    const stages = a.dims.map((d, i) => b * d * (side / 2 ** i) ** 2);
    convnext = Math.max(...stages.map((x) => 6 * x)); // block MLP (4x) + input/output
    if (c.objects) convnext += stages.reduce((x, y) => x + y, 0); // the concat map, stage maps kept
  }
  const frozen = vit + convnext;

  // Tape: trainable visual path + LLM layers + LM head rows.
  const l = c.llm;
  const hd = headDimOf(l);
  const visual = b * nImg * (6 * v.hiddenSize + 2 * l.hiddenSize) + (c.objects ? b * boxes * 4 * l.hiddenSize : 0);
  const perLayer = b * seqLen * (8 * l.hiddenSize + 2 * l.numKvHeads * hd + 4 * l.intermediateSize) + 2 * b * l.numHeads * seqLen * seqLen;
  const head = 2 * b * Math.min(s.maxSupervised, seqLen) * l.vocabSize;
  const tape = visual + l.numLayers * perLayer + head + b * seqLen * l.hiddenSize;

  const weights = F32 * all;
  const gradients = F32 * trainable * (s.gradAccum > 1 ? 2 : 1);
  const optimizer = 2 * F32 * trainable;
  const activations = F32 * Math.max(frozen, tape);
  return { weights, gradients, optimizer, activations, total: weights + gradients + optimizer + activations, seqLen };
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
export function formatDryRun(counts: readonly ModuleCount[], mem: MemoryEstimate, ceiling: number | null): string {
  const rows = counts.map((m) => [m.module, formatCount(m.params), m.trainable ? 'trainable' : 'frozen']);
  const total = counts.reduce((n, m) => n + m.params, 0);
  const tr = counts.filter((m) => m.trainable).reduce((n, m) => n + m.params, 0);
  rows.push(['total', formatCount(total), `${formatCount(tr)} trainable, ${formatCount(total - tr)} frozen`]);
  const w = [0, 1].map((k) => Math.max(...rows.map((r) => r[k]!.length)));
  const lines = ['parameters:', ...rows.map((r) => `  ${r[0]!.padEnd(w[0]!)}  ${r[1]!.padStart(w[1]!)}  ${r[2]}`)];
  lines.push(
    `memory estimate (one step, LLM sequence ${mem.seqLen}):`,
    `  weights      ${formatBytes(mem.weights)}`,
    `  gradients    ${formatBytes(mem.gradients)}`,
    `  optimizer    ${formatBytes(mem.optimizer)}`,
    `  activations  ${formatBytes(mem.activations)} (rough)`,
    `  total        ${formatBytes(mem.total)}${ceiling !== null ? ` (wasm ceiling ${formatBytes(ceiling)})` : ''}`,
  );
  return `${lines.join('\n')}\n`;
}
