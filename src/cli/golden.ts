/** `mgllava golden --dir DIR`: check the model against a golden set from the PyTorch reference. */
import type { CommandModule } from 'yargs';
import { backendFromArgs, type GlobalArgs } from './command.js';
import { UsageError } from '../errors.js';

interface GoldenArgs extends GlobalArgs {
  dir: string;
  only?: string;
  json: boolean;
}

export const goldenCommand: CommandModule<GlobalArgs, GoldenArgs> = {
  command: 'golden',
  builder: (y) =>
    y
      .option('dir', { type: 'string', demandOption: true, describe: 'golden set folder (holds manifest.json)' })
      .option('only', { type: 'string', describe: 'comma-separated piece names (e.g. clip_vit,boxes.json)' })
      .option('json', { type: 'boolean', default: false, describe: 'print one JSON object instead of the table' })
      .example('$0 golden --dir ../shared/golden/public', 'every piece of the public golden set')
      .example('$0 golden --dir ../shared/golden/public --only llama_b,fuse_v0 --json', 'two pieces, as JSON'),
  handler: async (args) => {
    await backendFromArgs(args);
    const { formatReport, runGolden } = await import('../golden/run.js');
    const { RUNNERS } = await import('../golden/pieces/index.js');
    const only = args.only !== undefined ? args.only.split(',').map((s) => s.trim()).filter(Boolean) : undefined;
    if (only?.length === 0) throw new UsageError(`--only ${JSON.stringify(args.only)} names no piece`); // else nothing would run, and the set would "pass"
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
