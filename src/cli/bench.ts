/** `mgllava bench kernels|step`: benchmarks that print numbers. */
import type { CommandModule } from 'yargs';
import { runKernelBench, type BenchResult } from '../backend/kernels/bench.js';
import { backendFromArgs, notBuiltYet, UserError, type GlobalArgs } from './command.js';

interface BenchArgs extends GlobalArgs {
  what: 'kernels' | 'step';
  json: boolean;
}

export const benchCommand: CommandModule<GlobalArgs, BenchArgs> = {
  command: 'bench <what>',
  describe: 'Benchmarks: kernels (wasm kernel pack vs stock), step (tiny-e2e training step)',
  builder: (y) =>
    y
      .positional('what', { choices: ['kernels', 'step'] as const, demandOption: true })
      .option('json', { type: 'boolean', default: false, describe: 'one JSON line per result' }),
  handler: async (args) => {
    if (args.what === 'step') notBuiltYet('bench step', 2);
    await benchKernels(args);
  },
};

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
  return `${h}\n${'GFLOP/s columns: stock = wasm kernel as shipped (- : absent), pack = kernel pack, plain = reference'}`;
}

function row(r: BenchResult): string {
  const f = (x: number | null) => (x == null ? '-' : x.toFixed(1));
  const cells = [r.op, f(r.stockGflops), f(r.packGflops), f(r.plainGflops), r.ratio == null ? '-' : r.ratio.toFixed(2), f(r.stockMs), f(r.packMs)];
  return cells.map((c, i) => (i === 0 ? c.padEnd(COLS[i]![1]) : c.padStart(COLS[i]![1]))).join(' ');
}
