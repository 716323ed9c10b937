/**
 * `mgllava import --kind clip|convnext|llm --from DIR (--out FILE | --list)`: convert a pretrained directory
 * (HF CLIP, open_clip/timm ConvNeXt, HF LLaMA family) into one safetensors file under MG-LLaVA's checkpoint
 * names, or list what it holds and how each tensor maps.
 */
import type { CommandModule } from 'yargs';
import { fromHfConfig, type LlamaConfig } from '../model/llm/config.js';
import { WeightLoadError } from '../nn/module.js';
import { SafetensorsError } from '../io/safetensors.js';
import { openPretrained, PretrainedError, readLlmConfig, writeConverted, type PretrainedSource } from '../io/pretrained.js';
import type { PretrainedKind } from '../io/weight-maps.js';
import { UserError, type GlobalArgs } from './command.js';

interface ImportArgs extends GlobalArgs {
  kind: PretrainedKind;
  from: string;
  out?: string;
  list: boolean;
}

/** One line per source tensor: name, stored dtype, shape, and what it becomes. */
export function formatPlan(src: PretrainedSource): string {
  const rows = src.entries.map((e) => {
    const what =
      e.plan.action === 'map'
        ? `-> ${e.plan.targets.map((t) => (t.shape.join() === e.shape.join() ? t.name : `${t.name} [${t.shape}]`)).join(', ')}`
        : e.plan.action === 'ignore'
          ? `skipped: ${e.plan.reason}`
          : 'UNEXPECTED (not a weight of this kind)';
    return [e.source, e.dtype, `[${e.shape}]`, what];
  });
  const width = [0, 1, 2].map((i) => Math.max(0, ...rows.map((r) => r[i]!.length)));
  const lines = rows.map((r) => r.map((c, i) => (i < 3 ? c.padEnd(width[i]!) : c)).join('  '));
  const count = (a: string) => src.entries.filter((e) => e.plan.action === a).length;
  lines.push(`${src.file}: ${src.map.label}, ${src.entries.length} tensors: ${count('map')} mapped, ${count('ignore')} skipped, ${count('unknown')} unexpected`);
  return `${lines.join('\n')}\n`;
}

export const importCommand: CommandModule<GlobalArgs, ImportArgs> = {
  command: 'import',
  describe: 'Convert Hugging Face weights (CLIP ViT, OpenCLIP/timm ConvNeXt, LLaMA family) to one MG-LLaVA safetensors file',
  builder: (y) =>
    y
      .option('kind', {
        type: 'string',
        choices: ['clip', 'convnext', 'llm'] as const,
        demandOption: true,
        describe: 'what the directory holds: clip (-> visual_encoder.*), convnext (-> visual_encoder_aux.*), llm (-> llm.*)',
      })
      .option('from', { type: 'string', demandOption: true, describe: 'pretrained directory (config.json / open_clip_config.json + *.safetensors)' })
      .option('out', { type: 'string', describe: 'output .safetensors file (float32, MG-LLaVA checkpoint names); required unless --list' })
      .option('list', { type: 'boolean', default: false, describe: 'print every tensor (name, dtype, shape) and its mapping instead of converting' })
      .example('$0 import --kind llm --from models/vicuna-7b-v1.5 --list', 'show how the checkpoint maps')
      .example('$0 import --kind clip --from models/clip-vit-large-patch14-336 --out clip.safetensors', 'convert'),
  handler: async (args) => {
    if (!args.list && !args.out) throw new UserError('import: give --out FILE.safetensors (or --list to only inspect)');
    try {
      let llm: LlamaConfig | undefined;
      if (args.kind === 'llm') llm = fromHfConfig(readLlmConfig(args.from));
      const src = await openPretrained(args.from, args.kind, llm);
      try {
        if (args.list) {
          process.stdout.write(formatPlan(src));
          return;
        }
        const count = await writeConverted(src, args.out!);
        process.stdout.write(`wrote ${count} tensors to ${args.out} (from ${src.file})\n`);
      } finally {
        await src.reader.close();
      }
    } catch (e) {
      if (e instanceof PretrainedError || e instanceof WeightLoadError || e instanceof SafetensorsError) throw new UserError(e.message);
      if (e instanceof Error && /^(HF config|invalid LLaMA config)/.test(e.message)) throw new UserError(`${args.from}: ${e.message}`);
      throw e;
    }
  },
};
