/**
 * CLI entry: one table of subcommands, each a function in its own file.
 *
 * Argument errors (unknown flag, missing required option, bad value) stop here, before any handler runs:
 * yargs validates the whole command line first and `.fail()` throws a UsageError. Every error a command
 * throws is caught once, below, and printed by `reportError` (src/errors.ts): one line and the category's
 * exit code for an MgllavaError, a stack trace and "this is a bug" for anything else.
 */
import { readFileSync } from 'node:fs';
import yargs, { type Argv, type CommandModule } from 'yargs';
import { reportError, UsageError } from '../errors.js';
import { withGlobalOptions } from './command.js';
import { doctorCommand } from './doctor.js';
import { benchCommand } from './bench.js';
import { dataCommand } from './data.js';
import { goldenCommand } from './golden.js';
import { exportCommand } from './export.js';
import { importCommand } from './import.js';
import { convertCommand } from './convert.js';
import { chatCommand } from './chat.js';
import { evalCommand } from './eval.js';
import { boxesCommand } from './boxes.js';
import { finetuneCommand, pretrainCommand } from './train.js';
import { warmupCommand } from './warmup.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
const COMMANDS: CommandModule<any, any>[] = [doctorCommand, goldenCommand, benchCommand, dataCommand, exportCommand, importCommand, convertCommand, chatCommand, evalCommand, boxesCommand, warmupCommand, pretrainCommand, finetuneCommand];

/** The package version (package.json sits two levels above this file in src/ and in a compiled dist/). */
function packageVersion(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

/** Edit distance with adjacent transpositions (optimal string alignment), for "did you mean" on a mistyped flag. */
function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i]![j] = Math.min(d[i]![j]!, d[i - 2]![j - 2]! + 1);
    }
  }
  return d[a.length]![b.length]!;
}

/** yargs' validation messages in our words: "--progress: 'sideways' is not one of auto, bar, lines, off". */
function rephrase(msg: string): string {
  const invalid = [...msg.matchAll(/Argument: (\S+), Given: (.*?), Choices: (.*)/g)];
  if (invalid.length) return invalid.map((m) => `--${m[1]}: ${m[2]} is not one of ${m[3]!.replace(/"/g, '')}`).join('; ');
  const missing = /^Missing required arguments?: (.*)$/.exec(msg);
  if (missing) return `missing required option ${missing[1]!.split(', ').map((n) => `--${n}`).join(', ')}`;
  return msg.replace(/\s*\n\s*/g, ' ');
}

/** yargs' "Unknown arguments: max-step, maxStep" -> "unknown option --max-step (did you mean --max-steps?)". */
function unknownOptions(msg: string, known: string[]): string | null {
  const m = /^Unknown arguments?: (.*)$/.exec(msg);
  if (!m) return null;
  const dashed = (s: string) => s.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
  const given = m[1]!.split(', ');
  // yargs also lists the camelCase twin of a dashed name: keep one spelling.
  const names = given.filter((n) => !(/[A-Z]/.test(n) && given.includes(dashed(n))));
  const flag = (n: string) => (n.length === 1 ? `-${n}` : `--${n}`);
  const parts = names.map((n) => {
    const best = known
      .map((k) => ({ k, d: editDistance(n, k) }))
      .filter((x) => x.d <= Math.max(1, Math.floor(n.length / 3)))
      .sort((a, b) => a.d - b.d)[0];
    return best ? `${flag(n)} (did you mean ${flag(best.k)}?)` : flag(n);
  });
  return `unknown option${parts.length > 1 ? 's' : ''} ${parts.join(', ')}`;
}

export async function main(argv: string[]): Promise<number> {
  const debug = process.env.MGLLAVA_DEBUG === '1';
  let cli: Argv | null = null;
  /** The command words of this command line ("data check"), for the usage hint. */
  const commandPath = (): string => {
    try {
      // yargs keeps the command words it has matched in its (internal) context.
      return (cli as unknown as { getInternalMethods(): { getContext(): { commands: string[] } } }).getInternalMethods().getContext().commands.join(' ');
    } catch {
      return '';
    }
  };
  cli = withGlobalOptions(yargs(argv))
    .scriptName('mgllava')
    .usage('$0 <command> [options]\n\nTrain and run MG-LLaVA on TensorFlow.js.')
    .strict()
    .demandCommand(1, 'Name a command (see the list above).')
    .recommendCommands()
    .help()
    .alias('h', 'help')
    .version(packageVersion())
    // Never process.exit (output must flush, tests call main()): --help / --version return and run no handler.
    .exitProcess(false)
    .wrap(Math.min(110, process.stdout.columns || 110))
    // yargs types numbers but accepts "abc" as NaN: refuse it before any handler runs.
    .middleware((args) => {
      for (const [k, v] of Object.entries(args)) {
        if (typeof v === 'number' && Number.isNaN(v) && !/[A-Z]/.test(k)) throw new UsageError(`--${k}: not a number`, { hint: `'mgllava ${commandPath()} --help' lists the options` });
      }
    }, true)
    .fail((msg, err, usage) => {
      if (err) throw err;
      const cmd = commandPath();
      const known = Object.keys((usage as unknown as { getDescriptions(): Record<string, unknown> }).getDescriptions());
      const what = unknownOptions(msg ?? '', known) ?? rephrase(msg ?? 'bad command line');
      throw new UsageError(`${cmd ? `${cmd}: ` : ''}${what}`, { hint: `'mgllava ${cmd ? `${cmd} ` : ''}--help' lists the ${cmd ? 'options' : 'commands'}` });
    });
  for (const c of COMMANDS) cli.command(c);
  if (argv.length === 0) {
    // `mgllava` alone: the command list (not an error).
    process.stdout.write(`${await cli.getHelp()}\n`);
    return 0;
  }
  try {
    await cli.parseAsync();
    // Handlers report failure through process.exitCode (never process.exit: output must flush).
    return Number(process.exitCode ?? 0);
  } catch (e) {
    const r = reportError(e, debug);
    process.stderr.write(r.text);
    return r.exitCode;
  }
}
