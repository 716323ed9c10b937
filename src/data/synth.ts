/**
 * `mgllava data synth`: the synthetic multi-granularity dataset of DEMO-STUDY.md, written as real files.
 *
 *   OUT/images/{train,eval}-NNNNN.png   non-square canvases, clutter + noise, 3-6 objects (1 small, 1 large)
 *   OUT/pretrain.json                   LLaVA records: one caption per train image (every object, smallest first)
 *   OUT/finetune.json                   LLaVA records: 3 QAs per train image, some multi-turn
 *   OUT/eval.json                       held-out images, one single-turn QA per record, `category` field
 *   OUT/boxes.json                      reference box format keyed by record id (see synth/annotate.ts for
 *                                       the order/score convention that keeps boxes smallest first after NMS)
 *   OUT/annotations.json                ground truth per image id (exact boxes, colour, shape, size class) for
 *                                       the encoder warm-up (synth/annotations.ts)
 *   OUT/tokenizer.json (+ tokenizer_config.json)   word-level HF tokenizer over the corpus + template words
 *   OUT/dataset.json                    the options and counts this was generated with, the longest text in
 *                                       tokens and the smallest max_length that keeps every box (longest + 50)
 *
 * Everything derives from the seed through independent per-image streams, so the same options give
 * byte-identical files regardless of rendering concurrency.
 */
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { CLOSE_TO_MAX_LENGTH_MARGIN } from './boxes.js';
import { encodeConversation } from './conversation.js';
import type { BoxEntry, Turn } from './records.js';
import { deriveSeed, streamRng } from './random.js';
import { getTemplate, type PromptTemplate } from './templates.js';
import { loadTokenizer } from './tokenizer.js';
import { annotateScene, DEFAULT_ANNOTATE } from './synth/annotate.js';
import { annotationsJson, sceneAnnotation, type AnnotatedImageJson } from './synth/annotations.js';
import { renderScene } from './synth/render.js';
import { COLORS, DEFAULT_SCENE, makeScene, SHAPES, type Scene, type SceneOptions } from './synth/scene.js';
import { askAbout, captionConversation, finetuneConversations, qaConversation, QUESTION_CATEGORIES } from './synth/text.js';
import { buildVocab, templateText, tokenizerConfigJson, tokenizerJson } from './synth/vocab.js';
import { runPool } from './pool.js';
import { ensureDir } from '../run/guard.js';
import { UsageError } from '../errors.js';

export interface SynthOptions {
  out: string;
  /** Training images (default 3000) and held-out eval images (default 400). */
  train?: number;
  eval?: number;
  seed?: number;
  /** Longest canvas side in px (default 200); sides are drawn from [round(0.6·size), size]. */
  size?: number;
  /**
   * The chat template training will use (default vicuna): its literal words ("USER", ":", "ASSISTANT")
   * join the word-level vocabulary so templated prompts have no unknown words.
   */
  template?: PromptTemplate;
  /** Replace an existing non-empty output folder (only the files this command writes are removed). */
  overwrite?: boolean;
  /** Images rendered at once (sharp runs them on libuv threads). */
  concurrency?: number;
  onProgress?: (done: number, total: number) => void;
}

export interface SynthSummary {
  out: string;
  images: { train: number; eval: number };
  records: { pretrain: number; finetune: number; eval: number };
  vocabSize: number;
  /** Longest tokenized conversation (template included) per file. */
  longestTextTokens: { pretrain: number; finetune: number; eval: number };
  seconds: number;
}

export const SYNTH_FILES = ['pretrain.json', 'finetune.json', 'eval.json', 'boxes.json', 'annotations.json', 'tokenizer.json', 'tokenizer_config.json', 'dataset.json'];

const SPLIT = { train: 1, eval: 2 } as const;
/** Bounds: a typo (--train 1e12, --size 100000) would otherwise fill the disk or exceed sharp's pixel limit. */
const MAX_IMAGES = 1_000_000;
const MAX_SIZE = 4096;
/** The images synth writes: only these are removed by --overwrite (a user's own files in images/ stay). */
const SYNTH_IMAGE = /^(train|eval)-\d+\.png$/;

interface ImageJob {
  file: string; // relative to OUT/images
  scene: Scene;
  noiseSeed: number;
}

