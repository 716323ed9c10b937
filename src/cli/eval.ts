/**
 * `mgllava eval RUN --records eval.json [--images DIR] [--boxes B.json] [--out P.jsonl] [--json]`: greedy
 * answers to every record's first question, accuracy by normalised exact match overall and per `category`,
 * predictions as JSON Lines. Rules (question/answer, normalisation): src/infer/eval.ts, normalize.ts.
 */
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import type { EvalSummary } from '../infer/eval.js';
import type { RunModel } from '../model/factory.js';
import type { InputFile } from '../io/output-file.js';
import { openRun, runOptions } from './chat.js';
import { backendFromArgs, requireFile, type GlobalArgs } from './command.js';
import { UsageError } from '../errors.js';

interface EvalArgs extends GlobalArgs {
  run: string;
  step?: number;
  records: string;
  images?: string;
  boxes?: string;
  out?: string;
  json: boolean;
  'batch-size': number;
  limit?: number;
  'max-new-tokens': number;
}

export const evalCommand: CommandModule<GlobalArgs, EvalArgs> = {
  command: 'eval <run>',
  builder: (y) =>
    runOptions(y)
      .option('records', { type: 'string', demandOption: true, describe: 'eval records (.json array or .jsonl), one question per record, `category` field' })
      .option('images', { type: 'string', describe: "image folder [default: the run config's data.images, else its records' folder]" })
      .option('boxes', { type: 'string', describe: "box JSON keyed by record id [default: the run config's data.boxes]" })
      .option('out', { type: 'string', describe: 'predictions JSONL [default: RUN/predictions-<records name>-step-NNNNNNNN.jsonl]' })
      .option('json', { type: 'boolean', default: false, describe: 'print one JSON line {accuracy, byCategory, count, predictions, ...}' })
      .option('batch-size', { type: 'number', default: 16, describe: 'questions generated together' })
      .option('limit', { type: 'number', describe: 'evaluate only the first N records' })
      .option('max-new-tokens', { type: 'number', default: 32, describe: 'answer length budget in tokens' })
      .example('$0 eval checkpoints/tiny-shapes-finetune --records data/tiny-shapes/eval.json', 'accuracy overall and per category')
      .example('$0 eval checkpoints/tiny-shapes-finetune --step 400 --records data/tiny-shapes/eval.json --limit 50 --json', 'one JSON line (with the matmul path that ran)')
      .epilog(
        "Each record is one question: its first human message(s) with the first gpt message as the reference (later turns " +
          'are not asked), answered greedily with the run\'s template. Correct = equal after normalisation: NFKC, lower case, ' +
          'punctuation removed except inside words ("3.5", "don\'t"), articles a/an/the dropped, whitespace collapsed.',
      ) as Argv<EvalArgs>,
  handler: async (args) => {
    for (const [flag, v] of [['--batch-size', args['batch-size']], ['--max-new-tokens', args['max-new-tokens']], ['--limit', args.limit]] as const) {
      if (v !== undefined && !(Number.isInteger(v) && v >= 1)) throw new UsageError(`${flag} must be an integer >= 1, got ${v}`);
    }
    await requireFile(args.records, 'eval records');
    const { checkOutputFile } = await import('../io/output-file.js');
    const inputs = [
      { file: args.records, what: 'the eval records' },
      { file: args.boxes, what: 'the box file' },
    ];
    if (args.out) await checkOutputFile(args.out, 'the predictions file (--out)', { inputs }); // before any evaluation
    const backend = await backendFromArgs(args);
    const { SingleBar } = await import('cli-progress');
    const { getTemplate } = await import('../data/templates.js');
    const { imageOptionsOf } = await import('../data/image.js');
    const { runEval } = await import('../infer/eval.js');
    const { imageFolder } = await import('../train/build-data.js');
    const { stepDirName } = await import('../run/layout.js');
    const { matmulPath } = await import('../backend/native.js');
    const run = await openRun(args.run, args.step);
    try {
      const stem = path.basename(args.records).replace(/\.(jsonl?|json)$/, '');
      const out = args.out ?? path.join(run.runDir, `predictions-${stem}-${stepDirName(run.step)}.jsonl`);
      // A read-only run dir: say so now, not after evaluating. --out RUN/config.yaml or metrics.jsonl destroyed the run.
      const what = args.out ? 'the predictions file (--out)' : 'the predictions file (in the run directory; --out names another)';
      await checkOutputFile(out, what, { inputs: [...inputs, ...(await runFiles(run))] });
      const bar = !args.json && process.stderr.isTTY ? new SingleBar({ format: 'eval [{bar}] {value}/{total} questions | {duration}s', stream: process.stderr }) : null;
      let started = false;
      let summary: EvalSummary;
      try {
        summary = await runEval({
          model: run.model,
          tokenizer: run.tokenizer,
          template: getTemplate(run.config.data.template),
          records: args.records,
          images: args.images ?? imageFolder(run.config),
          boxes: args.boxes ?? run.config.data.boxes,
          out,
          batchSize: args['batch-size'],
          limit: args.limit,
          maxNewTokens: args['max-new-tokens'],
          image: imageOptionsOf(run.config.data),
          onProgress: (done, total) => {
            if (!bar) return;
            if (!started) bar.start(total, 0);
            started = true;
            bar.update(done);
          },
        });
      } finally {
        bar?.stop();
      }
      if (args.json) {
        const { accuracy, byCategory, count, correct, predictions, seconds } = summary;
        // The matmul path: answers can differ in the last bits between the native addon and XNNPACK.
        const runtime = { backend: backend.name, matmul: matmulPath(backend.name) };
        process.stdout.write(`${JSON.stringify({ accuracy, byCategory, count, correct, predictions, step: run.step, seconds: round(seconds, 2), runtime })}\n`);
      } else {
        process.stdout.write(report(summary, args.records, run.runDir, run.step));
        process.stdout.write(`backend ${backend.name}, matmul ${matmulPath(backend.name)}\n`);
      }
    } finally {
      run.model.dispose();
    }
  },
};

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

