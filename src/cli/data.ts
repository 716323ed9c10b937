/**
 * `mgllava data check|show|synth|vocab`: validate a dataset, show one record as the model sees it, write the
 * synthetic demo dataset, write a word-level tokenizer. What decodes or draws images (sharp) is imported by the
 * handlers, so `mgllava data check --help` stays as quick as the other commands' help (main.ts).
 */
import { stat } from 'node:fs/promises';
import type { Argv, CommandModule } from 'yargs';
import { auditBoxes, describeAudit } from '../data/box-audit.js';
import { BOX_DEFAULTS, CLOSE_TO_MAX_LENGTH_MARGIN, isCloseToMaxLength, preprocessBoxes } from '../data/boxes.js';
import type { ObjectTokenCheck } from '../data/check.js';
import { IGNORE_INDEX, IMAGE_TOKEN_INDEX } from '../data/constants.js';
import { encodeConversation } from '../data/conversation.js';
import { DEFAULT_MAX_IMAGE_PIXELS, imageOptionsOf, type DecodeOptions, type ExifOrientation } from '../data/image-options.js';
import { checkDataFile, conversationProblem, loadBoxes, loadRecords, type LlavaRecord } from '../data/records.js';
import { getTemplate, TEMPLATES } from '../data/templates.js';
import { imageTokensOf, objectTokenRoom, positionBudget, samplePositions } from '../data/token-budget.js';
import { loadTokenizer, type TextTokenizer, type TokenizerSpec } from '../data/tokenizer.js';
import { writeWordVocab } from '../data/word-vocab.js';
import { loadConfig } from '../config/load.js';
import type { ExperimentConfig } from '../config/schema.js';
import { DataError, fsError, MgllavaError, UsageError } from '../errors.js';
import type { GlobalArgs } from './command.js';

/** Defaults when neither a flag nor --config gives a value: the full-size Vicuna-7B recipe. */
export const DATA_DEFAULTS = { template: 'vicuna', tokenizer: 'llama2', maxLength: 1472, auxSize: 768, lowresSize: 336, patch: 14 } as const;

interface DatasetArgs extends GlobalArgs {
  config?: string;
  set?: string[];
  records?: string;
  boxes?: string;
  images?: string;
  template?: string;
  tokenizer?: string;
  'max-length'?: number;
  'exif-orientation'?: ExifOrientation;
  'max-image-pixels'?: number;
  json: boolean;
}

interface CheckArgs extends DatasetArgs {
  'skip-bad'?: string;
  'image-check': 'decode' | 'header';
}

interface ShowArgs extends DatasetArgs {
  n: string;
  'aux-size'?: number;
  'lowres-size'?: number;
  patch?: number;
  tokens: boolean;
  'save-image'?: string;
  overwrite: boolean;
}

interface SynthArgs extends GlobalArgs {
  out: string;
  train: number;
  eval: number;
  seed: number;
  size: number;
  template: string;
  overwrite: boolean;
  json: boolean;
}

/** `--tokenizer`: 'llama2' (LLaMA-2/Vicuna SentencePiece, bundled), 'byte' (toy), or a tokenizer.json path/folder. */
export function tokenizerSpec(arg: string): TokenizerSpec {
  if (arg === 'llama2') return { type: 'llama2' };
  if (arg === 'byte') return { type: 'byte' };
  return { type: 'hf', path: arg };
}