function sceneOptions(size: number): SceneOptions {
  if (!Number.isInteger(size) || size < 40 || size > MAX_SIZE) throw new UsageError(`synth: --size must be an integer from 40 to ${MAX_SIZE} px, got ${size}`);
  return { ...DEFAULT_SCENE, minSide: Math.round(0.6 * size), maxSide: size };
}

export async function synthDataset(opts: SynthOptions): Promise<SynthSummary> {
  const t0 = performance.now();
  const nTrain = opts.train ?? 3000;
  const nEval = opts.eval ?? 400;
  const seed = opts.seed ?? 0;
  for (const [name, v] of [['train', nTrain], ['eval', nEval], ['seed', seed]] as const) {
    if (!Number.isInteger(v) || v < 0) throw new UsageError(`synth: ${name} must be a non-negative integer, got ${v}`);
  }
  for (const [name, v] of [['train', nTrain], ['eval', nEval]] as const) {
    if (v > MAX_IMAGES) throw new UsageError(`synth: ${name} is ${v} images; at most ${MAX_IMAGES} per split (the set is held in memory while it is written)`);
  }
  if (nTrain === 0) throw new UsageError('synth: need at least one training image');
  const scene = sceneOptions(opts.size ?? 200);
  await prepareOut(opts.out, opts.overwrite ?? false);

  const jobs: ImageJob[] = [];
  const pretrain: object[] = [];
  const finetune: object[] = [];
  const evalRecords: object[] = [];
  const boxes: [string, BoxEntry][] = [];
  const truth: [string, AnnotatedImageJson][] = [];
  const record = (list: object[], id: string, image: string, conversations: Turn[], entry: BoxEntry, extra: object = {}) => {
    list.push({ id, image, ...extra, conversations });
    boxes.push([id, entry]);
  };

  for (let i = 0; i < nTrain; i++) {
    const rng = streamRng(seed, SPLIT.train, i);
    const s = makeScene(rng, scene);
    const { boxes: b, labels, scores } = annotateScene(rng, s, DEFAULT_ANNOTATE);
    const entry = { boxes: b, labels, scores };
    const id = `train-${pad(i)}`;
    const image = `${id}.png`;
    jobs.push({ file: image, scene: s, noiseSeed: deriveSeed(seed, SPLIT.train, i, 1) });
    truth.push([id, sceneAnnotation(s, image, 'train')]);
    record(pretrain, id, image, captionConversation(rng, s), entry);
    finetuneConversations(rng, s).forEach((conv, k) => record(finetune, `${id}-q${k}`, image, conv, entry));
  }
  for (let i = 0; i < nEval; i++) {
    const rng = streamRng(seed, SPLIT.eval, i);
    const s = makeScene(rng, scene);
    const { boxes: b, labels, scores } = annotateScene(rng, s, DEFAULT_ANNOTATE);
    const entry = { boxes: b, labels, scores };
    const id = `eval-${pad(i)}`;
    const image = `${id}.png`;
    jobs.push({ file: image, scene: s, noiseSeed: deriveSeed(seed, SPLIT.eval, i, 1) });
    truth.push([id, sceneAnnotation(s, image, 'eval')]);
    for (const category of QUESTION_CATEGORIES) {
      record(evalRecords, `${id}-${category}`, image, qaConversation([askAbout(s, category)]), entry, { category });
    }
  }

  const imageDir = path.join(opts.out, 'images');
  await mkdir(imageDir, { recursive: true });
  let done = 0;
  await runPool(jobs, opts.concurrency ?? 4, async (job) => {
    await writeFile(path.join(imageDir, job.file), await renderScene(job.scene, job.noiseSeed, scene.noise));
    opts.onProgress?.(++done, jobs.length);
  });

  const texts = [...pretrain, ...finetune, ...evalRecords].flatMap((r) => (r as { conversations: Turn[] }).conversations.map((t) => t.value.replace('<image>', ' ')));
  const template = opts.template ?? getTemplate('vicuna');
  const vocab = buildVocab([...texts, ...templateText(template)]);
  await writeFile(path.join(opts.out, 'pretrain.json'), recordsJson(pretrain));
  await writeFile(path.join(opts.out, 'finetune.json'), recordsJson(finetune));
  await writeFile(path.join(opts.out, 'eval.json'), recordsJson(evalRecords));
  await writeFile(path.join(opts.out, 'boxes.json'), boxesJson(boxes));
  await writeFile(path.join(opts.out, 'annotations.json'), annotationsJson(truth));
  await writeFile(path.join(opts.out, 'tokenizer.json'), `${JSON.stringify(tokenizerJson(vocab), null, 1)}\n`);
  await writeFile(path.join(opts.out, 'tokenizer_config.json'), `${JSON.stringify(tokenizerConfigJson(512), null, 1)}\n`);
  // Longest templated text per file, tokenized with the tokenizer just written: max_length must exceed it by
  // 50, or the reference's "close to max_length" rule cuts the boxes to one per label (REFERENCE §i.5).
  const tokenizer = await loadTokenizer({ type: 'hf', path: opts.out });
  const longest = (list: object[]) =>
    Math.max(0, ...list.map((r) => encodeConversation((r as { conversations: Turn[] }).conversations, { template, tokenizer, maxLength: 1 << 30 }).inputIds.length));
  const textTokens = { pretrain: longest(pretrain), finetune: longest(finetune), eval: longest(evalRecords) };
  const manifest = {
    format: 'mgllava-synth',
    version: 1,
    seed,
    train_images: nTrain,
    eval_images: nEval,
    records: { pretrain: pretrain.length, finetune: finetune.length, eval: evalRecords.length },
    template: template.name,
    scene,
    boxes: { ...DEFAULT_ANNOTATE, order: 'real objects smallest first with strictly decreasing scores; extra boxes (score below every real box, same label, IoU > 0.3 with their object) follow and are removed by NMS 0.2' },
    colors: COLORS.map((c) => c.name),
    shapes: SHAPES,
    question_categories: QUESTION_CATEGORIES,
    vocab_size: vocab.length,
    longest_text_tokens: textTokens,
    min_max_length: Math.max(textTokens.pretrain, textTokens.finetune, textTokens.eval) + CLOSE_TO_MAX_LENGTH_MARGIN,
  };
  await writeFile(path.join(opts.out, 'dataset.json'), `${JSON.stringify(manifest, null, 1)}\n`);

  return {
    out: opts.out,
    images: { train: nTrain, eval: nEval },
    records: { pretrain: pretrain.length, finetune: finetune.length, eval: evalRecords.length },
    vocabSize: vocab.length,
    longestTextTokens: textTokens,
    seconds: (performance.now() - t0) / 1000,
  };
}

