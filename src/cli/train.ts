/** `mgllava pretrain|finetune`: the two training stages (src/train/trainer.ts). */
import type { Argv, CommandModule } from 'yargs';
import { describeBackend } from '../backend/select.js';
import { train } from '../train/trainer.js';
import type { Stage } from '../model/mgllava.js';
import { backendFromArgs, type GlobalArgs } from './command.js';

interface TrainArgs extends GlobalArgs {
  config: string;
  set: string[];
  resume?: string;
  'max-steps'?: number;
  'dry-run': boolean;
  progress: 'auto' | 'bar' | 'lines' | 'off';
}

function trainCommand(stage: Stage, describe: string): CommandModule<GlobalArgs, TrainArgs> {
  return {
    command: stage,
    describe,
    builder: (y) =>
      y
        .option('config', { type: 'string', demandOption: true, describe: `experiment YAML (e.g. configs/tiny-shapes/${stage}.yaml); its 'stage' must be ${stage}` })
        .option('set', {
          type: 'string',
          array: true,
          default: [],
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
        .option('dry-run', {
          type: 'boolean',
          default: false,
          describe: 'check config and data, build the model, print parameter counts and a memory estimate; train nothing (refuses on wasm above the memory ceiling)',
        })
        .option('progress', {
          choices: ['auto', 'bar', 'lines', 'off'] as const,
          default: 'auto' as const,
          describe: 'progress display: a bar on a terminal, plain lines every log_steps otherwise (auto)',
        })
        .example(`$0 ${stage} --config configs/tiny-shapes/${stage}.yaml`, 'train the tiny demo')
        .example(`$0 ${stage} --config configs/tiny-shapes/${stage}.yaml --resume auto`, 'continue after an interruption') as Argv<TrainArgs>,
    handler: async (args) => {
      const backend = await backendFromArgs(args);
      process.stdout.write(`${describeBackend(backend)}\n`);
      await train({
        configFile: args.config,
        sets: args.set,
        stage,
        resume: args.resume ?? null,
        maxSteps: args['max-steps'] ?? null,
        dryRun: args['dry-run'],
        progress: args.progress,
      });
    },
  };
}

export const pretrainCommand = trainCommand('pretrain', 'Stage 1: train fusion + projectors with frozen encoders and LLM');
export const finetuneCommand = trainCommand('finetune', 'Stage 2: train fusion + projectors + LLM, from the pretrain checkpoint (init.from)');