function datasetOptions<T>(y: Argv<T>) {
  return y
    .option('config', { type: 'string', describe: 'experiment YAML: its data section (and model sizes) give the defaults of the flags below' })
    .option('set', { type: 'string', array: true, describe: 'override a config key, e.g. --set data.max_length=256' })
    .option('records', { type: 'string', describe: 'LLaVA records, .json (array) or .jsonl [config: data.records]' })
    .option('boxes', { type: 'string', describe: 'box JSON ({id: {boxes, labels, scores}} or a list with ids) [config: data.boxes]' })
    .option('images', { type: 'string', describe: 'folder the record image paths are relative to [config: data.images]' })
    .option('template', { type: 'string', choices: Object.keys(TEMPLATES), describe: `prompt template [config: data.template; default ${DATA_DEFAULTS.template}]` })
    .option('tokenizer', {
      type: 'string',
      describe: `'llama2' (Vicuna/LLaMA-2 SentencePiece, bundled), 'byte' (toy), or a tokenizer.json file/folder [config: data.tokenizer; default ${DATA_DEFAULTS.tokenizer}]`,
    })
    .option('max-length', { type: 'number', describe: `text token budget [config: data.max_length; default ${DATA_DEFAULTS.maxLength} = 2048 - 576]` })
    .option('exif-orientation', {
      choices: ['ignore', 'apply'] as const,
      describe: "EXIF orientation: 'ignore' (stored pixels, as the PIL reference; boxes in that frame) or 'apply' (rotated) [config: data.exif_orientation; default ignore]",
    })
    .option('max-image-pixels', { type: 'number', describe: `pixel budget of an image's padded square (longer side²) [config: data.max_image_pixels; default ${DEFAULT_MAX_IMAGE_PIXELS}]` })
    .option('json', { type: 'boolean', default: false, describe: 'machine-readable output' });
}

/** Dataset settings: flag, else the config's value, else the default. */
interface ResolvedData {
  records: string;
  boxes: string | null;
  images: string;
  template: string;
  tokenizer: TokenizerSpec;
  maxLength: number;
  nmsThreshold: number;
  limitNum: number | null;
  auxSize: number;
  lowresSize: number;
  patch: number;
  image: Required<DecodeOptions>;
  /** Whether the model makes object tokens (a config without model.objects does not; no config: the full MG-LLaVA does). */
  objects: boolean;
}

function resolveData(args: DatasetArgs & Partial<Pick<ShowArgs, 'aux-size' | 'lowres-size' | 'patch'>>): ResolvedData {
  let cfg: ExperimentConfig | null = null;
  if (args.config) {
    cfg = loadConfig(args.config, args.set ?? []).config;
  } else if (args.set?.length) {
    throw new UsageError('--set needs --config');
  }
  const d = cfg?.data;
  const records = args.records ?? d?.records;
  const images = args.images ?? d?.images ?? undefined;
  if (!records) throw new UsageError('give --records (or --config with data.records)');
  if (!images) throw new UsageError('give --images (or --config with data.images)');
  const maxLength = args['max-length'] ?? d?.max_length ?? DATA_DEFAULTS.maxLength;
  if (!Number.isInteger(maxLength) || maxLength <= 0) throw new UsageError(`--max-length must be a positive integer, got ${maxLength}`);
  for (const k of ['aux-size', 'lowres-size', 'patch'] as const) {
    const v = args[k];
    // An image side or patch of -1, 1.5 or 1e308 failed deep in preprocessing (or, for --patch, counted tokens silently wrong).
    if (v !== undefined && !(Number.isInteger(v) && v >= 1 && v <= 16384)) throw new UsageError(`--${k} must be an integer from 1 to 16384, got ${v}`);
  }
  const maxPixels = args['max-image-pixels'];
  if (maxPixels !== undefined && !(Number.isInteger(maxPixels) && maxPixels > 0)) throw new UsageError(`--max-image-pixels must be a positive integer, got ${maxPixels}`);
  const image = imageOptionsOf({ exif_orientation: args['exif-orientation'] ?? d?.exif_orientation, max_image_pixels: maxPixels ?? d?.max_image_pixels });
  return {
    image,
    objects: cfg ? cfg.model.objects !== null : true,
    records,
    images,
    boxes: args.boxes ?? d?.boxes ?? null,
    template: args.template ?? d?.template ?? DATA_DEFAULTS.template,
    tokenizer: args.tokenizer ? tokenizerSpec(args.tokenizer) : (d?.tokenizer ?? tokenizerSpec(DATA_DEFAULTS.tokenizer)),
    maxLength,
    nmsThreshold: d?.nms_threshold ?? BOX_DEFAULTS.nmsThreshold,
    limitNum: d ? d.limit_num : BOX_DEFAULTS.limitNum,
    auxSize: args['aux-size'] ?? cfg?.model.vision_aux?.image_size ?? DATA_DEFAULTS.auxSize,
    lowresSize: args['lowres-size'] ?? cfg?.model.vision.image_size ?? DATA_DEFAULTS.lowresSize,
    patch: args.patch ?? cfg?.model.vision.patch_size ?? DATA_DEFAULTS.patch,
  };
}

