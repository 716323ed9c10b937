/** `mgllava warmup`: stage 0, the encoder warm-up that stands in for pretrained encoder weights (src/train/warmup.ts). */
import type { Argv, CommandModule } from 'yargs';
import { describeBackend } from '../backend/select.js';
import { warmup } from '../train/warmup.js';
import { backendFromArgs, type GlobalArgs } from './command.js';

interface WarmupArgs extends GlobalArgs {
  config: string;
  set: string[];
  resume?: string;
  'max-steps'?: number;
  progress: 'auto' | 'bar' | 'lines' | 'off';
}

export const warmupCommand: CommandModule<GlobalArgs, WarmupArgs> = {
  command: 'warmup',
  describe: 'Stage 0: train the encoders on object annotations with throw-away heads (a stand-in for pretrained CLIP/ConvNeXt weights; skip it with real weights)',
  builder: (y) =>
    y
      .option('config', { type: 'string', demandOption: true, describe: "experiment YAML with stage: warmup and a 'warmup:' section (e.g. configs/tiny-shapes/warmup.yaml)" })
      .option('set', {
        type: 'string',
        array: true,
        default: [],
        describe: 'override a config key, YAML value: --set train.max_steps=200 (part of the config hash)',
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
        describe: 'progress display: a bar on a terminal, plain lines every log_steps otherwise (auto)',
      })
      .example('$0 warmup --config configs/tiny-shapes/warmup.yaml', 'warm up the tiny encoders; pretrain.yaml loads them with init.encoders_from') as Argv<WarmupArgs>,
  handler: async (args) => {
    const backend = await backendFromArgs(args);
    process.stdout.write(`${describeBackend(backend)}\n`);
    await warmup({ configFile: args.config, sets: args.set, resume: args.resume ?? null, maxSteps: args['max-steps'] ?? null, progress: args.progress });
  },
};