const pad = (i: number) => String(i).padStart(5, '0');

/** One record per line: readable, diffable, and line numbers in error messages point at a record. */
function recordsJson(records: object[]): string {
  return `[\n${records.map((r) => JSON.stringify(r)).join(',\n')}\n]\n`;
}

function boxesJson(entries: [string, BoxEntry][]): string {
  return `{\n${entries.map(([id, e]) => `${JSON.stringify(id)}: ${JSON.stringify(e)}`).join(',\n')}\n}\n`;
}

async function prepareOut(out: string, overwrite: boolean): Promise<void> {
  await ensureDir(out, 'synth: --out'); // under /proc, below a file, a dangling link: one line, no spinning mkdir
  const existing = await readdir(out);
  if (existing.length === 0) return;
  if (!overwrite) throw new UsageError(`synth: output folder ${out} is not empty (pass --overwrite to replace a previous synthetic dataset)`);
  // --overwrite replaces a synthetic dataset (its dataset.json says so, or, cut short before writing it, it holds
  // nothing but synth's own names), never a folder of the user's own data.
  const imageDir = path.join(out, 'images');
  const images = await readdir(imageDir).catch(() => [] as string[]);
  const ownNames = existing.every((f) => SYNTH_FILES.includes(f) || f === 'images') && images.every((f) => SYNTH_IMAGE.test(f));
  if (!ownNames && !(await isSynthDataset(out))) {
    throw new UsageError(`synth: output folder ${out} holds files of its own and no synthetic dataset (dataset.json of 'data synth'): --overwrite only replaces one; choose another --out`);
  }
  for (const f of images) if (SYNTH_IMAGE.test(f)) await rm(path.join(imageDir, f), { force: true });
  for (const f of SYNTH_FILES) await rm(path.join(out, f), { force: true });
}

/** Whether `dir` holds the dataset.json that synthDataset writes last. */
async function isSynthDataset(dir: string): Promise<boolean> {
  try {
    return (JSON.parse(await readFile(path.join(dir, 'dataset.json'), 'utf8')) as { format?: unknown }).format === 'mgllava-synth';
  } catch {
    return false;
  }
}
