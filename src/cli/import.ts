/**
 * `mgllava import --kind clip|convnext|llm --from DIR (--out FILE | --list)`: convert a pretrained directory
 * (HF CLIP, open_clip/timm ConvNeXt, HF LLaMA family; safetensors or PyTorch .bin) into one safetensors file under
 * MG-LLaVA's checkpoint names, or list what it holds and how each tensor maps.
 *
 * `mgllava import --kind mgllava --from CKPT --config C.yaml --out RUN`: a released MG-LLaVA checkpoint (xtuner /
 * mmengine .pth, DeepSpeed directory, safetensors) as a run directory (src/io/release-import.ts).
 */
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import type { CommandModule } from 'yargs';
import { MgllavaError, UsageError, WeightsError } from '../errors.js';
import type { LlamaConfig } from '../model/llm/config.js';
import type { PretrainedSource } from '../io/pretrained.js';
import type { PretrainedKind } from '../io/weight-maps.js';
import { backendFromArgs, type GlobalArgs } from './command.js';
import { checkOutputFile } from '../io/output-file.js';

interface ImportArgs extends GlobalArgs {
  kind: PretrainedKind | 'mgllava';
  from: string;
  out?: string;
  list: boolean;
  config?: string;
  set: string[];
  key?: string;
  'allow-missing': boolean;
  json: boolean;
  overwrite: boolean;
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
  describe: 'Convert pretrained weights (CLIP ViT, OpenCLIP/timm ConvNeXt, LLaMA family) to MG-LLaVA names, or a released MG-LLaVA checkpoint to a run',
  builder: (y) =>
    y
      .option('kind', {
        type: 'string',
        choices: ['clip', 'convnext', 'llm', 'mgllava'] as const,
        demandOption: true,
        describe:
          'what --from holds: clip (-> visual_encoder.*), convnext (-> visual_encoder_aux.*), llm (-> llm.*), ' +
          'mgllava (a released MG-LLaVA checkpoint -> a run directory; needs --config)',
      })
      .option('from', { type: 'string', demandOption: true, describe: 'pretrained directory (config.json / open_clip_config.json + *.safetensors or *.bin); mgllava: the checkpoint (.pth, DeepSpeed dir, .safetensors)' })
      .option('out', { type: 'string', describe: 'output .safetensors file (float32, MG-LLaVA checkpoint names); mgllava: the run directory to create' })
      .option('list', { type: 'boolean', default: false, describe: 'print every tensor (name, dtype, shape) and its mapping instead of converting (clip, convnext, llm)' })
      .option('config', { type: 'string', describe: 'mgllava: the experiment config the checkpoint belongs to (architecture, pretrained dirs, tokenizer, stage)' })
      .option('set', { type: 'string', array: true, default: [], describe: 'mgllava: override a config key, e.g. --set model.llm.pretrained=models/vicuna-7b-v1.5' })
      .option('key', { type: 'string', describe: 'mgllava: where the state dict is in a pickle (default: the object itself, else state_dict, module, model)' })
      .option('allow-missing', { type: 'boolean', default: false, describe: "mgllava: start trainable weights the checkpoint lacks from the config's init instead of failing" })
      .option('json', { type: 'boolean', default: false, describe: 'mgllava: print the report as one JSON line' })
      .option('overwrite', { type: 'boolean', default: false, describe: 'clip, convnext, llm: replace an existing --out file' })
      .example('$0 import --kind llm --from models/vicuna-7b-v1.5 --list', 'show how the checkpoint maps')
      .example('$0 import --kind clip --from models/clip-vit-large-patch14-336 --out clip.safetensors', 'convert')
      .example('$0 import --kind mgllava --from iter_10805.pth --config configs/vicuna-7b/finetune.yaml --out checkpoints/mgllava-vicuna7b-release', 'a release as a run'),
  handler: async (args) => {
    if (args.kind === 'mgllava') return importMgllava(args);
    if (!args.list && !args.out) throw new UsageError('import: give --out FILE.safetensors (or --list to only inspect)');
    // Loaded here, not at startup: the pretrained loaders pull in tfjs (see the command table in main.ts).
    const { openPretrained, readLlmConfig, writeConverted } = await import('../io/pretrained.js');
    const { fromHfConfig } = await import('../model/llm/config.js');
    // Before any work: a directory, /proc, a missing folder, a wrong extension (--out config.json held weights after).
    if (!args.list) await checkOutputFile(args.out!, '--out', { ext: '.safetensors' });
    try {
      let llm: LlamaConfig | undefined;
      if (args.kind === 'llm') llm = fromHfConfig(readLlmConfig(args.from));
      const src = await openPretrained(args.from, args.kind, llm);
      try {
        if (args.list) {
          process.stdout.write(formatPlan(src));
          return;
        }
        // --out DIR/model.safetensors of --from DIR replaced the pretrained weights with their renamed copy.
        const inputs = (await readdir(src.dir)).map((f) => ({ file: path.join(src.dir, f), what: `a file of --from ${args.from}` }));
        // An existing file is replaced only when asked (as convert does): it may be another model's weights.
        const existing = { flag: '--out', overwrite: args.overwrite };
        await checkOutputFile(args.out!, '--out', { inputs: [{ file: src.file, what: 'the weights read' }, ...inputs], existing });
        const count = await writeConverted(src, args.out!);
        process.stdout.write(`wrote ${count} tensors to ${args.out} (from ${src.file})\n`);
      } finally {
        await src.reader.close();
      }
    } catch (e) {
      if (e instanceof MgllavaError) throw e;
      // Weight-map and config errors of the pretrained loaders that are not MgllavaErrors yet.
      if (e instanceof Error && /^(HF config|invalid LLaMA config)/.test(e.message)) throw new WeightsError(`${args.from}: ${e.message}`);
      if (e instanceof Error && ['PretrainedError', 'WeightLoadError', 'SafetensorsError'].includes(e.name)) throw new WeightsError(e.message);
      throw e;
    }
  },
};

