/** `mgllava bench kernels|step`: benchmarks that print numbers. */
import type { CommandModule } from 'yargs';
import { notBuiltYet, type GlobalArgs } from './command.js';

export const benchCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'bench <what>',
  describe: 'Benchmarks: kernels (wasm kernel pack vs stock), step (tiny-e2e training step)',
  builder: (y) =>
    y
      .positional('what', { choices: ['kernels', 'step'] as const, demandOption: true })
      .option('json', { type: 'boolean', default: false, describe: 'one JSON line per result' }),
  handler: async () => notBuiltYet('bench', 2),
};