async function textEncoding(r: ResolvedData) {
  let tokenizer: TextTokenizer;
  try {
    tokenizer = await loadTokenizer(r.tokenizer);
  } catch (e) {
    // A broken tokenizer file is a data error (exit 4) as it is for training; an unknown name stays a usage error.
    const msg = `cannot load tokenizer ${JSON.stringify(r.tokenizer)}: ${(e as Error).message}`;
    throw e instanceof MgllavaError ? new MgllavaError(msg, e.category, { hint: e.hint }) : new UsageError(msg);
  }
  return { template: getTemplate(r.template), tokenizer, maxLength: r.maxLength };
}

async function requireFolder(dir: string, what: string): Promise<void> {
  let s;
  try {
    s = await stat(dir);
  } catch (e) {
    throw fsError(e, dir, `opening the ${what}`);
  }
  if (!s.isDirectory()) throw new DataError(`${dir}: the ${what} is not a directory`);
}

/** The object-token budget check of a resolved dataset (null when the model makes no object tokens). */
function objectTokenCheck(r: ResolvedData): ObjectTokenCheck | null {
  if (!r.objects) return null;
  return { imageTokens: imageTokensOf(r.lowresSize, r.patch), auxSize: r.auxSize, nmsThreshold: r.nmsThreshold, limitNum: r.limitNum };
}

const checkCommand: CommandModule<GlobalArgs, CheckArgs> = {
  command: 'check',
  describe: 'Report every bad record (file, id, reason); exit 1 if any, unless --skip-bad',
  builder: (y) =>
    datasetOptions(y)
      .option('skip-bad', { type: 'string', describe: 'write the bad records to this JSONL report and exit 0' })
      .option('image-check', { choices: ['decode', 'header'] as const, default: 'decode' as const, describe: 'decode every image fully, or read headers only' })
      .example('$0 data check --config my-finetune.yaml', 'every bad record of the config\'s dataset before a long run')
      .example('$0 data check --records r.json --boxes b.json --images imgs --tokenizer llama2 --skip-bad bad.jsonl', 'write the bad ones to a report and exit 0') as Argv<CheckArgs>,
  handler: async (args) => {
    const r = resolveData(args);
    const { checkDataset, checkOutputFile, formatBadRecord, formatWarning, summarizeWarnings, writeBadReport } = await import('../data/check.js');
    // Every path is checked before the (long) check runs: one line naming the file, not a stack trace.
    await checkDataFile(r.records, 'records file');
    if (r.boxes) await checkDataFile(r.boxes, 'box file');
    await requireFolder(r.images, 'image folder');
    if (args['skip-bad']) {
      const inputs = [
        { file: r.records, what: 'the records file' },
        { file: r.boxes, what: 'the box file' },
        { file: args.config, what: 'the config' },
      ];
      await checkOutputFile(args['skip-bad'], 'the skip report (--skip-bad)', { inputs });
    }
    const report = await checkDataset({
      records: r.records,
      boxes: r.boxes,
      images: r.images,
      text: await textEncoding(r),
      imageCheck: args['image-check'],
      image: r.image,
      objectTokens: objectTokenCheck(r),
    });
    if (report.total === 0 && report.bad.length === 0) throw new DataError(`${r.records}: the records file holds no record`); // an empty file is no dataset
    const badIds = new Set(report.bad.map((b) => `${b.file}\u0000${b.index ?? b.id}`));
    if (args['skip-bad']) await writeBadReport(args['skip-bad'], report.bad);
    if (args.json) {
      const { valid, ...rest } = report;
      process.stdout.write(`${JSON.stringify({ ...rest, valid: valid.length, badRecords: badIds.size })}\n`);
    } else {
      for (const b of report.bad) process.stdout.write(`${formatBadRecord(b)}\n`);
      for (const w of report.warnings) process.stdout.write(`${formatWarning(w)}\n`);
      const skipped = args['skip-bad'] ? ` (${badIds.size} record(s) skipped; report: ${args['skip-bad']})` : '';
      const warned = report.warnings.length ? `; warnings: ${summarizeWarnings(report.warnings)}` : '';
      process.stdout.write(`${r.records}: ${report.total} records, ${report.valid.length} good, ${report.bad.length} problem(s)${skipped}${warned}\n`);
    }
    if (report.bad.length > 0 && !args['skip-bad']) process.exitCode = 1;
  },
};

