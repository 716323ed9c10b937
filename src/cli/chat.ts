/**
 * `mgllava chat RUN [PROMPT] [--image IMG [--boxes B.json [--box-id ID]]]`: answer one prompt (streamed to
 * stdout), or a REPL without PROMPT (/reset clears the history, /exit or Ctrl-D quits, Ctrl-C stops an
 * answer). RUN is a run directory (its newest complete step, or --step) or a step-NNNNNNNN directory.
 */
import { access } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import type { Argv, CommandModule } from 'yargs';
import { ConfigError } from '../config/load.js';
import { SafetensorsError } from '../io/safetensors.js';
import { WeightLoadError } from '../nn/module.js';
import { ImageError } from '../data/image.js';
import type { BoxEntry } from '../data/records.js';
import { getTemplate } from '../data/templates.js';
import { ChatLengthError, ChatSession } from '../infer/chat.js';
import { BoxEntryError, findBoxEntry } from '../infer/box-entry.js';
import type { VisualTokens } from '../infer/generate.js';
import { disposeVisual, loadImageInput, visualTokensFor } from '../infer/visual.js';
import { RunDirError, loadRunModel, type RunModel } from '../train/run-dir.js';
import { Rng } from '../util/rng.js';
import { backendFromArgs, UserError, type GlobalArgs } from './command.js';

interface ChatArgs extends GlobalArgs {
  run: string;
  prompt?: string;
  image?: string;
  boxes?: string;
  'box-id'?: string;
  step?: number;
  temperature: number;
  'top-p': number;
  'max-new-tokens': number;
  system?: string;
  seed: number;
}

/** Options chat and eval share. */
export function runOptions<T>(y: Argv<T>) {
  return y
    .positional('run', { type: 'string', demandOption: true, describe: 'run directory (newest complete step) or a step-NNNNNNNN directory' })
    .option('step', { type: 'number', describe: 'checkpoint step of the run directory (default: the newest complete one)' });
}

/** loadRunModel with its errors turned into user errors. */
export async function openRun(run: string, step: number | undefined): Promise<RunModel> {
  try {
    return await loadRunModel(run, step === undefined ? {} : { step });
  } catch (e) {
    if (e instanceof RunDirError || e instanceof ConfigError || e instanceof WeightLoadError || e instanceof SafetensorsError) {
      throw new UserError((e as Error).message);
    }
    throw e;
  }
}

