/**
 * Kernel benchmark: the pack's kernels against the stock wasm kernels they replace and against the
 * plain 2-D XNNPACK matmul of the same FLOP count (the speed the pack aims at). Kernel functions are
 * called directly (no engine, no tape) on the active wasm backend.
 */
import * as tf from '@tensorflow/tfjs';
import type { KernelFunc, NamedAttrMap, TensorInfo } from '@tensorflow/tfjs';
import { asWasm } from './heap.js';
import { PACK_KERNELS } from './index.js';
import { stockKernel } from './stock.js';

export interface BenchResult {
  op: string;
  /** GFLOP/s of the stock wasm kernel (null: stock wasm has no such kernel). */
  stockGflops: number | null;
  packGflops: number;
  /** GFLOP/s of the reference the pack is measured against (plain 2-D matmul of the same FLOPs, or the stock forward conv). */
  plainGflops: number | null;
  /** packGflops / plainGflops. */
  ratio: number | null;
  stockMs: number | null;
  packMs: number;
  flops: number;
  reference: string;
}

interface Case {
  op: string;
  flops: number;
  kernel: string;
  inputs: () => Record<string, tf.Tensor>;
  attrs: NamedAttrMap;
  /** The reference run: kernel + inputs + attrs. */
  reference: { label: string; kernel: string; inputs: () => Record<string, tf.Tensor>; attrs: NamedAttrMap; flops: number };
}

const rnd = (shape: number[]) => tf.randomUniform(shape, -1, 1);

function matmulCase(name: string, aShape: number[], bShape: number[], tA: boolean, tB: boolean): Case {
  const r = aShape.length;
  const M = tA ? aShape[r - 1]! : aShape[r - 2]!;
  const K = tA ? aShape[r - 2]! : aShape[r - 1]!;
  const N = tB ? bShape[r - 2]! : bShape[r - 1]!;
  const batch = tf.util.sizeFromShape(aShape.slice(0, -2));
  const flops = 2 * batch * M * N * K;
  return {
    op: name,
    flops,
    kernel: tf.BatchMatMul,
    inputs: () => ({ a: rnd(aShape), b: rnd(bShape) }),
    attrs: { transposeA: tA, transposeB: tB },
    reference: {
      label: `plain [${batch * M},${K}]x[${K},${N}]`,
      kernel: tf.BatchMatMul,
      inputs: () => ({ a: rnd([batch * M, K]), b: rnd([K, N]) }),
      attrs: { transposeA: false, transposeB: false },
      flops,
    },
  };
}

function convCases(): Case[] {
  const B = 4, H = 24, W = 24, C = 256;
  const pw = 2 * B * H * W * C * C; // 1x1 conv, C -> C
  const dw = 2 * B * H * W * C * 49; // 7x7 depthwise
  const plainPw = {
    label: `plain [${B * H * W},${C}]x[${C},${C}]`,
    kernel: tf.BatchMatMul,
    inputs: () => ({ a: rnd([B * H * W, C]), b: rnd([C, C]) }),
    attrs: { transposeA: false, transposeB: false },
    flops: pw,
  };
  const dwForward = {
    label: 'stock depthwise 7x7 forward',
    kernel: tf.DepthwiseConv2dNative,
    inputs: () => ({ x: rnd([B, H, W, C]), filter: rnd([7, 7, C, 1]) }),
    attrs: { strides: 1, pad: 'same', dilations: 1, dataFormat: 'NHWC' },
    flops: dw,
  };
  const s2 = { B: 1, H: 48, W: 48, Ci: 192, Co: 384 }; // ConvNeXt-style 2x2/s2 downsample
  const s2flops = 2 * s2.B * (s2.H / 2) * (s2.W / 2) * 4 * s2.Ci * s2.Co;
  return [
    {
      op: `conv1x1 backpropFilter [${B},${H},${W},${C}]->${C}`,
      flops: pw,
      kernel: tf.Conv2DBackpropFilter,
      inputs: () => ({ x: rnd([B, H, W, C]), dy: rnd([B, H, W, C]) }),
      attrs: { strides: 1, pad: 'valid', dataFormat: 'NHWC', filterShape: [1, 1, C, C] },
      reference: plainPw,
    },
    {
      op: `conv1x1 backpropInput [${B},${H},${W},${C}]->${C}`,
      flops: pw,
      kernel: tf.Conv2DBackpropInput,
      inputs: () => ({ dy: rnd([B, H, W, C]), filter: rnd([1, 1, C, C]) }),
      attrs: { strides: 1, pad: 'valid', dataFormat: 'NHWC', inputShape: [B, H, W, C] },
      reference: plainPw,
    },
    {
      op: `conv2x2s2 backpropInput [1,${s2.H},${s2.W},${s2.Ci}]->${s2.Co}`,
      flops: s2flops,
      kernel: tf.Conv2DBackpropInput,
      inputs: () => ({ dy: rnd([1, s2.H / 2, s2.W / 2, s2.Co]), filter: rnd([2, 2, s2.Ci, s2.Co]) }),
      attrs: { strides: 2, pad: 'valid', dataFormat: 'NHWC', inputShape: [1, s2.H, s2.W, s2.Ci] },
      reference: {
        label: `plain [${(s2.H * s2.W) / 4},${s2.Co}]x[${s2.Co},${4 * s2.Ci}]`,
        kernel: tf.BatchMatMul,
        inputs: () => ({ a: rnd([(s2.H * s2.W) / 4, s2.Co]), b: rnd([s2.Co, 4 * s2.Ci]) }),
        attrs: { transposeA: false, transposeB: false },
        flops: s2flops,
      },
    },
    {
      op: `depthwise7x7 forward [${B},${H},${W},${C}]`,
      flops: dw,
      kernel: tf.DepthwiseConv2dNative,
      inputs: dwForward.inputs,
      attrs: dwForward.attrs,
      reference: dwForward,
    },
    {
      op: `depthwise7x7 backpropInput [${B},${H},${W},${C}]`,
      flops: dw,
      kernel: tf.DepthwiseConv2dNativeBackpropInput,
      inputs: () => ({ dy: rnd([B, H, W, C]), filter: rnd([7, 7, C, 1]) }),
      attrs: { strides: 1, pad: 'same', dilations: 1, inputShape: [B, H, W, C] },
      reference: dwForward,
    },
    {
      op: `depthwise7x7 backpropFilter [${B},${H},${W},${C}]`,
      flops: dw,
      kernel: tf.DepthwiseConv2dNativeBackpropFilter,
      inputs: () => ({ x: rnd([B, H, W, C]), dy: rnd([B, H, W, C]) }),
      attrs: { strides: 1, pad: 'same', dilations: 1, filterShape: [7, 7, C, 1] },
      reference: dwForward,
    },
  ];
}