async function importMgllava(args: ImportArgs): Promise<void> {
  if (!args.config) throw new UsageError('import --kind mgllava: give --config C.yaml (the experiment config the checkpoint belongs to)');
  if (!args.out) throw new UsageError('import --kind mgllava: give --out RUN (the run directory to create)');
  if (args.list) throw new UsageError('import --kind mgllava: --list is for clip, convnext and llm (convert the checkpoint and read it, or import and read the report)');
  await backendFromArgs(args);
  const { importRelease } = await import('../io/release-import.js');
  const log = (m: string) => process.stderr.write(`${m}\n`);
  const r = await importRelease({ from: args.from, config: args.config, sets: args.set, out: args.out, key: args.key ?? null, allowMissing: args['allow-missing'], log: args.json ? undefined : log });
  if (args.json) {
    process.stdout.write(`${JSON.stringify(r)}\n`);
    return;
  }
  const lines = [
    `imported ${r.source}${r.key ? ` (state dict under '${r.key}')` : ''} as ${r.stage} run ${r.runDir}, step ${r.step}: ` +
      `${r.trained} trainable + ${r.frozen} frozen weights from the checkpoint`,
  ];
  if (r.missing.length) lines.push(`started from the config's init (--allow-missing): ${r.missing.length}: ${r.missing.join(', ')}`);
  if (r.notImported.length) lines.push(`not imported (frozen in this config, taken from its pretrained dirs): ${r.notImported.length}: ${r.notImported.slice(0, 10).join(', ')}${r.notImported.length > 10 ? ', ...' : ''}`);
  if (r.unmapped.length) lines.push(`not weights of this model, ignored: ${r.unmapped.length}: ${r.unmapped.slice(0, 10).map((u) => `${u.name} (${u.why})`).join(', ')}${r.unmapped.length > 10 ? ', ...' : ''}`);
  process.stdout.write(`${lines.join('\n')}\n`);
}
