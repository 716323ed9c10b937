/**
 * Kernel profiler for the benchmarks: wraps every kernel registered for the current backend with a
 * wall-clock timer (wasm and cpu run kernels synchronously, so a kernel's wall time is its cost) and
 * sums self time per kernel name, or per name + input shapes. Nested kernel calls (a pack kernel
 * calling a stock one through the registry) count once: the outer kernel's time excludes the inner.
 *
 * Cheaper than `tf.profile` (no per-kernel memory snapshots) and it sees the time between kernels:
 * `overheadMs` = wall time of the profiled function minus the kernels' time (tfjs engine, tape,
 * JavaScript of the model code).
 */
import * as tf from '@tensorflow/tfjs';
import type { KernelFunc, TensorInfo } from '@tensorflow/tfjs';

export interface KernelStat {
  key: string;
  ms: number;
  calls: number;
}

export interface KernelProfile {
  wallMs: number;
  /** CPU time of the process over the same span (user + system): less sensitive to other load than wall time. */
  cpuMs: number;
  kernelMs: number;
  overheadMs: number;
  /** Sorted by time, largest first. */
  kernels: KernelStat[];
}

export interface ProfileOptions {
  /** Split these kernel names by input shapes ('*' = all). */
  byShape?: string[];
}

/**
 * Run `fn` with every kernel of the current backend timed; the kernels are restored afterwards. `fn` may be
 * async (reads are asynchronous on webgpu, where a kernel's time is only the time to record its dispatch).
 */
export async function profileKernels<T>(fn: () => T | Promise<T>, opts: ProfileOptions = {}): Promise<{ result: T; profile: KernelProfile }> {
  const backend = tf.getBackend();
  const configs = tf.getKernelsForBackend(backend);
  const stats = new Map<string, KernelStat>();
  const split = new Set(opts.byShape ?? []);
  // Self time: a stack of child-time accumulators, one per kernel call in progress.
  const childMs: number[] = [];
  const originals = configs.map((c) => c.kernelFunc);
  configs.forEach((c, i) => {
    const inner = originals[i]!;
    const wrapped: KernelFunc = (args) => {
      childMs.push(0);
      const t0 = performance.now();
      try {
        return inner(args);
      } finally {
        const dt = performance.now() - t0;
        const self = dt - childMs.pop()!;
        if (childMs.length) childMs[childMs.length - 1]! += dt;
        const key = split.has('*') || split.has(c.kernelName) ? `${c.kernelName} ${shapesOf(args.inputs)}` : c.kernelName;
        const s = stats.get(key) ?? { key, ms: 0, calls: 0 };
        s.ms += self;
        s.calls += 1;
        stats.set(key, s);
      }
    };
    (c as { kernelFunc: KernelFunc }).kernelFunc = wrapped;
  });
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  let result: T;
  try {
    result = await fn();
  } finally {
    configs.forEach((c, i) => ((c as { kernelFunc: KernelFunc }).kernelFunc = originals[i]!));
  }
  const wallMs = performance.now() - t0;
  const c = process.cpuUsage(c0);
  const cpuMs = (c.user + c.system) / 1000;
  const kernels = [...stats.values()].sort((a, b) => b.ms - a.ms);
  const kernelMs = kernels.reduce((a, k) => a + k.ms, 0);
  return { result, profile: { wallMs, cpuMs, kernelMs, overheadMs: wallMs - kernelMs, kernels } };
}

function shapesOf(inputs: Record<string, unknown>): string {
  return Object.values(inputs)
    .map((t) => (t && typeof t === 'object' && 'shape' in t ? `[${(t as TensorInfo).shape.join(',')}]` : '?'))
    .join('x');
}

/** Text table of the top `n` kernels. */
export function formatProfile(p: KernelProfile, n = 25): string {
  const lines = [
    `wall ${p.wallMs.toFixed(1)} ms (cpu ${p.cpuMs.toFixed(1)} ms) = kernels ${p.kernelMs.toFixed(1)} ms + other ${p.overheadMs.toFixed(1)} ms (engine, tape, JS)`,
  ];
  const w = Math.min(90, Math.max(24, ...p.kernels.slice(0, n).map((k) => k.key.length)));
  for (const k of p.kernels.slice(0, n)) {
    lines.push(`  ${k.key.padEnd(w)} ${k.ms.toFixed(2).padStart(8)} ms ${((100 * k.ms) / p.wallMs).toFixed(1).padStart(5)} %  ${String(k.calls).padStart(5)} calls`);
  }
  return lines.join('\n');
}

/** Per-key median over several profiles of the same work (robust to a preempted step). */
export function medianProfile(ps: KernelProfile[]): KernelProfile {
  const med = (xs: number[]) => {
    const s = [...xs].sort((a, b) => a - b);
    return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
  };
  const keys = new Set(ps.flatMap((p) => p.kernels.map((k) => k.key)));
  const kernels = [...keys]
    .map((key) => {
      const found = ps.map((p) => p.kernels.find((k) => k.key === key));
      return { key, ms: med(found.map((k) => k?.ms ?? 0)), calls: Math.max(...found.map((k) => k?.calls ?? 0)) };
    })
    .sort((a, b) => b.ms - a.ms);
  const wallMs = med(ps.map((p) => p.wallMs));
  const cpuMs = med(ps.map((p) => p.cpuMs));
  const kernelMs = med(ps.map((p) => p.kernelMs));
  return { wallMs, cpuMs, kernelMs, overheadMs: med(ps.map((p) => p.overheadMs)), kernels };
}