const showCommand: CommandModule<GlobalArgs, ShowArgs> = {
  command: 'show <n>',
  describe: 'Print record N (0-based index, or id) as the model sees it: prompt, supervised spans, tokens, boxes',
  builder: (y) =>
    datasetOptions(y)
      .positional('n', { type: 'string', demandOption: true, describe: 'record index (0-based) or record id' })
      .option('aux-size', { type: 'number', describe: `aux (ConvNeXt) image side [config: model.vision_aux.image_size; default ${DATA_DEFAULTS.auxSize}]` })
      .option('lowres-size', { type: 'number', describe: `low-res (ViT) image side [config: model.vision.image_size; default ${DATA_DEFAULTS.lowresSize}]` })
      .option('patch', { type: 'number', describe: `ViT patch size: image tokens = (lowres/patch)^2 [config: model.vision.patch_size; default ${DATA_DEFAULTS.patch}]` })
      .option('tokens', { type: 'boolean', default: false, describe: 'also list every token with its label' })
      .option('save-image', {
        type: 'string',
        describe: 'write a PNG: the preprocessed aux image with the object-token boxes drawn and numbered, the low-res view beside it',
      })
      .option('overwrite', { type: 'boolean', default: false, describe: 'replace an existing --save-image file' })
      .example('$0 data show 0 --config configs/tiny-shapes/finetune.yaml --save-image rec0.png', 'record 0 as the model sees it, and its image with the object-token boxes') as Argv<ShowArgs>,
  handler: async (args) => {
    const r = resolveData(args);
    const { checkOutputFile, formatBadRecord } = await import('../data/check.js');
    const { describeOrientation, prepareImage, readImageHeader, resolveImagePath } = await import('../data/image.js');
    const { saveView } = await import('../data/view.js');
    const inputs = [
      { file: r.records, what: 'the records file' },
      { file: r.boxes, what: 'the box file' },
    ];
    if (args['save-image']) {
      // An existing PNG may be another record's image (or any picture of the user's): replaced only when asked.
      await checkOutputFile(args['save-image'], 'the image (--save-image)', { ext: '.png', inputs, existing: { flag: '--save-image', overwrite: args.overwrite } });
    }
    const recs = await loadRecords(r.records);
    const record = pickRecord(recs.records, args.n);
    if (!record) {
      const bad = recs.bad.filter((b) => b.id === args.n || b.index === Number(args.n));
      const why = bad.length ? `:\n${bad.map((b) => `  ${formatBadRecord(b)}`).join('\n')}` : '';
      throw new UsageError(`${r.records}: no usable record '${args.n}'${why}`);
    }
    const problem = conversationProblem(record);
    if (problem) throw new UsageError(`${r.records}: record ${record.id}: ${problem.kind}: ${problem.reason}`);
    const text = await textEncoding(r);
    const enc = encodeConversation(record.conversations, text);
    const imageTokens = record.image === null ? 0 : imageTokensOf(r.lowresSize, r.patch);
    const out: Record<string, unknown> = {
      index: record.source.index,
      id: record.id,
      image: record.image,
      template: text.template.name,
      tokenizer: text.tokenizer.name,
      prompt: renderPrompt(enc.inputIds, enc.labels, text.tokenizer),
      textTokens: enc.inputIds.length,
      supervisedTokens: enc.labels.filter((l) => l !== IGNORE_INDEX).length,
      truncated: enc.truncated,
      allMasked: enc.allMasked,
      imageTokens,
    };
    if (record.image === null && args['save-image']) throw new UsageError(`--save-image: record ${record.id} has no image`);
    if (record.image !== null) {
      let img;
      let orientation = 1;
      try {
        const file = await resolveImagePath(r.images, record.image);
        if (args['save-image']) await checkOutputFile(args['save-image'], 'the image (--save-image)', { inputs: [{ file, what: "the record's image" }] });
        orientation = (await readImageHeader(file, r.image)).orientation;
        img = await prepareImage(file, { auxSize: r.auxSize, lowresSize: r.lowresSize, ...r.image });
      } catch (e) {
        if (e instanceof DataError) throw new DataError(`${r.records}: record ${JSON.stringify(record.id)}: ${e.message}`);
        throw e;
      }
      if (!r.boxes) throw new UsageError('--boxes is needed to show an image record');
      const boxes = await loadBoxes(r.boxes);
      const entry = boxes.entries.get(record.id);
      if (!entry) {
        const b = boxes.bad.find((x) => x.id === record.id) ?? boxes.unreadable;
        throw new DataError(`${r.boxes}: record ${JSON.stringify(record.id)}: ${b ? b.reason : 'no box entry for this id'}`);
      }
      const budget = { maxLength: text.maxLength, imageTokens };
      // The same pipeline (and token-budget cap) as training.
      const res = preprocessBoxes(entry, {
        origW: img.width,
        origH: img.height,
        auxSize: r.auxSize,
        nmsThreshold: r.nmsThreshold,
        limitNum: r.limitNum,
        closeToMaxLength: isCloseToMaxLength(enc.inputIds.length, text.maxLength),
        maxBoxes: r.objects ? objectTokenRoom(enc.inputIds.length, budget) : null,
      });
      const warnings = describeAudit(auditBoxes(entry, img.width, img.height), entry, img.width, img.height).map((w) => `${w.kind}: ${w.reason}`);
      if (orientation !== 1) warnings.push(`exif_orientation: EXIF orientation ${orientation} (${describeOrientation(orientation)}) is ${r.image.exifOrientation === 'apply' ? 'applied' : 'ignored'} (data.exif_orientation: ${r.image.exifOrientation})`);
      if (res.stages.budgetDropped > 0) {
        warnings.push(
          `over_token_budget: ${res.stages.budgetDropped} lowest-scoring object tokens dropped to fit ${positionBudget(budget)} LLM positions ` +
            `(${samplePositions(enc.inputIds.length, res.boxes.length + res.stages.budgetDropped, budget)} needed)`,
        );
      }
      Object.assign(out, {
        imageSize: [img.width, img.height],
        exifOrientation: orientation,
        padding: img.padding,
        auxSize: r.auxSize,
        lowresSize: r.lowresSize,
        detectorBoxes: entry.boxes.length,
        afterNms: res.stages.nmsKeep.length,
        boxes: res.boxes.map((b, i) => ({ box: b, label: res.labels[i] ?? null })),
        objectTokens: res.boxes.length,
        warnings,
      });
      if (args['save-image']) {
        const size = await saveView(args['save-image'], { aux: img.aux, auxSize: r.auxSize, lowres: img.lowres, lowresSize: r.lowresSize, boxes: res.boxes });
        out.savedImage = { file: args['save-image'], ...size };
      }
    } else {
      Object.assign(out, { objectTokens: 0, boxes: [] });
    }
    out.llmPositions = enc.inputIds.length - (record.image === null ? 0 : 1) + imageTokens + (out.objectTokens as number);
    if (args.tokens) {
      out.tokenList = enc.inputIds.map((id, i) => ({ id, piece: id === IMAGE_TOKEN_INDEX ? '<image>' : text.tokenizer.decode([id], { skipSpecialTokens: false }), label: enc.labels[i] }));
    }
    process.stdout.write(args.json ? `${JSON.stringify(out)}\n` : formatShow(out));
  },
};

