/**
 * `mgllava demo [--json] [--ablation]`: the tiny-shapes recipe (src/recipes/tiny-shapes/) end to end, or the
 * ablation of the three granularities. Progress on stdout, or on stderr with --json (stdout then holds one
 * JSON line: the summary).
 */
import type { Argv, CommandModule } from 'yargs';
import { MgllavaError, UsageError } from '../errors.js';
import { backendFromArgs, type GlobalArgs } from './command.js';

interface DemoArgs extends GlobalArgs {
  json: boolean;
  ablation: boolean;
  seed?: number;
  seeds: string;
  variants: string;
  workdir?: string;
  resume: boolean;
  smoke: boolean;
  'train-images'?: number;
  'eval-images'?: number;
  'fresh-images'?: number;
  'warmup-steps'?: number;
  'pretrain-steps'?: number;
  'finetune-steps'?: number;
  'batch-size'?: number;
  'train-on-steps'?: number;
  'eval-limit'?: number;
}

const SIZE_OPTIONS = {
  'train-images': 'training images of the synthetic set [3000; --smoke 12]',
  'eval-images': 'held-out eval images (3 questions each) [400; --smoke 4]',
  'warmup-steps': "warm-up steps [the config's; --smoke 2]",
  'pretrain-steps': "pretrain steps [the config's; --smoke 2]",
  'finetune-steps': "finetune steps [the config's; --smoke 3]",
  'batch-size': "micro-batch size of every stage [the configs'; --smoke 4]",
  'eval-limit': 'evaluate only the first N questions of each eval set',
  'fresh-images': 'demo: images of the fresh eval set made with another data seed [400; --smoke 4]',
  'train-on-steps': 'demo: steps of the one "train on" run when small objects are still at chance (0: never) [400; --smoke 2]',
} as const;

/** "0,1" -> [0, 1]; "a,b" checked against `allowed`. */
const list = (s: string) => s.split(',').map((x) => x.trim()).filter(Boolean);

export const demoCommand: CommandModule<GlobalArgs, DemoArgs> = {
  command: 'demo',
  builder: (y) => {
    let b = y
      .option('json', { type: 'boolean', default: false, describe: 'progress on stderr; one JSON line on stdout {accuracy, byCategory, fresh, seconds, run, export, stages, ...}' })
      .option('ablation', { type: 'boolean', default: false, describe: 'instead of the demo: low-res / fusion / full variants, two seeds each, same data and budget (~9 min)' })
      .option('seed', { type: 'number', describe: "demo: training seed (init + data order) [the configs', 0]; runs get a -sN suffix" })
      .option('seeds', { type: 'string', default: '0,1', describe: 'ablation: comma-separated training seeds' })
      .option('variants', { type: 'string', default: 'lowres,fusion,full', describe: 'ablation: comma-separated variants (lowres, fusion, full)' })
      .option('workdir', { type: 'string', describe: 'run in this folder (data/, checkpoints/, exports/ are made there) [the current folder]' })
      .option('resume', { type: 'boolean', default: false, describe: 'continue interrupted stages (--resume auto) instead of starting them afresh' })
      .option('smoke', { type: 'boolean', default: false, describe: 'a few steps on a handful of images (the test suite\'s smoke run)' });
    for (const [k, d] of Object.entries(SIZE_OPTIONS)) b = b.option(k, { type: 'number', describe: d });
    return b
      .check((a) => {
        for (const k of Object.keys(SIZE_OPTIONS)) {
          const v = a[k] as number | undefined;
          if (v !== undefined && !(Number.isInteger(v) && v >= (k === 'train-on-steps' ? 0 : 1))) return `--${k} must be an integer >= ${k === 'train-on-steps' ? 0 : 1}, got ${v}`;
        }
        if (a.seed !== undefined && !(Number.isInteger(a.seed) && a.seed >= 0)) return `--seed must be an integer >= 0, got ${a.seed}`;
        return true;
      })
      .example('$0 demo', 'synthetic data -> warm-up -> pretrain -> finetune -> eval -> export, with a summary table (~2.5 min)')
      .example('$0 demo --json --workdir /tmp/demo', 'the same in another folder; the summary as one JSON line')
      .example('$0 demo --ablation --seeds 0 --variants lowres,full', 'what the object tokens add, one seed') as Argv<DemoArgs>;
  },
  handler: async (args) => {
    const { VARIANTS } = await import('../recipes/tiny-shapes/ablation.js');
    const seeds = list(args.seeds).map((s) => {
      const v = Number(s);
      if (!Number.isInteger(v) || v < 0) throw new UsageError(`--seeds: not a seed: ${s}`);
      return v;
    });
    const variants = list(args.variants).map((v) => {
      if (!(VARIANTS as readonly string[]).includes(v)) throw new UsageError(`--variants: unknown variant ${v} (known: ${VARIANTS.join(', ')})`);
      return v as (typeof VARIANTS)[number];
    });
    if (args.workdir) {
      const { ensureDir } = await import('../run/guard.js');
      await ensureDir(args.workdir, '--workdir'); // under /proc, below a file: one line, no spinning mkdir
      process.chdir(args.workdir);
    }
    const out = (args.json ? process.stderr : process.stdout) as NodeJS.WriteStream;
    const log = { line: (s: string) => out.write(`${s}\n`), stream: out };
    const backend = (await backendFromArgs(args)).name;
    const size = {
      smoke: args.smoke,
      trainImages: args['train-images'],
      evalImages: args['eval-images'],
      warmupSteps: args['warmup-steps'],
      pretrainSteps: args['pretrain-steps'],
      finetuneSteps: args['finetune-steps'],
      batchSize: args['batch-size'],
      evalLimit: args['eval-limit'],
    };
    if (args.ablation) {
      const { runAblation } = await import('../recipes/tiny-shapes/ablation.js');
      const r = await runAblation({ ...size, seeds, variants, resume: args.resume, backend }, log);
      log.line(r.text);
      if (args.json) process.stdout.write(`${JSON.stringify(r.summary)}\n`);
      return;
    }
    const { runDemo } = await import('../recipes/tiny-shapes/demo.js');
    const r = await runDemo({ ...size, seed: args.seed, resume: args.resume, freshImages: args['fresh-images'], trainOnSteps: args['train-on-steps'], backend }, log);
    log.line(r.text);
    if (args.json) process.stdout.write(`${JSON.stringify(r.summary)}\n`);
    if (r.summary.smallAtChance && !args.smoke) {
      throw new MgllavaError('demo: small-object colour accuracy is still near chance after training on: the object tokens did not take', 'training', {
        hint: 'see the summary above; another --seed, or more --finetune-steps',
      });
    }
  },
};
