/** `mgllava warmup`: stage 0, the encoder warm-up that stands in for pretrained encoder weights (src/train/warmup.ts). */
import type { Argv, CommandModule } from 'yargs';
import { backendFromArgs, type GlobalArgs } from './command.js';
import { stageOptions, type StageArgs } from './train.js';

export const warmupCommand: CommandModule<GlobalArgs, StageArgs> = {
  command: 'warmup',
  builder: (y) =>
    stageOptions(y, 'warmup')
      .example('$0 warmup --config configs/tiny-shapes/warmup.yaml', 'warm up the tiny encoders; pretrain.yaml loads them with init.encoders_from')
      .example('$0 warmup --config configs/tiny-shapes/warmup.yaml --set train.max_steps=200 --set name=warmup-short', 'a shorter warm-up under another name') as Argv<StageArgs>,
  handler: async (args) => {
    const backend = await backendFromArgs(args);
    const { describeBackend } = await import('../backend/select.js');
    const { warmup } = await import('../train/warmup.js');
    process.stdout.write(`${describeBackend(backend)}\n`);
    await warmup({ configFile: args.config, sets: args.set, resume: args.resume ?? null, maxSteps: args['max-steps'] ?? null, progress: args.progress });
  },
};
