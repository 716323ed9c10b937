/**
 * `mgllava chat RUN [PROMPT] [--image IMG [--boxes B.json [--box-id ID] | --detector OWLV2_DIR [--tags ...]]]`: answer one prompt (streamed to
 * stdout), or a REPL without PROMPT (/reset clears the history, /exit or Ctrl-D quits, Ctrl-C stops an
 * answer). RUN is a run directory (its newest complete step, or --step) or a step-NNNNNNNN directory.
 */
import { createInterface } from 'node:readline';
import type { Argv, CommandModule } from 'yargs';
import type { BoxEntry } from '../data/records.js';
import type { ChatSession } from '../infer/chat.js';
import type { VisualTokens } from '../infer/generate.js';
import type { RunModel } from '../model/factory.js';
import { backendFromArgs, requireFile, type GlobalArgs } from './command.js';
import { UsageError } from '../errors.js';

/** Answer budget without --max-new-tokens: this many tokens, or fewer when the run's context has less room left. */
const DEFAULT_ANSWER_TOKENS = 256;

interface ChatArgs extends GlobalArgs {
  run: string;
  prompt?: string;
  image?: string;
  boxes?: string;
  'box-id'?: string;
  step?: number;
  temperature: number;
  'top-p': number;
  'max-new-tokens'?: number;
  system?: string;
  seed: number;
  'show-boxes'?: string;
  overwrite: boolean;
  detector?: string;
  tags?: string;
  'tags-file'?: string;
  threshold?: number;
}

/** Options chat and eval share. */
export function runOptions<T>(y: Argv<T>) {
  return y
    .positional('run', { type: 'string', demandOption: true, describe: 'run directory (newest complete step) or a step-NNNNNNNN directory' })
    .option('step', { type: 'number', describe: 'checkpoint step of the run directory (default: the newest complete one)' });
}

/** The run's model at `step` (default: the newest complete one). */
export async function openRun(run: string, step: number | undefined): Promise<RunModel> {
  const { loadRunModel } = await import('../model/factory.js');
  return loadRunModel(run, step === undefined ? {} : { step });
}