function pickRecord(records: LlavaRecord[], n: string): LlavaRecord | undefined {
  const byId = records.find((r) => r.id === n);
  if (byId) return byId;
  return /^\d+$/.test(n) ? records.find((r) => r.source.index === Number(n)) : undefined;
}

/** The token sequence as text, supervised spans in [[ ]], the image placeholder as <image>. */
function renderPrompt(ids: readonly number[], labels: readonly number[], tok: TextTokenizer): string {
  let out = '';
  let i = 0;
  while (i < ids.length) {
    if (ids[i] === IMAGE_TOKEN_INDEX) {
      out += '<image>';
      i++;
      continue;
    }
    const supervised = labels[i] !== IGNORE_INDEX;
    let j = i;
    while (j < ids.length && ids[j] !== IMAGE_TOKEN_INDEX && (labels[j] !== IGNORE_INDEX) === supervised) j++;
    const piece = tok.decode(ids.slice(i, j), { skipSpecialTokens: false });
    out += supervised ? `[[${piece}]]` : piece;
    i = j;
  }
  return out;
}

function formatShow(o: Record<string, unknown>): string {
  const lines = [
    `record #${o.index} id ${JSON.stringify(o.id)}${o.image ? ` image ${o.image}` : ' (text-only)'}`,
    `template ${o.template}, tokenizer ${o.tokenizer}`,
    'prompt (supervised spans in [[ ]]):',
    ...String(o.prompt)
      .split('\n')
      .map((l) => `  ${l}`),
    `text tokens ${o.textTokens} (supervised ${o.supervisedTokens}${o.truncated ? `, ${o.truncated} cut by max_length` : ''}${o.allMasked ? ', ALL MASKED' : ''})`,
    `image tokens ${o.imageTokens}, object tokens ${o.objectTokens} -> ${o.llmPositions} LLM positions`,
  ];
  if (o.image) {
    const [w, h] = o.imageSize as number[];
    const p = o.padding as { side: number; dx: number; dy: number };
    lines.push(`image ${w}x${h} -> square ${p.side} (offset ${p.dx},${p.dy}) -> aux ${o.auxSize}, low-res ${o.lowresSize}`);
    lines.push(`boxes: ${o.detectorBoxes} from the detector, ${o.afterNms} after NMS, ${o.objectTokens} in aux pixels:`);
    (o.boxes as { box: number[]; label: string | null }[]).forEach((b, i) => lines.push(`  #${i + 1} [${b.box.join(', ')}] ${b.label ?? '(dummy)'}`));
    for (const w of o.warnings as string[]) lines.push(`warning: ${w}`);
  }
  if (o.savedImage) {
    const s = o.savedImage as { file: string; width: number; height: number };
    lines.push(`image written to ${s.file} (${s.width}x${s.height}: aux image with object tokens #1.. drawn, low-res view on the right)`);
  }
  if (o.tokenList) {
    lines.push('tokens (index id label piece):');
    (o.tokenList as { id: number; piece: string; label: number }[]).forEach((t, i) => lines.push(`  ${String(i).padStart(4)} ${String(t.id).padStart(6)} ${String(t.label).padStart(6)} ${JSON.stringify(t.piece)}`));
  }
  return `${lines.join('\n')}\n`;
}

