/** `mgllava golden --dir DIR`: check the model against a golden set from the PyTorch reference. */
import type { CommandModule } from 'yargs';
import { formatReport, runGolden } from '../golden/run.js';
import { RUNNERS } from '../golden/pieces/index.js';
import { backendFromArgs, type GlobalArgs } from './command.js';

interface GoldenArgs extends GlobalArgs {
  dir: string;
  only?: string;
  json: boolean;
}

export const goldenCommand: CommandModule<GlobalArgs, GoldenArgs> = {
  command: 'golden',
  describe: 'Build each piece of a golden manifest from its config, run it and compare outputs and gradients',
  builder: (y) =>
    y
      .option('dir', { type: 'string', demandOption: true, describe: 'golden set folder (holds manifest.json)' })
      .option('only', { type: 'string', describe: 'comma-separated piece names (e.g. clip_vit,boxes.json)' })
      .option('json', { type: 'boolean', default: false, describe: 'print one JSON object instead of the table' }),
  handler: async (args) => {
    await backendFromArgs(args);
    const only = args.only ? args.only.split(',').map((s) => s.trim()).filter(Boolean) : undefined;
    const report = await runGolden(args.dir, RUNNERS, only);
    if (args.json) {
      const pieces = Object.fromEntries(
        Object.entries(report.pieces).map(([n, p]) => [
          n,
          { ok: p.ok, maxAbsErr: p.maxAbsErr, maxRelErr: p.maxRelErr, ...(p.reason ? { reason: p.reason } : {}) },
        ]),
      );
      process.stdout.write(`${JSON.stringify({ ok: report.ok, pieces })}\n`);
    } else {
      process.stdout.write(formatReport(report));
    }
    if (!report.ok) process.exitCode = 1;
  },
};