export const chatCommand: CommandModule<GlobalArgs, ChatArgs> = {
  command: 'chat <run> [prompt]',
  describe: 'Answer a prompt about an image with a trained run (REPL without a prompt)',
  builder: (y) =>
    runOptions(y)
      .positional('prompt', { type: 'string', describe: 'the question; without it, an interactive session (/reset, /exit)' })
      .option('image', { type: 'string', describe: 'image file (any format sharp reads); without it, a text-only chat' })
      .option('boxes', {
        type: 'string',
        describe:
          "detector boxes: a box JSON (entry keyed by the image's file name, or its name without extension, or --box-id) " +
          'or a file holding one {boxes, labels, scores} entry; without it the image gets the dummy box',
      })
      .option('box-id', { type: 'string', describe: 'key of the entry to use in --boxes (e.g. a record id)' })
      .option('temperature', { type: 'number', default: 0, describe: '0 = greedy; > 0 samples from softmax(logits / T)' })
      .option('top-p', { type: 'number', default: 1, describe: 'nucleus sampling mass in (0, 1] (with --temperature > 0)' })
      .option('max-new-tokens', { type: 'number', default: 256, describe: 'answer length budget in tokens' })
      .option('system', { type: 'string', describe: "system text for the template's SYSTEM slot (MG-LLaVA trains without one)" })
      .option('seed', { type: 'number', default: 0, describe: 'sampling seed (same seed, same answers)' }) as Argv<ChatArgs>,
  handler: async (args) => {
    if (args['box-id'] !== undefined && !args.boxes) throw new UserError('--box-id needs --boxes');
    if (args.boxes && !args.image) throw new UserError('--boxes needs --image');
    if (!(Number.isInteger(args['max-new-tokens']) && args['max-new-tokens'] >= 1)) throw new UserError(`--max-new-tokens must be an integer >= 1, got ${args['max-new-tokens']}`);
    if (!(args.temperature >= 0)) throw new UserError(`--temperature must be >= 0, got ${args.temperature}`);
    if (!(args['top-p'] > 0 && args['top-p'] <= 1)) throw new UserError(`--top-p must be in (0, 1], got ${args['top-p']}`);
    if (args.image) await requireFile(args.image, 'image');
    let entry: BoxEntry | null = null;
    if (args.boxes) {
      try {
        entry = (await findBoxEntry(args.boxes, args.image!, args['box-id'])).entry;
      } catch (e) {
        if (e instanceof BoxEntryError) throw new UserError(e.message);
        throw e;
      }
    }
    await backendFromArgs(args);
    const run = await openRun(args.run, args.step);
    let visual: VisualTokens | null = null;
    try {
      if (args.image) {
        if (!entry && run.model.objects) process.stderr.write(`note: no --boxes: ${args.image} gets the dummy box (one empty object token)\n`);
        try {
          visual = visualTokensFor(run.model, [await loadImageInput(run.model, args.image, entry)])[0]!;
        } catch (e) {
          if (e instanceof ImageError) throw new UserError(e.message);
          throw e;
        }
      }
      const session = new ChatSession({
        model: run.model,
        tokenizer: run.tokenizer,
        template: getTemplate(run.config.data.template),
        visual,
        system: args.system,
        maxNewTokens: args['max-new-tokens'],
        maxLength: run.config.data.max_length,
        temperature: args.temperature,
        topP: args['top-p'],
        rng: new Rng(args.seed),
      });
      if (args.prompt !== undefined) {
        try {
          await session.ask(args.prompt, { onToken: (d) => process.stdout.write(d) });
        } catch (e) {
          if (e instanceof ChatLengthError) throw new UserError(e.message);
          throw e;
        }
        process.stdout.write('\n');
      } else {
        process.stderr.write(
          `${run.runDir} step ${run.step} (template ${run.config.data.template}${args.image ? `, image ${args.image}` : ', no image'}). ` +
            '/reset clears the history, /exit quits, Ctrl-C stops an answer.\n',
        );
        await repl(session);
      }
    } finally {
      if (visual) disposeVisual(visual);
      run.model.dispose();
    }
  },
};

async function requireFile(file: string, what: string): Promise<void> {
  try {
    await access(file);
  } catch {
    throw new UserError(`${what} not found: ${file}`);
  }
}

async function repl(session: ChatSession): Promise<void> {
  const tty = process.stdin.isTTY === true;
  const rl = createInterface({ input: process.stdin, output: process.stdout, prompt: '> ', terminal: tty });
  let answering: AbortController | null = null;
  rl.on('SIGINT', () => {
    if (answering) answering.abort();
    else rl.close();
  });
  const prompt = () => tty && rl.prompt();
  prompt();
  // Lines that arrive while an answer is generated are queued by the iterator (piped input works too).
  for await (const raw of rl) {
    const line = raw.trim();
    if (line === '/exit' || line === '/quit') break;
    if (line === '/reset') {
      session.reset();
      process.stderr.write('(history cleared)\n');
    } else if (line.startsWith('/')) {
      process.stderr.write(`unknown command ${line.split(/\s/)[0]} (/reset, /exit)\n`);
    } else if (line !== '') {
      answering = new AbortController();
      try {
        const g = await session.ask(line, { onToken: (d) => process.stdout.write(d), signal: answering.signal });
        process.stdout.write(g.finish === 'aborted' ? ' [stopped]\n' : '\n');
      } catch (e) {
        if (!(e instanceof ChatLengthError)) throw e;
        process.stderr.write(`${e.message}\n`);
      } finally {
        answering = null;
      }
    }
    prompt();
  }
  rl.close();
}
