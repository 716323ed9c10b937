/**
 * `mgllava bench kernels|step|llama`: benchmarks that print numbers. The benchmarks (and tfjs with them) are
 * imported when one runs, so `mgllava bench --help` stays as quick as the other commands' help (main.ts).
 */
import type { CommandModule } from 'yargs';
import type { BenchResult } from '../backend/kernels/bench.js';
import type { NativeStatus } from '../backend/native.js';
import type { WebgpuBenchResult } from '../backend/webgpu/bench.js';
import type { StepBenchResult } from '../bench/tiny-e2e.js';
import { backendFromArgs, type GlobalArgs } from './command.js';
import { UsageError } from '../errors.js';

interface BenchArgs extends GlobalArgs {
  what: 'kernels' | 'step' | 'llama';
  json: boolean;
  steps: number;
  warmup: number;
  profile: boolean;
}

export const benchCommand: CommandModule<GlobalArgs, BenchArgs> = {
  command: 'bench <what>',
  describe: 'Benchmarks: kernels (wasm kernel pack vs stock; webgpu kernels vs a plain matmul), step (tiny-e2e training step), llama (the LLM alone, h1024 x 8 layers, 512 positions)',
  builder: (y) =>
    y
      .positional('what', { choices: ['kernels', 'step', 'llama'] as const, demandOption: true })
      .option('json', { type: 'boolean', default: false, describe: 'one JSON line per result' })
      .option('steps', { type: 'number', default: 10, describe: 'step: timed steps per mode (median reported)' })
      .option('warmup', { type: 'number', default: 3, describe: 'step: untimed steps before timing' })
      .option('profile', { type: 'boolean', default: false, describe: 'step: time every kernel per phase instead (median of --steps profiled steps)' })
      .check((a) => {
        // A string is yargs' failure message (a usage error before any work): 0 or -1 steps would print NaN medians.
        if (!(Number.isInteger(a.steps) && a.steps >= 1)) return `--steps must be an integer >= 1, got ${a.steps}`;
        if (!(Number.isInteger(a.warmup) && a.warmup >= 0)) return `--warmup must be an integer >= 0, got ${a.warmup}`;
        return true;
      })
      .example('$0 bench step', 'ms per tiny-e2e training step, pretrain and sft')
      .example('$0 bench kernels --json', 'the kernel pack against the stock kernels, one JSON line per case'),
  handler: async (args) => {
    if (args.what === 'step') await benchStep(args);
    else if (args.what === 'llama') await benchLlama(args);
    else await benchKernels(args);
  },
};

/**
 * One training step of the tiny-e2e configuration (the same model, batch and recipe as the PyTorch peer
 * ../shared/torch-reference/timing_ref.py), pretrain and sft modes.
 */
async function benchStep(args: BenchArgs): Promise<void> {
  await backendFromArgs(args);
  const { profileStep, runStepBench } = await import('../bench/tiny-e2e.js');
  const { formatProfile } = await import('../bench/profile.js');
  if (args.profile) {
    for (const mode of ['pretrain', 'sft'] as const) {
      const p = await profileStep(mode, args.warmup, { byShape: ['BatchMatMul'] }, Math.max(1, Math.min(args.steps, 10)));
      if (args.json) {
        process.stdout.write(`${JSON.stringify(p)}\n`);
        continue;
      }
      for (const phase of ['frozenEncoders', 'forwardBackward', 'clipAndAdamw'] as const) {
        process.stdout.write(`== ${mode} ${phase}\n${formatProfile(p[phase], 20)}\n\n`);
      }
    }
    return;
  }
  const r = await runStepBench(args.warmup, args.steps);
  if (args.json) {
    const { detail, ...line } = r;
    process.stdout.write(`${JSON.stringify({ ...line, leakedTensors: detail.pretrain.numTensorsEnd - detail.pretrain.numTensorsStart + detail.sft.numTensorsEnd - detail.sft.numTensorsStart })}\n`);
    return;
  }
  process.stdout.write(formatStep(r));
}

function formatStep(r: StepBenchResult): string {
  const threads = r.backend === 'wasm' ? `, ${r.threads} wasm thread${r.threads === 1 ? '' : 's'}, matmul ${r.matmul}` : '';
  const lines = [`tiny-e2e training step on ${r.backend}${threads} (median of the timed steps; batch 4 x 128 positions)`, ''];
  lines.push(`${'mode'.padEnd(9)}${'ms/step'.padStart(9)}${'tokens/s'.padStart(10)}${'encoders'.padStart(10)}${'forward'.padStart(9)}${'backward'.padStart(10)}${'clip+adamw'.padStart(12)}`);
  for (const mode of ['pretrain', 'sft'] as const) {
    const p = r.phases[mode];
    const ms = mode === 'pretrain' ? r.pretrainMs : r.sftMs;
    lines.push(
      `${mode.padEnd(9)}${ms.toFixed(1).padStart(9)}${String(r.tokensPerS[mode]).padStart(10)}${p.frozenEncoders.toFixed(1).padStart(10)}` +
        `${p.trainableForward.toFixed(1).padStart(9)}${p.backward.toFixed(1).padStart(10)}${p.clipAndAdamw.toFixed(1).padStart(12)}`,
    );
  }
  const t = (m: 'pretrain' | 'sft') => `${r.detail[m].numTensorsStart} -> ${r.detail[m].numTensorsEnd}`;
  lines.push('', `peak RSS ${r.rssMB} MB; live tensors over the timed steps: pretrain ${t('pretrain')}, sft ${t('sft')}`, '');
  return lines.join('\n');
}

