/**
 * `mgllava bench kernels --backend webgpu`: GFLOP/s of the webgpu kernels on the matrix-product and convolution
 * cases of the wasm kernel bench (../kernels/bench.ts), each against a plain 2-D matmul of the same FLOPs on the
 * same device, and the pack's fused kernels against the composites they replace. A run is timed to the end of
 * its GPU work (`queue.onSubmittedWorkDone` after a submit), not to the end of its recording.
 */
import * as tf from '@tensorflow/tfjs';
import type { NamedAttrMap } from '@tensorflow/tfjs';
import { kernelBenchCases } from '../kernels/bench.js';
import { adamwComposite, adamwUpdate, type AdamWStep } from '../../nn/adamw-update.js';
import { applyRope, ropeKernelTables, rotateHalfMatrix, RopeTable, type RopeOperands } from '../../model/llm/rope.js';

export interface WebgpuBenchResult {
  op: string;
  /** GFLOP/s of the case (null for the memory-bound fused kernels: see `ms`). */
  gflops: number | null;
  ms: number;
  /** The reference: a plain 2-D matmul of the same FLOPs, or the composite a fused kernel replaces. */
  reference: string;
  referenceGflops: number | null;
  referenceMs: number;
  /** gflops / referenceGflops, or referenceMs / ms for the fused kernels (> 1: faster than the reference). */
  ratio: number;
}

interface QueueBackend {
  commandEncoder: unknown;
  endComputePassEncoder(): void;
  submitQueue(): void;
  device: { queue: { onSubmittedWorkDone(): Promise<void> } };
}

/** Submit what the backend has recorded and wait until the device has run it. */
async function gpuDone(): Promise<void> {
  const b = tf.backend() as unknown as QueueBackend;
  b.endComputePassEncoder();
  if (b.commandEncoder) b.submitQueue();
  await b.device.queue.onSubmittedWorkDone();
}

/** Median ms of `run` (its outputs disposed), after one untimed run that compiles the pipelines. */
async function timeRuns(run: () => tf.Tensor | tf.Tensor[], budgetMs: number): Promise<number> {
  tf.dispose(run());
  await gpuDone();
  const times: number[] = [];
  const start = performance.now();
  while (times.length < 3 || (performance.now() - start < budgetMs && times.length < 25)) {
    const t0 = performance.now();
    const out = run();
    await gpuDone();
    times.push(performance.now() - t0);
    tf.dispose(out);
    if (times.length >= 1 && performance.now() - start > 4 * budgetMs) break; // slow device: one run is enough
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)]!;
}

const kernelRun = (kernel: string, inputs: Record<string, tf.Tensor>, attrs: NamedAttrMap) => () =>
  tf.engine().runKernel(kernel, inputs, attrs) as tf.Tensor | tf.Tensor[];

const gflops = (flops: number, ms: number) => flops / ms / 1e6;
const round = (x: number) => Math.round(x * 100) / 100;

/** The fused kernels of the webgpu pack against their composites, at the tiny-e2e benchmark's sizes. */
function fusedCases(): { op: string; reference: string; setup: () => { fused: () => tf.Tensor | tf.Tensor[]; composite: () => tf.Tensor | tf.Tensor[]; dispose: () => void } }[] {
  return [
    {
      op: 'MgllavaRope [512,4,64] (one pass)',
      reference: 'matmul with rotate_half + 3 elementwise',
      setup: () => {
        const [n, heads, hd] = [512, 4, 64];
        const { cos, sin } = new RopeTable(hd, 10000).rows(Array.from({ length: n }, (_, i) => i % 128));
        const composite: RopeOperands = { cos: tf.tensor3d(cos, [n, 1, hd]), sin: tf.tensor3d(sin, [n, 1, hd]), rotate: rotateHalfMatrix(hd) };
        const fused = { ...composite, kernelTables: ropeKernelTables(sin, n, hd) };
        const x = tf.randomNormal([n, heads, hd]) as tf.Tensor3D;
        return {
          fused: () => applyRope(x, fused),
          composite: () => applyRope(x, composite),
          dispose: () => tf.dispose([x, composite.cos, composite.sin, composite.rotate, fused.kernelTables!.signed, fused.kernelTables!.swapped]),
        };
      },
    },
    {
      op: 'MgllavaAdamW 4.5M parameters (3 passes)',
      reference: 'the ~10-kernel composite',
      setup: () => {
        const n = 4_500_000;
        const [p, m, v, g] = [0, 1, 2, 3].map((s) => tf.randomNormal([n], 0, 1, 'float32', s + 1));
        const c: AdamWStep = { beta1: 0.9, beta2: 0.999, bc2Sqrt: Math.sqrt(1 - 0.999), eps: 1e-8, stepSize: 1e-3 / 0.1, decay: 1, gradScale: 0.5 };
        const three = (u: { p: tf.Tensor; m: tf.Tensor; v: tf.Tensor }) => [u.p, u.m, u.v];
        return {
          fused: () => three(adamwUpdate(p!, m!, v!, g!, c)),
          composite: () => three(adamwComposite(p!, m!, v!, g!, c)),
          dispose: () => tf.dispose([p!, m!, v!, g!]),
        };
      },
    },
  ];
}

/** Run every case on the active webgpu backend; `onResult` gets each as it is measured. */
export async function runWebgpuKernelBench(onResult: (r: WebgpuBenchResult) => void, budgetMs = 1500): Promise<WebgpuBenchResult[]> {
  if (tf.getBackend() !== 'webgpu') throw new Error(`webgpu kernel bench: the active backend is '${tf.getBackend()}'`);
  const results: WebgpuBenchResult[] = [];
  const emit = (r: WebgpuBenchResult) => {
    results.push(r);
    onResult(r);
  };
  for (const c of kernelBenchCases()) {
    const inputs = c.inputs();
    const refInputs = c.reference.inputs();
    const ms = await timeRuns(kernelRun(c.kernel, inputs, c.attrs), budgetMs);
    const refMs = await timeRuns(kernelRun(c.reference.kernel, refInputs, c.reference.attrs), budgetMs);
    tf.dispose([...Object.values(inputs), ...Object.values(refInputs)]);
    const g = gflops(c.flops, ms);
    const rg = gflops(c.reference.flops, refMs);
    emit({ op: c.op, gflops: round(g), ms: round(ms), reference: c.reference.label, referenceGflops: round(rg), referenceMs: round(refMs), ratio: round(g / rg) });
  }
  for (const c of fusedCases()) {
    const s = c.setup();
    const ms = await timeRuns(s.fused, budgetMs);
    const refMs = await timeRuns(s.composite, budgetMs);
    s.dispose();
    emit({ op: c.op, gflops: null, ms: round(ms), reference: c.reference, referenceGflops: null, referenceMs: round(refMs), ratio: round(refMs / ms) });
  }
  return results;
}