export const chatCommand: CommandModule<GlobalArgs, ChatArgs> = {
  command: 'chat <run> [prompt]',
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
      .option('max-new-tokens', {
        type: 'number',
        describe: `answer length budget in tokens [default: what fits in the run's data.max_length after the prompt, at most ${DEFAULT_ANSWER_TOKENS}]`,
      })
      .option('system', { type: 'string', describe: "system text for the template's SYSTEM slot (MG-LLaVA trains without one)" })
      .option('seed', { type: 'number', default: 0, describe: 'sampling seed (same seed, same answers)' })
      .option('show-boxes', { type: 'string', describe: 'write a PNG of the image as the model sees it: aux image with the object-token boxes numbered, low-res view beside it' })
      .option('overwrite', { type: 'boolean', default: false, describe: 'replace an existing --show-boxes file' })
      .option('detector', { type: 'string', describe: "detect the image's boxes now with OWLv2 (a Hugging Face OWLv2 directory; see mgllava boxes) instead of --boxes; they are printed" })
      .option('tags', { type: 'string', describe: 'with --detector: comma-separated tags to look for (default: the 80 COCO classes)' })
      .option('tags-file', { type: 'string', describe: 'with --detector: a file of tags, one per line or comma-separated' })
      .option('threshold', { type: 'number', describe: 'with --detector: score threshold [default: 0.2]' })
      .example('$0 chat checkpoints/tiny-shapes-finetune --image data/tiny-shapes/images/eval-00003.png --boxes data/tiny-shapes/boxes.json --box-id eval-00003-small_color "what color is the small square ?"', 'one answer')
      .example('$0 chat checkpoints/tiny-shapes-finetune --image photo.png', 'an interactive session about an image (/reset, /exit)')
      .example('$0 chat my-run --image photo.jpg --detector models/owlv2-base-patch16-ensemble --tags "dog, frisbee" "what is the dog doing?"', 'boxes detected now with OWLv2 (printed), fed to the object tokens') as Argv<ChatArgs>,
  handler: async (args) => {
    if (args['box-id'] !== undefined && !args.boxes) throw new UsageError('--box-id needs --boxes');
    if (args.boxes && !args.image) throw new UsageError('--boxes needs --image');
    if (args['show-boxes'] && !args.image) throw new UsageError('--show-boxes needs --image');
    if (args.detector && !args.image) throw new UsageError('--detector needs --image');
    if (args.detector && args.boxes) throw new UsageError('give --boxes or --detector, not both');
    if ((args.tags !== undefined || args['tags-file'] !== undefined || args.threshold !== undefined) && !args.detector) throw new UsageError('--tags, --tags-file and --threshold go with --detector');
    const maxNew = args['max-new-tokens'];
    if (maxNew !== undefined && !(Number.isInteger(maxNew) && maxNew >= 1)) throw new UsageError(`--max-new-tokens must be an integer >= 1, got ${maxNew}`);
    if (!(args.temperature >= 0 && Number.isFinite(args.temperature))) throw new UsageError(`--temperature must be a finite number >= 0, got ${args.temperature}`);
    if (!(Number.isSafeInteger(args.seed) && args.seed >= 0)) throw new UsageError(`--seed must be an integer >= 0, got ${args.seed}`); // Rng would take -1 or 1.5 silently
    if (!(args['top-p'] > 0 && args['top-p'] <= 1)) throw new UsageError(`--top-p must be in (0, 1], got ${args['top-p']}`);
    if (args.image) await requireFile(args.image, 'image');
    const { checkOutputFile } = await import('../io/output-file.js');
    const inputs = [
      { file: args.image, what: 'the image (--image)' },
      { file: args.boxes, what: 'the box file (--boxes)' },
    ];
    if (args['show-boxes']) {
      // An existing PNG may be another picture of the user's: replaced only when asked.
      await checkOutputFile(args['show-boxes'], 'the image (--show-boxes)', { ext: '.png', inputs, existing: { flag: '--show-boxes', overwrite: args.overwrite } });
    }
    const { findBoxEntry } = await import('../infer/box-entry.js');
    let entry: BoxEntry | null = null;
    if (args.boxes) {
      entry = (await findBoxEntry(args.boxes, args.image!, args['box-id'])).entry;
    }
    await backendFromArgs(args);
    const { getTemplate } = await import('../data/templates.js');
    const { imageOptionsOf } = await import('../data/image.js');
    const { saveView, viewOfInput } = await import('../data/view.js');
    const { ChatSession } = await import('../infer/chat.js');
    const { disposeVisual, imageSizesOf, loadImageInput, visualTokensFor } = await import('../infer/visual.js');
    const { Rng } = await import('../util/rng.js');
    const run = await openRun(args.run, args.step);
    let visual: VisualTokens | null = null;
    try {
      if (args.image) {
        if (args.detector) {
          const { chatDetectorBoxes } = await import('../detect/chat-boxes.js');
          const o = { detector: args.detector, image: args.image, tags: args.tags, tagsFile: args['tags-file'], threshold: args.threshold, decode: imageOptionsOf(run.config.data) };
          entry = await chatDetectorBoxes(o, (line) => process.stderr.write(`${line}\n`));
        }
        if (!entry && run.model.objects) process.stderr.write(`note: no --boxes: ${args.image} gets the dummy box (one empty object token)\n`);
        const input = await loadImageInput(run.model, args.image, entry, imageOptionsOf(run.config.data));
        if (args['show-boxes']) await saveView(args['show-boxes'], viewOfInput(input, imageSizesOf(run.model.config)));
        visual = visualTokensFor(run.model, [input])[0]!;
      }
      const session = new ChatSession({
        model: run.model,
        tokenizer: run.tokenizer,
        template: getTemplate(run.config.data.template),
        visual,
        system: args.system,
        maxNewTokens: maxNew ?? { fit: DEFAULT_ANSWER_TOKENS },
        maxLength: run.config.data.max_length,
        temperature: args.temperature,
        topP: args['top-p'],
        rng: new Rng(args.seed),
      });
      if (args.prompt !== undefined) {
        await session.ask(args.prompt, { onToken: (d) => process.stdout.write(d) });
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

async function repl(session: ChatSession): Promise<void> {
  const { ChatLengthError } = await import('../infer/chat.js');
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
