/**
 * `mgllava bench llama`: training steps of the LLM alone (mgllava's LlamaForCausalLM, causal-LM loss, global
 * clip + AdamW as the trainer does), at a size where a GPU has work to do: hidden 1024, 8 layers, 16 heads,
 * SwiGLU 2816, 512 positions (batch 1), LLaMA's vocabulary of 32000 (its embedding, 125 MiB, just fits the
 * 128 MiB storage binding of the smallest devices). Reports tokens/s of the median step.
 */
import * as tf from '@tensorflow/tfjs';
import { LlamaForCausalLM } from '../model/llm/llama.js';
import type { LlamaConfig } from '../model/llm/config.js';
import { causalLmLoss } from '../model/loss.js';
import { AdamW } from '../train/adamw.js';
import { applyGradients } from '../train/grad-step.js';
import { Rng } from '../util/rng.js';

export interface LlamaBenchOptions {
  hidden: number;
  layers: number;
  positions: number;
  vocab: number;
}

export const LLAMA_BENCH: LlamaBenchOptions = { hidden: 1024, layers: 8, positions: 512, vocab: 32000 };

export interface LlamaBenchResult extends LlamaBenchOptions {
  backend: string;
  params: number;
  steps: number;
  medianStepMs: number;
  tokensPerS: number;
  firstLoss: number;
  lastLoss: number;
  leakedTensors: number;
}

export function llamaBenchConfig(o: LlamaBenchOptions): LlamaConfig {
  const heads = Math.max(1, Math.round(o.hidden / 64));
  return {
    vocabSize: o.vocab,
    hiddenSize: o.hidden,
    intermediateSize: Math.round((o.hidden * 11) / 4 / 64) * 64,
    numLayers: o.layers,
    numHeads: heads,
    numKvHeads: heads,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    tieWordEmbeddings: false,
  };
}

/** `warmup` untimed steps, then `steps` timed ones (each ends with a read of the loss and the clip norm). */
export async function runLlamaBench(o: LlamaBenchOptions = LLAMA_BENCH, steps = 3, warmup = 1): Promise<LlamaBenchResult> {
  const model = new LlamaForCausalLM(llamaBenchConfig(o), { rng: new Rng(0) });
  const rng = new Rng(1);
  const ids = [Array.from({ length: o.positions }, () => rng.int(o.vocab))];
  const vars = new Map(model.namedWeights());
  const list = [...vars.values()];
  const opt = new AdamW(vars);
  const times: number[] = [];
  const losses: number[] = [];
  let before = 0;
  try {
    for (let i = 0; i < warmup + steps; i++) {
      if (i === warmup) before = tf.memory().numTensors;
      const t0 = performance.now();
      const { value, grads } = tf.variableGrads(() => causalLmLoss(model.forward({ inputIds: ids }).logits, ids).loss, list);
      const loss = (await value.data())[0]!;
      const named = new Map([...vars].map(([n, v]) => [n, grads[v.name]!]));
      await applyGradients(named, loss, opt, 1e-4, 1.0);
      tf.dispose([value, ...Object.values(grads)]);
      await list[0]!.data(); // the update has run
      if (i >= warmup) times.push(performance.now() - t0);
      losses.push(loss);
    }
    const leaked = tf.memory().numTensors - before;
    const sorted = [...times].sort((a, b) => a - b);
    const med = sorted[Math.floor(sorted.length / 2)]!;
    return {
      ...o,
      backend: tf.getBackend(),
      params: list.reduce((a, v) => a + v.size, 0),
      steps,
      medianStepMs: Math.round(med),
      tokensPerS: Number(((o.positions / med) * 1000).toPrecision(3)),
      firstLoss: losses[0]!,
      lastLoss: losses[losses.length - 1]!,
      leakedTensors: leaked,
    };
  } finally {
    opt.dispose();
    model.dispose();
  }
}