const synthCommand: CommandModule<GlobalArgs, SynthArgs> = {
  command: 'synth',
  describe: 'Write the synthetic multi-granularity shapes dataset (images, records, boxes, tokenizer)',
  builder: (y) =>
    y
      .option('out', { type: 'string', demandOption: true, describe: 'output folder (e.g. data/tiny-shapes)' })
      .option('train', { type: 'number', default: 3000, describe: 'training images' })
      .option('eval', { type: 'number', default: 400, describe: 'held-out eval images (3 questions each)' })
      .option('seed', { type: 'number', default: 0 })
      .option('size', { type: 'number', default: 200, describe: 'longest canvas side; sides are drawn from [0.6*size, size]' })
      .option('template', { type: 'string', default: DATA_DEFAULTS.template, choices: Object.keys(TEMPLATES), describe: 'template whose words join the vocabulary' })
      .option('overwrite', { type: 'boolean', default: false, describe: 'replace the files of an existing synthetic dataset in --out' })
      .option('json', { type: 'boolean', default: false })
      .example('$0 data synth --out data/tiny-shapes', "the demo's dataset (3000 + 400 images)")
      .example('$0 data synth --out /tmp/shapes --train 24 --eval 8 --seed 3', 'a small one for a quick test') as Argv<SynthArgs>,
  handler: async (args) => {
    const { synthDataset } = await import('../data/synth.js');
    let summary;
    try {
      summary = await synthDataset({
        out: args.out,
        train: args.train,
        eval: args.eval,
        seed: args.seed,
        size: args.size,
        template: getTemplate(args.template),
        overwrite: args.overwrite,
      });
    } catch (e) {
      if ((e as Error).message.startsWith('synth:')) throw new UsageError((e as Error).message);
      throw e;
    }
    if (args.json) {
      process.stdout.write(`${JSON.stringify(summary)}\n`);
      return;
    }
    const r = summary.records;
    const longest = Math.max(...Object.values(summary.longestTextTokens));
    const maxLength = 2 ** Math.ceil(Math.log2(longest + CLOSE_TO_MAX_LENGTH_MARGIN));
    process.stdout.write(
      `${summary.out}: ${summary.images.train} train + ${summary.images.eval} eval images, ` +
        `${r.pretrain} pretrain / ${r.finetune} finetune / ${r.eval} eval records, vocabulary ${summary.vocabSize} words, ` +
        `${summary.seconds.toFixed(1)} s\n` +
        `longest text ${longest} tokens: use max_length >= ${longest + CLOSE_TO_MAX_LENGTH_MARGIN} (else boxes are cut to 1 per label)\n` +
        `check it: mgllava data check --records ${summary.out}/finetune.json --boxes ${summary.out}/boxes.json ` +
        `--images ${summary.out}/images --tokenizer ${summary.out}/tokenizer.json --max-length ${maxLength}\n`,
    );
  },
};

