/**
 * CLI entry: one table of subcommands, each a module of its own, loaded only when its command runs.
 *
 * Startup: `mgllava --help`, `mgllava` and an unknown command load no command module (no tfjs, no sharp): the
 * command list comes from the table below. A command's module is imported when its name is on the command
 * line, and the modules import their heavy dependencies inside their handlers, so `mgllava pretrain --help`
 * and a mistyped flag return at once too.
 *
 * Argument errors (unknown flag, missing required option, bad value) stop here, before any handler runs:
 * yargs validates the whole command line first and `.fail()` throws a UsageError. Every error a command
 * throws is caught once, below, and printed by `reportError` (src/errors.ts): one line and the category's
 * exit code for an MgllavaError, a stack trace and "this is a bug" for anything else.
 */
import { readFileSync } from 'node:fs';
import type { Argv, CommandModule } from 'yargs';
import { reportError, UsageError } from '../errors.js';
import { withGlobalOptions } from './command.js';
import { commandList, rephrase, unknownOptions } from './usage.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyCommand = CommandModule<any, any>;

/**
 * A command: its yargs command string and one-line description (what `mgllava --help` lists; the module's own
 * `command` must be the same, test/cli-help.test.ts checks), and how to load its CommandModule.
 * To add a command, append one entry: `{ command, describe, load: () => import('./x.js').then((m) => m.xCommand) }`.
 */
export interface CommandEntry {
  command: string;
  describe: string;
  load: () => Promise<AnyCommand>;
}

export const COMMANDS: readonly CommandEntry[] = [
  { command: 'doctor', describe: 'Report the chosen TensorFlow.js backend, why, GPU/CUDA status, wasm threads and the memory ceiling', load: () => import('./doctor.js').then((m) => m.doctorCommand) },
  { command: 'golden', describe: 'Build each piece of a golden manifest from its config, run it and compare outputs and gradients', load: () => import('./golden.js').then((m) => m.goldenCommand) },
  {
    command: 'bench <what>',
    describe: 'Benchmarks: kernels (wasm kernel pack vs stock; webgpu kernels vs a plain matmul), step (tiny-e2e training step), llama (the LLM alone, h1024 x 8 layers, 512 positions)',
    load: () => import('./bench.js').then((m) => m.benchCommand),
  },
  { command: 'data <command>', describe: 'Dataset tools: check, show, synth, vocab', load: () => import('./data.js').then((m) => m.dataCommand) },
  { command: 'demo', describe: 'The whole pipeline on the synthetic shapes dataset: data, warm-up, pretrain, finetune, eval, export (--ablation: what each granularity adds)', load: () => import('./demo.js').then((m) => m.demoCommand) },
  { command: 'export <run>', describe: 'Export a run to the PyTorch MG-LLaVA/XTuner or Hugging Face layout', load: () => import('./export.js').then((m) => m.exportCommand) },
  {
    command: 'import',
    describe: 'Convert pretrained weights (CLIP ViT, OpenCLIP/timm ConvNeXt, LLaMA family) to MG-LLaVA names, or a released MG-LLaVA checkpoint to a run',
    load: () => import('./import.js').then((m) => m.importCommand),
  },
  {
    command: 'convert <in>',
    describe: 'Convert a PyTorch checkpoint (.pth/.bin/.pt, DeepSpeed dir, HF .bin shards) to safetensors without running it',
    load: () => import('./convert.js').then((m) => m.convertCommand),
  },
  { command: 'chat <run> [prompt]', describe: 'Answer a prompt about an image with a trained run (REPL without a prompt)', load: () => import('./chat.js').then((m) => m.chatCommand) },
  { command: 'eval <run>', describe: 'Accuracy of a trained run on an eval set (normalised exact match, per category)', load: () => import('./eval.js').then((m) => m.evalCommand) },
  {
    command: 'boxes',
    describe: 'Detect object boxes for a folder of images or a record file with OWLv2 (the box JSON training reads)',
    load: () => import('./boxes.js').then((m) => m.boxesCommand),
  },
  {
    command: 'warmup',
    describe: 'Stage 0: train the encoders on object annotations with throw-away heads (a stand-in for pretrained CLIP/ConvNeXt weights; skip it with real weights)',
    load: () => import('./warmup.js').then((m) => m.warmupCommand),
  },
  { command: 'pretrain', describe: 'Stage 1: train fusion + projectors with frozen encoders and LLM', load: () => import('./train.js').then((m) => m.pretrainCommand) },
  { command: 'finetune', describe: 'Stage 2: train fusion + projectors + the LLM (or its LoRA adapters), from the pretrain checkpoint (init.from)', load: () => import('./train.js').then((m) => m.finetuneCommand) },
];