export function kernelBenchCases(): Case[] {
  const cases: Case[] = [];
  for (const n of [512, 1024]) {
    for (const [tag, tA, tB] of [['NN', false, false], ['NT', false, true], ['TN', true, false]] as const) {
      cases.push(matmulCase(`matmul ${n} ${tag}`, [n, n], [n, n], tA, tB));
    }
  }
  cases.push(matmulCase('batchMatMul [8,256,64]x[8,64,256]', [8, 256, 64], [8, 64, 256], false, false));
  cases.push(matmulCase('batchMatMul [8,256,256]x[8,256,64]', [8, 256, 256], [8, 256, 64], false, false));
  cases.push(matmulCase('batchMatMul NT [8,256,64]x[8,256,64]^T', [8, 256, 64], [8, 256, 64], false, true));
  cases.push(matmulCase('batchMatMul TN [8,256,256]^T x[8,256,64]', [8, 256, 256], [8, 256, 64], true, false));
  return [...cases, ...convCases()];
}

/**
 * Median milliseconds of each runner, measured interleaved (one run of each per round) so that load
 * from other processes hits all of them alike. The first round warms up (XNNPACK packing, heap
 * growth); a runner slower than `budgetMs` is measured by that single run (the slow stock paths).
 */
function timeInterleaved(runs: (() => void)[], budgetMs: number, maxRounds = 15): number[] {
  const times = runs.map(() => [] as number[]);
  const active = runs.map(() => true);
  const start = performance.now();
  for (let round = 0; round <= maxRounds; round++) {
    runs.forEach((run, i) => {
      if (!active[i]) return;
      const t0 = performance.now();
      run();
      const ms = performance.now() - t0;
      if (round > 0) times[i]!.push(ms);
      else if (ms > budgetMs) {
        times[i]!.push(ms);
        active[i] = false;
      }
    });
    if (round >= 3 && performance.now() - start > budgetMs * runs.length) break;
  }
  return times.map((t) => {
    t.sort((a, b) => a - b);
    return t[Math.floor(t.length / 2)]!;
  });
}

function kernelRunner(kernel: KernelFunc, inputs: Record<string, tf.Tensor>, attrs: NamedAttrMap): () => void {
  const backend = tf.backend();
  return () => {
    const out = kernel({ inputs, backend, attrs }) as TensorInfo;
    backend.disposeData(out.dataId);
  };
}

const gflops = (flops: number, ms: number) => flops / ms / 1e6;

/** Run every case on the active (wasm) backend; `onResult` gets each as it is measured. */
export function runKernelBench(onResult: (r: BenchResult) => void, budgetMs = 600): BenchResult[] {
  asWasm(tf.backend());
  const results: BenchResult[] = [];
  for (const c of kernelBenchCases()) {
    const inputs = c.inputs();
    const ref = c.reference;
    const refInputs = ref.inputs();
    let stock: KernelFunc | null = null;
    try {
      stock = stockKernel(c.kernel);
    } catch {
      stock = null; // a kernel stock wasm lacks
    }
    const runners = [kernelRunner(PACK_KERNELS[c.kernel]!, inputs, c.attrs), kernelRunner(stockKernel(ref.kernel), refInputs, ref.attrs)];
    if (stock) runners.push(kernelRunner(stock, inputs, c.attrs));
    const [packMs, refMs, stockMs = null] = timeInterleaved(runners, budgetMs) as [number, number, number?];
    tf.dispose([...Object.values(inputs), ...Object.values(refInputs)]);
    const packG = gflops(c.flops, packMs);
    const plainG = gflops(ref.flops, refMs);
    const r: BenchResult = {
      op: c.op,
      stockGflops: stockMs == null ? null : round(gflops(c.flops, stockMs)),
      packGflops: round(packG),
      plainGflops: round(plainG),
      ratio: round(packG / plainG),
      stockMs: stockMs == null ? null : round(stockMs),
      packMs: round(packMs),
      flops: c.flops,
      reference: ref.label,
    };
    results.push(r);
    onResult(r);
  }
  return results;
}

const round = (x: number) => Math.round(x * 100) / 100;