interface VocabArgs extends GlobalArgs {
  records: string[];
  out: string;
  template: string;
  overwrite: boolean;
}

const vocabCommand: CommandModule<GlobalArgs, VocabArgs> = {
  command: 'vocab',
  describe: "Write a word-level tokenizer.json over your records' words (for a small LLM trained from scratch)",
  builder: (y) =>
    y
      .option('records', { type: 'string', array: true, demandOption: true, describe: 'LLaVA records files (give every split: train, eval)' })
      .option('out', { type: 'string', demandOption: true, describe: 'folder for tokenizer.json + tokenizer_config.json' })
      .option('template', { type: 'string', default: DATA_DEFAULTS.template, choices: Object.keys(TEMPLATES), describe: 'template whose words join the vocabulary' })
      .option('overwrite', { type: 'boolean', default: false, describe: 'replace an existing tokenizer.json in --out (runs that name it would then read other ids)' })
      .example('$0 data vocab --records my-data/train.json --records my-data/eval.json --out my-data', 'then data.tokenizer: {type: hf, path: my-data/tokenizer.json}') as Argv<VocabArgs>,
  handler: async (args) => {
    await requireFolder(args.out, 'output folder');
    const r = await writeWordVocab(args.records, getTemplate(args.template), args.out, { overwrite: args.overwrite });
    const { formatBadRecord } = await import('../data/check.js');
    for (const b of r.bad) process.stdout.write(`${formatBadRecord(b)}\n`);
    process.stdout.write(
      `${r.file}: ${r.vocabSize} ids from ${r.records} records${r.bad.length ? ` (${r.bad.length} unreadable, their words left out)` : ''}: ` +
        `set model.llm.vocab_size to at least ${r.vocabSize}\n`,
    );
  },
};

export const dataCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'data <command>',
  describe: 'Dataset tools: check, show, synth, vocab',
  builder: (y) =>
    y
      .command(checkCommand)
      .command(showCommand)
      .command(synthCommand)
      .command(vocabCommand)
      .demandCommand(1, 'Name a data command: check, show, synth or vocab.')
      .example('$0 data check --config my-finetune.yaml', 'check a dataset')
      .example('$0 data show 0 --config my-finetune.yaml', 'record 0 as the model sees it'),
  handler: () => undefined,
};