/** The first word of a command string ('chat <run> [prompt]' -> 'chat'). */
const nameOf = (command: string) => command.split(' ')[0]!;

/**
 * The table as yargs commands: the real module for every command named on the command line (any bare word
 * equal to a command name: loading one too many costs time, never correctness), a stub for the others (it
 * only lists the command and lets yargs suggest it for a typo; it never runs).
 */
async function commandsFor(argv: readonly string[]): Promise<AnyCommand[]> {
  const words = new Set(argv.filter((a) => !a.startsWith('-')));
  return Promise.all(
    COMMANDS.map(async (e): Promise<AnyCommand> => {
      if (!words.has(nameOf(e.command))) {
        const handler = () => {
          throw new Error(`command ${e.command} ran without its module`);
        };
        return { command: e.command, describe: e.describe, builder: (y) => y.strict(false), handler };
      }
      const m = await e.load();
      return { ...m, describe: e.describe };
    }),
  );
}

/** The package version (package.json sits two levels above this file in src/ and in a compiled dist/). */
function packageVersion(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

export async function main(argv: string[]): Promise<number> {
  const debug = process.env.MGLLAVA_DEBUG === '1';
  const columns = Math.min(110, process.stdout.columns || 110);
  // `mgllava`, `mgllava --help`: the command list from the table, without loading yargs or any command.
  if (argv.length === 0 || (argv.length === 1 && (argv[0] === '--help' || argv[0] === '-h'))) {
    process.stdout.write(commandList(COMMANDS, columns));
    return 0;
  }
  if (argv.length === 1 && argv[0] === '--version') {
    process.stdout.write(`${packageVersion()}\n`);
    return 0;
  }
  const { default: yargs } = await import('yargs');
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
    .wrap(columns)
    // yargs types numbers but accepts "abc" as NaN: refuse it before any handler runs.
    .middleware((args) => {
      const hint = { hint: `'mgllava ${commandPath()} --help' lists the options` };
      // The options declared as lists (--set, --records): yargs knows them once the command's builder ran.
      const arrays = new Set((cli as unknown as { getOptions(): { array: string[] } }).getOptions().array);
      // A value not given as --k (or --k=v) on the command line is a positional: named <k>.
      const flag = (k: string) => (argv.some((a) => a === `--${k}` || a.startsWith(`--${k}=`)) ? `--${k}` : `<${k}>`);
      for (const [k, v] of Object.entries(args)) {
        if (k === '_' || k === '$0' || /[A-Z]/.test(k)) continue; // yargs' camelCase twins repeat the dashed names
        if (typeof v === 'number' && Number.isNaN(v)) throw new UsageError(`--${k}: not a number`, hint);
        // A flag given twice becomes a list: refuse it rather than run with one of them (or crash on the list).
        if (Array.isArray(v) && !arrays.has(k)) throw new UsageError(`--${k} given ${v.length} times (${v.map((x) => JSON.stringify(x)).join(', ')}): give it once`, hint);
        // An empty value is never meant: `--out ""` would write into the current folder, `--config ""` read a folder.
        if (v === '' || (Array.isArray(v) && v.includes(''))) throw new UsageError(`${flag(k)}: empty value`, hint);
      }
    }, true)
    .fail((msg, err, usage) => {
      // A command's own error passes through; a .check() message (a string) or yargs' own YError is a usage error.
      if (err instanceof Error && err.name !== 'YError') throw err;
      msg = msg ?? (err instanceof Error ? err.message : null);
      const cmd = commandPath();
      const known = Object.keys((usage as unknown as { getDescriptions(): Record<string, unknown> }).getDescriptions());
      const what = unknownOptions(msg ?? '', known) ?? rephrase(msg ?? 'bad command line');
      throw new UsageError(`${cmd ? `${cmd}: ` : ''}${what}`, { hint: `'mgllava ${cmd ? `${cmd} ` : ''}--help' lists the ${cmd ? 'options' : 'commands'}` });
    });
  for (const c of await commandsFor(argv)) cli.command(c);
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