function pct(x: number): string {
  return `${(100 * x).toFixed(1)}%`;
}

function report(s: EvalSummary, records: string, runDir: string, step: number): string {
  const width = Math.max(8, ...Object.keys(s.byCategory).map((k) => k.length));
  const lines = [
    `${records} on ${runDir} step ${step}: ${s.count} questions, ${s.images} images, ${s.seconds.toFixed(1)} s (${(s.count / s.seconds).toFixed(1)} questions/s)`,
    `accuracy ${pct(s.accuracy)} (${s.correct}/${s.count})`,
    ...Object.entries(s.byCategory).map(([k, c]) => `  ${k.padEnd(width)} ${pct(c.accuracy).padStart(6)} (${c.correct}/${c.count})`),
    `predictions: ${s.predictions}`,
  ];
  return `${lines.join('\n')}\n`;
}

/** A run's own files, which predictions must never replace: its top level (earlier predictions aside), the step's files, the tokenizer. */
async function runFiles(run: RunModel): Promise<InputFile[]> {
  const files = async (dir: string) => (await readdir(dir, { withFileTypes: true })).filter((d) => d.isFile()).map((d) => path.join(dir, d.name));
  const own = (await files(run.runDir)).filter((f) => !/^predictions-.*\.jsonl$/.test(path.basename(f)));
  const tok = run.config.data.tokenizer;
  return [
    ...[...own, ...(await files(run.stepDir))].map((file) => ({ file, what: 'a file of the run' })),
    ...(tok.type === 'hf' ? [tok.path, path.join(tok.path, 'tokenizer.json')].map((file) => ({ file, what: "the run's tokenizer" })) : []),
  ];
}
