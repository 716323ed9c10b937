/**
 * CLI entry: one table of subcommands, each a function in its own file.
 */
import yargs, { type CommandModule } from 'yargs';
import { BackendError } from '../backend/select.js';
import { UserError, withGlobalOptions } from './command.js';
import { doctorCommand } from './doctor.js';
import { benchCommand } from './bench.js';
import { dataCommand } from './data.js';
import { goldenCommand } from './golden.js';
import { exportCommand } from './export.js';
import { importCommand } from './import.js';
import { chatCommand } from './chat.js';
import { evalCommand } from './eval.js';
import { placeholderCommands } from './placeholders.js';
import { finetuneCommand, pretrainCommand } from './train.js';
import { warmupCommand } from './warmup.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
const COMMANDS: CommandModule<any, any>[] = [doctorCommand, goldenCommand, benchCommand, dataCommand, exportCommand, importCommand, chatCommand, evalCommand, warmupCommand, pretrainCommand, finetuneCommand, ...placeholderCommands];

export async function main(argv: string[]): Promise<number> {
  let exitCode = 0;
  const cli = withGlobalOptions(yargs(argv))
    .scriptName('mgllava')
    .usage('$0 <command> [options]\n\nTrain and run MG-LLaVA on TensorFlow.js.')
    .strict()
    .demandCommand(1, 'Name a command (see the list above).')
    .recommendCommands()
    .help()
    .alias('h', 'help')
    .version(false)
    .wrap(Math.min(110, process.stdout.columns || 110))
    .fail((msg, err) => {
      if (err) throw err;
      process.stderr.write(`mgllava: ${msg}\nRun 'mgllava --help' for usage.\n`);
      exitCode = 2;
    });
  for (const c of COMMANDS) cli.command(c);
  try {
    await cli.parseAsync();
    // Handlers report failure through process.exitCode (never process.exit: output must flush).
    return Number(process.exitCode ?? exitCode);
  } catch (e) {
    if (e instanceof UserError || e instanceof BackendError) {
      process.stderr.write(`mgllava: ${e.message}\n`);
      return e instanceof UserError ? e.exitCode : 1;
    }
    throw e;
  }
}