/** The kernel packs live on wasm and webgpu: wasm is measured unless webgpu is asked for (another: an error). */
async function benchKernels(args: BenchArgs): Promise<void> {
  const choice = await backendFromArgs({ ...args, backend: args.backend ?? process.env.MGLLAVA_BACKEND ?? 'wasm' });
  if (choice.name === 'webgpu') return benchWebgpuKernels(args.json);
  if (choice.name !== 'wasm') {
    throw new UsageError(`'bench kernels' measures the wasm or webgpu kernel pack; the backend is '${choice.name}' (use --backend wasm or webgpu)`);
  }
  const { runKernelBench } = await import('../backend/kernels/bench.js');
  const { nativeStatus } = await import('../backend/native.js');
  if (!args.json) process.stdout.write(`${header(nativeStatus())}\n`);
  runKernelBench((r) => process.stdout.write(`${args.json ? JSON.stringify(r) : row(r)}\n`));
}

const COLS: [string, number][] = [['op', 44], ['stock', 8], ['pack', 8], ['plain', 8], ['pack/plain', 11], ['stock ms', 10], ['pack ms', 9]];

function header(n: NativeStatus): string {
  const h = COLS.map(([name, w], i) => (i === 0 ? name.padEnd(w) : name.padStart(w))).join(' ');
  const products = n.active ? `products on the native addon, ${n.isa} x${n.threads}` : 'products on XNNPACK';
  return `${h}\nGFLOP/s columns: stock = wasm kernel as shipped (- : absent), pack = kernel pack (${products}), plain = reference (plain 2-D XNNPACK matmul of the same FLOPs, or the stock forward conv)`;
}

function row(r: BenchResult): string {
  const f = (x: number | null) => (x == null ? '-' : x.toFixed(1));
  const cells = [r.op, f(r.stockGflops), f(r.packGflops), f(r.plainGflops), r.ratio == null ? '-' : r.ratio.toFixed(2), f(r.stockMs), f(r.packMs)];
  return cells.map((c, i) => (i === 0 ? c.padEnd(COLS[i]![1]) : c.padStart(COLS[i]![1]))).join(' ');
}

/** webgpu: GFLOP/s against a plain matmul of the same FLOPs on the device, fused kernels against their composites. */
async function benchWebgpuKernels(json: boolean): Promise<void> {
  const { adapterLine } = await import('../backend/webgpu/adapter.js');
  const { webgpuAdapter } = await import('../backend/webgpu/backend.js');
  const { runWebgpuKernelBench } = await import('../backend/webgpu/bench.js');
  const w = [46, 9, 9, 44, 10, 9, 7];
  const cells = (c: string[]) => c.map((x, i) => (i === 0 || i === 3 ? x.padEnd(w[i]!) : x.padStart(w[i]!))).join(' ');
  if (!json) {
    process.stdout.write(`webgpu on ${adapterLine(webgpuAdapter()!)}; time to the end of the GPU work, median\n`);
    process.stdout.write(`${cells(['op', 'GFLOP/s', 'ms', 'reference', 'GFLOP/s', 'ms', 'ratio'])}\n`);
  }
  const f = (x: number | null) => (x == null ? '-' : x.toFixed(1));
  await runWebgpuKernelBench((r: WebgpuBenchResult) =>
    process.stdout.write(`${json ? JSON.stringify(r) : cells([r.op, f(r.gflops), r.ms.toFixed(2), r.reference, f(r.referenceGflops), r.referenceMs.toFixed(2), r.ratio.toFixed(2)])}\n`),
  );
}

/** The LLM alone at hidden 1024 / 8 layers / 512 positions (bench/llama-step.ts): tokens/s of a training step. */
async function benchLlama(args: BenchArgs): Promise<void> {
  await backendFromArgs(args);
  const { runLlamaBench } = await import('../bench/llama-step.js');
  const r = await runLlamaBench(undefined, Math.max(1, args.steps), Math.max(0, args.warmup));
  process.stdout.write(
    args.json
      ? `${JSON.stringify(r)}\n`
      : `LLaMA h${r.hidden} x ${r.layers} layers, ${r.positions} positions, vocab ${r.vocab} (${(r.params / 1e6).toFixed(0)} M parameters) on ${r.backend}: ` +
          `${r.medianStepMs} ms/step, ${r.tokensPerS} tokens/s (median of ${r.steps}); loss ${r.firstLoss.toFixed(3)} -> ${r.lastLoss.toFixed(3)}\n`,
  );
}
