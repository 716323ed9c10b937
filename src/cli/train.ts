/** `mgllava warmup|pretrain|finetune`: the training stages (src/train/trainer.ts, src/train/warmup.ts). */
import type { Argv, CommandModule } from 'yargs';
import type { TrainStage } from '../run/layout.js';
import { backendFromArgs, type GlobalArgs } from './command.js';

export interface StageArgs extends GlobalArgs {
  config: string;
  set: string[];
  resume?: string;
  'max-steps'?: number;
  progress: 'auto' | 'bar' | 'lines' | 'off';
}

interface TrainArgs extends StageArgs {
  'dry-run': boolean;
  json: boolean;
}

/** The options every training stage takes (validated here: a bad value stops before any work). */
export function stageOptions<T>(y: Argv<T>, stage: TrainStage) {
  return y
    .option('config', { type: 'string', demandOption: true, describe: `experiment YAML (e.g. configs/tiny-shapes/${stage}.yaml); its 'stage' must be ${stage}` })
    .option('set', {
      type: 'string',
      array: true,
      default: [] as string[],
      describe: 'override a config key, YAML value: --set train.lr=2e-4 --set train.batch_size=8 (part of the config hash)',
    })
    .option('resume', {
      type: 'string',
      describe: "continue a run: 'auto' = newest complete checkpoint of this run dir (fresh start if none), or a step-NNNNNNNN / run dir; the config hash must match",
    })
    .option('max-steps', {
      type: 'number',
      describe: 'stop after this optimizer step and save a checkpoint there; the LR schedule still spans the whole run, so --resume auto continues it',
    })
    .option('progress', {
      choices: ['auto', 'bar', 'lines', 'off'] as const,
      default: 'auto' as const,
      describe: "progress display: a bar on a terminal, plain lines every log_steps otherwise (auto). The loss shown is the last step's ('last'); logged lines add the window mean that metrics.jsonl stores",
    })
    .check((a) => {
      const m = a['max-steps'];
      // A string is yargs' failure message: it ends in the CLI's usage error, before any work.
      return m === undefined || (Number.isInteger(m) && m > 0) ? true : `--max-steps must be a positive integer, got ${m}`;
    });
}

function trainCommand(stage: 'pretrain' | 'finetune'): CommandModule<GlobalArgs, TrainArgs> {
  return {
    command: stage,
    builder: (y) =>
      stageOptions(y, stage)
        .option('dry-run', {
          type: 'boolean',
          default: false,
          describe:
            'print parameter counts and the memory one step needs (weights, grads, AdamW, activations; which GPU sizes it fits) from the config and the ' +
            "pretrained dirs' config.json alone (no weight is read; the data's shapes when its files are there, else the config's bounds); train nothing",
        })
        .option('json', { type: 'boolean', default: false, describe: 'with --dry-run: print the plan as one JSON line (params, memoryGiB, batch, positions, checkpointing, lora)' })
        .example(`$0 ${stage} --config configs/tiny-shapes/${stage}.yaml`, 'train the tiny demo')
        .example(`$0 ${stage} --config configs/tiny-shapes/${stage}.yaml --resume auto`, 'continue after an interruption')
        .example(`$0 ${stage} --config my-${stage}.yaml --set train.eval_records=data/eval.json --set train.eval_steps=100`, 'held-out loss and accuracy every 100 steps') as Argv<TrainArgs>,
    handler: async (args) => {
      const backend = await backendFromArgs(args);
      const { describeBackend } = await import('../backend/select.js');
      const { train } = await import('../train/trainer.js');
      if (!(args['dry-run'] && args.json)) process.stdout.write(`${describeBackend(backend)}\n`); // --json: the plan line alone
      await train({
        configFile: args.config,
        sets: args.set,
        stage,
        resume: args.resume ?? null,
        maxSteps: args['max-steps'] ?? null,
        dryRun: args['dry-run'],
        json: args.json,
        progress: args.progress,
      });
    },
  };
}

export const pretrainCommand = trainCommand('pretrain');
export const finetuneCommand = trainCommand('finetune');
