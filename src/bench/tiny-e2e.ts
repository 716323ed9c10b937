/**
 * One training step of the tiny-e2e configuration, identical to ../shared/torch-reference/timing_ref.py:
 * frozen CLIP ViT 112 px / 14 (h128, 4 layers, 4 heads, MLP 512), frozen ConvNeXt 256 px (dims 16-128,
 * depths 1), DualPathFuse 128/128 (random init), projector 128->256->256, bbox projector 240->256->256,
 * 8 boxes/image, RoI 56, LLaMA h256 / 4 layers / 4 heads / FFN 688 / vocab 2000; batch 4 with 57 text ids
 * -> 56 text + 64 image + 8 object = 128 positions; CE on the answer half; clip 1.0 + AdamW.
 *
 * Phases, as the peer reports them: frozen encoders, trainable forward, backward, clip + AdamW.
 * tfjs computes forward and backward in one `variableGrads` call, so the step times that call (forward +
 * backward) and a separate forward-only pass gives the split: backward = (fwd+bwd) - forward.
 */
import * as tf from '@tensorflow/tfjs';
import { MGLLaVA, disposeFrozen, type MGLLaVAConfig, type Stage } from '../model/mgllava.js';
import { AdamW } from '../train/adamw.js';
import { applyGradients } from '../train/grad-step.js';
import { Rng } from '../util/rng.js';
import { resizeBilinearHalfPixel } from '../nn/resize.js';
import { medianProfile, profileKernels, type KernelProfile, type ProfileOptions } from './profile.js';
import { matmulPath } from '../backend/native.js';
import { wasmThreads } from '../backend/kernels/threads.js';

export const TINY_E2E: MGLLaVAConfig = {
  vision: { imageSize: 112, patchSize: 14, hiddenSize: 128, intermediateSize: 512, numLayers: 4, numHeads: 4, layerNormEps: 1e-5, numChannels: 3, selectLayer: -2, dropCls: true },
  visionAux: { dims: [16, 32, 64, 128], depths: [1, 1, 1, 1], layerNormEps: 1e-6, imageSize: 256, inChannels: 3 },
  fusion: { variant: 0, zeroInit: false },
  objects: { outputSize: 56, samplingRatio: -1, projectorDepth: 2, multiLevelDim: null },
  projectorDepth: 2,
  llm: { vocabSize: 2000, hiddenSize: 256, intermediateSize: 688, numLayers: 4, numHeads: 4, numKvHeads: 4, headDim: 64, rmsNormEps: 1e-5, ropeTheta: 10000, tieWordEmbeddings: false, attentionBias: false, initializerRange: 0.02, weightFormat: 'llama' },
};

const B = 4;
const N_TEXT = 57;
const N_BOXES = 8;

export interface BenchBatch {
  pixels: tf.Tensor4D;
  pixelsAux: tf.Tensor4D;
  boxes: Float32Array[];
  text: { inputIds: number[][]; labels: number[][]; attentionMask: number[][] };
}

/** The peer's batch recipe (its values differ: another RNG; the shapes and structure are the same). */
export function makeBenchBatch(seed = 1): BenchBatch {
  const rng = new Rng(seed);
  const aux = TINY_E2E.visionAux!.imageSize;
  const low = TINY_E2E.vision.imageSize;
  const pixelsAux = tf.tidy(() => tf.randomNormal([B, aux, aux, 3], 0, 1, 'float32', seed)) as tf.Tensor4D;
  const pixels = tf.tidy(() => resizeBilinearHalfPixel(pixelsAux, [low, low])) as tf.Tensor4D;
  const inputIds: number[][] = [];
  const labels: number[][] = [];
  for (let b = 0; b < B; b++) {
    const ids = Array.from({ length: N_TEXT }, () => 3 + rng.int(TINY_E2E.llm.vocabSize - 3));
    ids[0] = 1;
    ids[5] = -200;
    inputIds.push(ids);
    labels.push(ids.map((id, i) => (i >= Math.floor(N_TEXT / 2) ? id : -100)));
  }
  const boxes = Array.from({ length: B }, () => {
    const out = new Float32Array(N_BOXES * 4);
    for (let k = 0; k < N_BOXES; k++) {
      const x = rng.next() * aux * 0.6;
      const y = rng.next() * aux * 0.6;
      const w = rng.next() * aux * 0.4 + 8;
      const h = rng.next() * aux * 0.4 + 8;
      out.set([x, y, x + w, y + h].map((v) => Math.min(aux, Math.max(0, Math.round(v)))), k * 4);
    }
    return out;
  });
  return { pixels, pixelsAux, boxes, text: { inputIds, labels, attentionMask: inputIds.map((r) => r.map(() => 1)) } };
}

