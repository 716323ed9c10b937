/** `mgllava bench kernels|step`: benchmarks that print numbers. */
import type { CommandModule } from 'yargs';
import { runKernelBench, type BenchResult } from '../backend/kernels/bench.js';
import { profileStep, runStepBench, type StepBenchResult } from '../bench/tiny-e2e.js';
import { formatProfile } from '../bench/profile.js';
import { nativeStatus } from '../backend/native.js';
import { backendFromArgs, UserError, type GlobalArgs } from './command.js';

interface BenchArgs extends GlobalArgs {
  what: 'kernels' | 'step';
  json: boolean;
  steps: number;
  warmup: number;
  profile: boolean;
}

export const benchCommand: CommandModule<GlobalArgs, BenchArgs> = {
  command: 'bench <what>',
  describe: 'Benchmarks: kernels (wasm kernel pack vs stock), step (tiny-e2e training step)',
  builder: (y) =>
    y
      .positional('what', { choices: ['kernels', 'step'] as const, demandOption: true })
      .option('json', { type: 'boolean', default: false, describe: 'one JSON line per result' })
      .option('steps', { type: 'number', default: 10, describe: 'step: timed steps per mode (median reported)' })
      .option('warmup', { type: 'number', default: 3, describe: 'step: untimed steps before timing' })
      .option('profile', { type: 'boolean', default: false, describe: 'step: time every kernel per phase instead (median of --steps profiled steps)' }),
  handler: async (args) => {
    if (args.what === 'step') await benchStep(args);
    else await benchKernels(args);
  },
};

/**
 * One training step of the tiny-e2e configuration (the same model, batch and recipe as the PyTorch peer
 * ../shared/torch-reference/timing_ref.py), pretrain and sft modes.
 */
async function benchStep(args: BenchArgs): Promise<void> {
  await backendFromArgs(args);
  if (args.profile) {
    for (const mode of ['pretrain', 'sft'] as const) {
      const p = profileStep(mode, args.warmup, { byShape: ['BatchMatMul'] }, Math.max(1, Math.min(args.steps, 10)));
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
  const r = runStepBench(args.warmup, args.steps);
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

/** The kernel pack lives on wasm: that is the backend measured unless another is asked for (an error). */
async function benchKernels(args: BenchArgs): Promise<void> {
  const choice = await backendFromArgs({ ...args, backend: args.backend ?? process.env.MGLLAVA_BACKEND ?? 'wasm' });
  if (choice.name !== 'wasm') {
    throw new UserError(`'bench kernels' measures the wasm kernel pack; the backend is '${choice.name}' (use --backend wasm)`);
  }
  if (!args.json) process.stdout.write(`${header()}\n`);
  runKernelBench((r) => process.stdout.write(`${args.json ? JSON.stringify(r) : row(r)}\n`));
}

const COLS: [string, number][] = [['op', 44], ['stock', 8], ['pack', 8], ['plain', 8], ['pack/plain', 11], ['stock ms', 10], ['pack ms', 9]];

function header(): string {
  const h = COLS.map(([name, w], i) => (i === 0 ? name.padEnd(w) : name.padStart(w))).join(' ');
  const n = nativeStatus();
  const products = n.active ? `products on the native addon, ${n.isa} x${n.threads}` : 'products on XNNPACK';
  return `${h}\nGFLOP/s columns: stock = wasm kernel as shipped (- : absent), pack = kernel pack (${products}), plain = reference (plain 2-D XNNPACK matmul of the same FLOPs, or the stock forward conv)`;
}

function row(r: BenchResult): string {
  const f = (x: number | null) => (x == null ? '-' : x.toFixed(1));
  const cells = [r.op, f(r.stockGflops), f(r.packGflops), f(r.plainGflops), r.ratio == null ? '-' : r.ratio.toFixed(2), f(r.stockMs), f(r.packMs)];
  return cells.map((c, i) => (i === 0 ? c.padEnd(COLS[i]![1]) : c.padStart(COLS[i]![1]))).join(' ');
}
