/**
 * `mgllava convert IN --out OUT.safetensors [--key K] [--json]`: a PyTorch checkpoint (file, DeepSpeed directory,
 * HF directory of .bin shards) to safetensors in its saved dtypes, reading the pickle without executing it.
 */
import type { CommandModule } from 'yargs';
import { UsageError } from '../errors.js';
import { CONVERT_MAX_SHARD_BYTES, convertTorchCheckpoint } from '../io/torch-convert.js';
import type { GlobalArgs } from './command.js';

interface ConvertArgs extends GlobalArgs {
  in: string;
  out: string;
  key?: string;
  json: boolean;
  'max-shard-mb': number;
  overwrite: boolean;
}

export const convertCommand: CommandModule<GlobalArgs, ConvertArgs> = {
  command: 'convert <in>',
  describe: 'Convert a PyTorch checkpoint (.pth/.bin/.pt, DeepSpeed dir, HF .bin shards) to safetensors without running it',
  builder: (y) =>
    y
      .positional('in', { type: 'string', demandOption: true, describe: 'checkpoint file, DeepSpeed checkpoint directory, or HF directory of pytorch_model*.bin shards' })
      .option('out', { type: 'string', demandOption: true, describe: 'output .safetensors file (sharded as OUT-0000i-of-0000n.safetensors + OUT.safetensors.index.json when large)' })
      .option('key', { type: 'string', describe: 'where the state dict is in the saved object (default: the object itself, else state_dict, module, model)' })
      .option('json', { type: 'boolean', default: false, describe: 'print one JSON line {"tensors","bytes","key","skipped"}' })
      .option('max-shard-mb', { type: 'number', default: CONVERT_MAX_SHARD_BYTES / 1e6, describe: 'largest output shard in MB (1e6 bytes); a single larger tensor gets a shard of its own' })
      .option('overwrite', { type: 'boolean', default: false, describe: 'replace an existing output' })
      .example('$0 convert iter_10805.pth --out mgllava-vicuna7b.safetensors', 'an xtuner/mmengine release (state dict under state_dict)')
      .example('$0 convert models/vicuna-7b-v1.5 --out models/vicuna-7b-v1.5/model.safetensors', 'an HF directory of .bin shards'),
  handler: async (args) => {
    if (!(args['max-shard-mb'] > 0)) throw new UsageError(`--max-shard-mb must be > 0 (got ${args['max-shard-mb']})`);
    const r = await convertTorchCheckpoint(args.in, args.out, { key: args.key ?? null, maxShardBytes: Math.round(args['max-shard-mb'] * 1e6), overwrite: args.overwrite });
    if (args.json) {
      process.stdout.write(`${JSON.stringify({ tensors: r.tensors, bytes: r.bytes, key: r.key, skipped: r.skipped.length })}\n`);
      return;
    }
    const where = r.key === null ? '' : ` (state dict under '${r.key}')`;
    const files = r.index ? `${r.files.length} shards + ${r.index}` : r.files[0];
    process.stdout.write(`converted ${r.source}${where}: ${r.tensors} tensors, ${(r.bytes / 1e6).toFixed(1)} MB -> ${files}\n`);
    if (r.skipped.length) {
      const list = r.skipped.slice(0, 10).map((s) => `${s.name} (${s.what})`);
      process.stdout.write(`skipped ${r.skipped.length} non-tensor entries: ${list.join(', ')}${r.skipped.length > 10 ? ', ...' : ''}\n`);
    }
  },
};