export interface PhaseTimes {
  frozenEncoders: number;
  trainableForward: number;
  backward: number;
  clipAndAdamw: number;
}

export interface ModeResult {
  medianMs: number;
  minMs: number;
  maxMs: number;
  tokensPerS: number;
  phases: PhaseTimes;
  trainableParams: number;
  firstLoss: number;
  lastLoss: number;
  numTensorsStart: number;
  numTensorsEnd: number;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/**
 * Time `steps` training steps after `warmup`, in one mode; the model's weights move as in training. Phase
 * boundaries wait for the device with an asynchronous read (webgpu queues work; wasm and cpu run synchronously).
 */
export async function benchMode(model: MGLLaVA, batch: BenchBatch, mode: 'pretrain' | 'sft', warmup = 3, steps = 10): Promise<ModeResult> {
  const stage: Stage = mode === 'sft' ? 'finetune' : 'pretrain';
  const vars = model.trainableWeights(stage);
  const opt = new AdamW(vars, { betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0 });
  const lr = mode === 'pretrain' ? 1e-3 : 2e-5;
  const list = [...vars.values()];
  const tot: number[] = [];
  const ph: Record<keyof PhaseTimes, number[]> = { frozenEncoders: [], trainableForward: [], backward: [], clipAndAdamw: [] };
  const losses: number[] = [];
  let numTensorsStart = 0;
  for (let it = 0; it < warmup + steps; it++) {
    if (it === warmup) numTensorsStart = tf.memory().numTensors;
    const t0 = performance.now();
    const frozen = model.encodeFrozen(batch.pixels, batch.pixelsAux, batch.boxes);
    await frozen.vit.data(); // the phase boundary
    const t1 = performance.now();
    const { value, grads } = tf.variableGrads(() => model.loss(frozen, batch.text).loss, list);
    const loss = (await value.data())[0]!;
    const t2 = performance.now();
    const named = new Map([...vars.keys()].map((n) => [n, grads[vars.get(n)!.name]!]));
    await applyGradients(named, loss, opt, lr, 1.0);
    tf.dispose([value, ...Object.values(grads)]);
    await list[0]!.data();
    const t3 = performance.now();
    // Forward alone (not part of the step): splits t2 - t1 into forward and backward.
    const tf0 = performance.now();
    const fwdOnly = model.loss(frozen, batch.text).loss;
    await fwdOnly.data();
    const fwdMs = performance.now() - tf0;
    fwdOnly.dispose();
    disposeFrozen(frozen);
    losses.push(loss);
    if (it >= warmup) {
      tot.push(t3 - t0);
      ph.frozenEncoders.push(t1 - t0);
      ph.trainableForward.push(fwdMs);
      ph.backward.push(Math.max(0, t2 - t1 - fwdMs));
      ph.clipAndAdamw.push(t3 - t2);
    }
  }
  const numTensorsEnd = tf.memory().numTensors;
  opt.dispose();
  const med = median(tot);
  return {
    medianMs: med,
    minMs: Math.min(...tot),
    maxMs: Math.max(...tot),
    tokensPerS: (B * 128) / (med / 1000),
    phases: {
      frozenEncoders: median(ph.frozenEncoders),
      trainableForward: median(ph.trainableForward),
      backward: median(ph.backward),
      clipAndAdamw: median(ph.clipAndAdamw),
    },
    trainableParams: list.reduce((a, v) => a + v.size, 0),
    firstLoss: losses[0]!,
    lastLoss: losses[losses.length - 1]!,
    numTensorsStart,
    numTensorsEnd,
  };
}

export interface StepBenchResult {
  backend: string;
  /** Threads of the wasm backend (1: the stock single-threaded build; MGLLAVA_WASM_THREADS). */
  threads: number;
  /** Where BatchMatMul ran: 'native avx512 x2' (native.ts) or 'xnnpack'. */
  matmul: string;
  pretrainMs: number;
  sftMs: number;
  rssMB: number;
  tokensPerS: { pretrain: number; sft: number };
  phases: { pretrain: PhaseTimes; sft: PhaseTimes };
  detail: { pretrain: ModeResult; sft: ModeResult };
}

/** Both modes, each after an untimed pass (as the peer does), on a fresh model per timed run. */
export async function runStepBench(warmup = 3, steps = 10): Promise<StepBenchResult> {
  const batch = makeBenchBatch();
  const warm = new MGLLaVA(TINY_E2E, { rng: new Rng(0) });
  if (warmup > 0) for (const mode of ['pretrain', 'sft'] as const) await benchMode(warm, batch, mode, 1, 0);
  warm.dispose();
  const model = new MGLLaVA(TINY_E2E, { rng: new Rng(0) });
  const pretrain = await benchMode(model, batch, 'pretrain', warmup, steps);
  const sft = await benchMode(model, batch, 'sft', warmup, steps);
  model.dispose();
  tf.dispose([batch.pixels, batch.pixelsAux]);
  return {
    backend: tf.getBackend(),
    threads: tf.getBackend() === 'wasm' ? Math.max(1, wasmThreads()) : 0,
    matmul: matmulLabel(),
    pretrainMs: round(pretrain.medianMs),
    sftMs: round(sft.medianMs),
    rssMB: Math.round(process.resourceUsage().maxRSS / 1024),
    tokensPerS: { pretrain: Math.round(pretrain.tokensPerS), sft: Math.round(sft.tokensPerS) },
    phases: { pretrain: roundPhases(pretrain.phases), sft: roundPhases(sft.phases) },
    detail: { pretrain, sft },
  };
}

function matmulLabel(): string {
  return matmulPath(tf.getBackend());
}

const round = (x: number) => Math.round(x * 10) / 10;
const roundPhases = (p: PhaseTimes): PhaseTimes => ({
  frozenEncoders: round(p.frozenEncoders),
  trainableForward: round(p.trainableForward),
  backward: round(p.backward),
  clipAndAdamw: round(p.clipAndAdamw),
});

export interface ModeProfile {
  mode: 'pretrain' | 'sft';
  frozenEncoders: KernelProfile;
  /** Forward + backward (one `variableGrads` call). */
  forwardBackward: KernelProfile;
  clipAndAdamw: KernelProfile;
}

/**
 * Kernel profiles per phase, after `warmup` unprofiled steps on a fresh model: per kernel the median
 * over `repeats` profiled steps.
 */
export async function profileStep(mode: 'pretrain' | 'sft', warmup = 3, opts: ProfileOptions = {}, repeats = 5): Promise<ModeProfile> {
  const batch = makeBenchBatch();
  const model = new MGLLaVA(TINY_E2E, { rng: new Rng(0) });
  const stage: Stage = mode === 'sft' ? 'finetune' : 'pretrain';
  const vars = model.trainableWeights(stage);
  const opt = new AdamW(vars, { betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0 });
  const lr = mode === 'pretrain' ? 1e-3 : 2e-5;
  const list = [...vars.values()];
  const got: { enc: KernelProfile[]; fb: KernelProfile[]; upd: KernelProfile[] } = { enc: [], fb: [], upd: [] };
  for (let it = 0; it < warmup + repeats; it++) {
    const last = it >= warmup;
    const run = async <T>(fn: () => Promise<T>): Promise<{ result: T; profile: KernelProfile | null }> =>
      last ? profileKernels(fn, opts) : { result: await fn(), profile: null };
    const enc = await run(async () => {
      const f = model.encodeFrozen(batch.pixels, batch.pixelsAux, batch.boxes);
      await f.vit.data();
      return f;
    });
    const frozen = enc.result;
    const fb = await run(async () => {
      const r = tf.variableGrads(() => model.loss(frozen, batch.text).loss, list);
      await r.value.data();
      return r;
    });
    const { value, grads } = fb.result;
    const upd = await run(async () => {
      const named = new Map([...vars.keys()].map((n) => [n, grads[vars.get(n)!.name]!]));
      await applyGradients(named, (await value.data())[0]!, opt, lr, 1.0);
      await list[0]!.data();
    });
    tf.dispose([value, ...Object.values(grads)]);
    disposeFrozen(frozen);
    if (last) {
      got.enc.push(enc.profile!);
      got.fb.push(fb.profile!);
      got.upd.push(upd.profile!);
    }
  }
  opt.dispose();
  model.dispose();
  tf.dispose([batch.pixels, batch.pixelsAux]);
  return { mode, frozenEncoders: medianProfile(got.enc), forwardBackward: medianProfile(got.fb), clipAndAdamw: medianProfile(got.upd) };
}
