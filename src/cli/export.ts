/**
 * `mgllava export RUN [--step N] --format xtuner|hf --out DIR`: write a run's checkpoint in the layout the
 * PyTorch MG-LLaVA/XTuner code loads, or as a Hugging Face LLM directory plus the MG-LLaVA modules.
 */
import type { CommandModule } from 'yargs';
import type { ExportFormat } from '../io/export.js';
import { backendFromArgs, type GlobalArgs } from './command.js';
import { UsageError } from '../errors.js';

interface ExportArgs extends GlobalArgs {
  run: string;
  step?: number;
  format: ExportFormat;
  out: string;
  'max-shard-mb'?: number;
  pth: boolean;
  overwrite: boolean;
  merge: boolean;
}

export const exportCommand: CommandModule<GlobalArgs, ExportArgs> = {
  command: 'export <run>',
  builder: (y) =>
    y
      .positional('run', { type: 'string', demandOption: true, describe: 'run directory (checkpoints/<name>) or one of its step-NNNNNNNN directories' })
      .option('step', { type: 'number', describe: 'checkpoint step to export (default: the newest complete one)' })
      .option('format', {
        type: 'string',
        choices: ['xtuner', 'hf', 'peft'] as const,
        demandOption: true,
        describe:
          'xtuner: model.safetensors + model.pth with the keys the PyTorch code loads (projector, bbox_projector, fuse_module, llm when trained); ' +
          'hf: the LLM as a Hugging Face directory + mm_modules.safetensors; ' +
          'peft: a LoRA run\'s adapters as a PEFT directory (adapter_config.json + adapter_model.safetensors) + mm_modules.safetensors',
      })
      .option('merge', { type: 'boolean', default: false, describe: 'xtuner / hf of a LoRA run: merge the adapters into the LLM weights (W + scaling * B A), so PyTorch needs no PEFT' })
      .option('out', { type: 'string', demandOption: true, describe: 'output directory (created; must be empty unless --overwrite)' })
      .option('max-shard-mb', {
        type: 'number',
        describe: "hf: largest shard in MB (1e6 bytes); a single larger tensor gets a shard of its own [default: 2000, HF's 2GB]",
      })
      .option('pth', { type: 'boolean', default: true, describe: 'xtuner: also write model.pth for torch.load (--no-pth: safetensors only)' })
      .option('overwrite', { type: 'boolean', default: false, describe: 'write into a non-empty --out, replacing files of the same names' })
      .example('$0 export checkpoints/tiny-shapes-finetune --format hf --out exports/tiny-hf', 'newest step as an HF directory')
      .example('$0 export checkpoints/tiny-shapes-pretrain --step 100 --format xtuner --out exports/tiny-xtuner', 'for pretrained_pth'),
  handler: async (args) => {
    if (args.merge) await backendFromArgs(args); // the merge multiplies B A with tfjs
    const shardMb = args['max-shard-mb'];
    if (shardMb !== undefined && !(shardMb > 0)) throw new UsageError(`--max-shard-mb must be > 0 (got ${shardMb})`);
    const { DEFAULT_MAX_SHARD_BYTES, exportRun, exportSize } = await import('../io/export.js');
    const result = await exportRun(args.run, {
      format: args.format,
      out: args.out,
      step: args.step,
      maxShardBytes: shardMb === undefined ? DEFAULT_MAX_SHARD_BYTES : Math.round(shardMb * 1e6),
      pth: args.pth,
      merge: args.merge,
      overwrite: args.overwrite,
    });
    const mb = (await exportSize(result)) / 1e6;
    process.stdout.write(
      `exported ${result.runDir} step ${result.step} (${result.stage}) as ${result.format} to ${result.out}: ` +
        `${result.tensors} tensors, ${result.files.length} files, ${mb.toFixed(1)} MB\n` +
        result.files.map((f) => `  ${f}\n`).join(''),
    );
    if (result.skipped.length) {
      process.stdout.write(`not exported (the ${result.format} checkpoint never carries them): ${result.skipped.join(', ')}\n`);
    }
  },
};
