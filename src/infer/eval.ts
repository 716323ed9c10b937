/**
 * Accuracy of a model on an eval set of LLaVA records, by normalised exact match (normalize.ts).
 *
 * Per record: the question is the record's first turn as training sees it (the human message(s) before the
 * first gpt message, joined as llava_map_fn does) and the reference answer is that first gpt message. Later
 * turns of a multi-turn record are not evaluated (one question per record). The answer is generated
 * greedily from the chat prompt of that question (no system text, as in training); `category` (any other
 * record field is ignored) groups the accuracy; records without one are grouped under "(none)".
 *
 * Image records need the image folder and, for a model with object tokens, a box entry under the record's
 * id (as in training). Everything is checked before any generation: a malformed file, a bad record, a
 * missing image or box entry is an error naming the file and the record.
 *
 * Speed: records are processed grouped by (image, box entry) so that the frozen encoders and the visual
 * projectors run once per image (several questions share an image; the visual tokens are kept only while a
 * record still needs them), several prompts are generated as one batch, and the next batch's images are
 * decoded while the current batch generates.
 */
import { writeFileAtomic } from '../io/output-file.js';
import { IMAGE_TOKEN } from '../data/constants.js';
import { buildChatPrompt, llavaToTurns, pyStrip } from '../data/conversation.js';
import { formatBadRecord } from '../data/check.js';
import { ImageError, resolveImagePath, type DecodeOptions } from '../data/image.js';
import { loadBoxes, loadRecords, recordCategory, type BoxEntry, type LlavaRecord } from '../data/records.js';
import { stopWords, type PromptTemplate } from '../data/templates.js';
import type { TextTokenizer } from '../data/tokenizer.js';
import type { MGLLaVA } from '../model/mgllava.js';
import { generate, type VisualTokens } from './generate.js';
import { answersMatch, normalizeAnswer } from './normalize.js';
import { disposeVisual, loadImageInput, visualTokensFor, type ImageInput } from './visual.js';
import { DataError } from '../errors.js';

export class EvalInputError extends DataError {
  constructor(message: string) {
    super(message);
    this.name = 'EvalInputError';
  }
}

export interface EvalOptions {
  model: MGLLaVA;
  tokenizer: TextTokenizer;
  template: PromptTemplate;
  /** LLaVA records (JSON array or JSONL) with a `category` field. */
  records: string;
  /** Folder the records' image paths are relative to (needed when a record has an image). */
  images: string | null;
  /** Box JSON keyed by record id (needed for image records when the model makes object tokens). */
  boxes: string | null;
  /** Predictions JSONL written here. */
  out: string;
  /** Prompts generated together (default 16). */
  batchSize?: number;
  /** Evaluate only the first N records. */
  limit?: number;
  /** Answer length budget (default 32 tokens). */
  maxNewTokens?: number;
  /** EXIF policy and pixel budget of the run (`imageOptionsOf(run.config.data)`; default: the reference's). */
  image?: DecodeOptions;
  onProgress?: (done: number, total: number) => void;
}

export interface CategoryScore {
  accuracy: number;
  correct: number;
  count: number;
}

export interface EvalSummary extends CategoryScore {
  byCategory: Record<string, CategoryScore>;
  predictions: string;
  /** Distinct images run through the encoders. */
  images: number;
  /** Tokens generated in all. */
  generatedTokens: number;
  seconds: number;
}

export interface Prediction {
  id: string;
  category: string | null;
  question: string;
  answer: string;
  prediction: string;
  correct: boolean;
}

export const NO_CATEGORY = '(none)';

/** Images through the frozen encoders at once: bounds activation memory at full size (768 px ConvNeXt). */
const IMAGES_PER_ENCODE = 4;

/** One record ready to run. */
interface EvalItem {
  index: number;
  record: LlavaRecord;
  /** The templated question text (may hold `<image>`) and the reference. */
  input: string;
  answer: string;
  imageFile: string | null;
  boxes: BoxEntry | null;
  /** Records with equal keys share their visual tokens (null: text-only). */
  key: string | null;
}

export async function runEval(o: EvalOptions): Promise<EvalSummary> {
  const t0 = performance.now();
  const batchSize = o.batchSize ?? 16;
  if (!(Number.isInteger(batchSize) && batchSize >= 1)) throw new EvalInputError(`eval: batch size must be an integer >= 1, got ${batchSize}`);
  const items = await checkInputs(o);
  const order = groupedOrder(items);
  const remaining = new Map<string, number>();
  for (const it of items) if (it.key) remaining.set(it.key, (remaining.get(it.key) ?? 0) + 1);

  const cache = new Map<string, VisualTokens>();
  const predictions: Prediction[] = new Array(items.length);
  const batches: EvalItem[][] = [];
  for (let i = 0; i < order.length; i += batchSize) batches.push(order.slice(i, i + batchSize));
  const stops = stopWords(o.template, o.tokenizer.eosToken);
  let done = 0;
  let generatedTokens = 0;
  let imagesEncoded = 0;
  try {
    let pending = loadBatchImages(o.model, batches[0] ?? [], cache, new Set(), o.image);
    for (let k = 0; k < batches.length; k++) {
      const batch = batches[k]!;
      const loaded = await pending;
      // Decode the next batch's images while this one generates (host work overlaps the awaits of generate).
      pending = loadBatchImages(o.model, batches[k + 1] ?? [], cache, new Set(loaded.keys()), o.image);
      pending.catch(() => undefined); // surfaced when awaited
      const keys = [...loaded.keys()];
      for (let i = 0; i < keys.length; i += IMAGES_PER_ENCODE) {
        const chunk = keys.slice(i, i + IMAGES_PER_ENCODE);
        visualTokensFor(o.model, chunk.map((key) => loaded.get(key)!)).forEach((v, j) => cache.set(chunk[j]!, v));
      }
      imagesEncoded += keys.length;
      const gens = await generate(
        o.model,
        batch.map((it) => ({ ids: buildChatPrompt(o.template, [], it.input, { tokenizer: o.tokenizer }), visual: it.key ? cache.get(it.key)! : null })),
        { tokenizer: o.tokenizer, maxNewTokens: o.maxNewTokens ?? 32, stopWords: stops },
      );
      batch.forEach((it, i) => {
        const g = gens[i]!;
        generatedTokens += g.ids.length;
        predictions[it.index] = {
          id: it.record.id,
          category: categoryOf(it.record),
          question: pyStrip(it.input.split(IMAGE_TOKEN).join('')),
          answer: it.answer,
          prediction: g.text,
          correct: answersMatch(g.text, it.answer),
        };
        if (!it.key) return;
        const left = remaining.get(it.key)! - 1;
        remaining.set(it.key, left);
        if (left === 0) {
          disposeVisual(cache.get(it.key)!);
          cache.delete(it.key);
        }
      });
      done += batch.length;
      o.onProgress?.(done, items.length);
    }
  } finally {
    for (const v of cache.values()) disposeVisual(v);
  }

  await writeJsonl(o.out, predictions);
  return { ...score(predictions), predictions: o.out, images: imagesEncoded, generatedTokens, seconds: (performance.now() - t0) / 1000 };
}

/** Accuracy overall and per category of a list of predictions. */
export function score(predictions: readonly Prediction[]): CategoryScore & { byCategory: Record<string, CategoryScore> } {
  const by = new Map<string, { correct: number; count: number }>();
  let correct = 0;
  for (const p of predictions) {
    const c = p.category ?? NO_CATEGORY;
    const s = by.get(c) ?? { correct: 0, count: 0 };
    s.count++;
    if (p.correct) {
      s.correct++;
      correct++;
    }
    by.set(c, s);
  }
  const acc = (s: { correct: number; count: number }): CategoryScore => ({ accuracy: s.count ? s.correct / s.count : 0, ...s });
  const byCategory = Object.fromEntries([...by.keys()].sort().map((k) => [k, acc(by.get(k)!)]));
  return { ...acc({ correct, count: predictions.length }), byCategory };
}

function categoryOf(r: LlavaRecord): string | null {
  const c = recordCategory(r);
  return 'category' in c ? c.category : null;
}

/** Read and check everything; an error lists every problem found (file, record, reason). Held-out evaluation runs it before training. */
export async function checkInputs(o: EvalOptions): Promise<EvalItem[]> {
  if (o.limit !== undefined && !(Number.isInteger(o.limit) && o.limit >= 1)) throw new EvalInputError(`eval: limit must be an integer >= 1, got ${o.limit}`);
  let loaded;
  try {
    loaded = await loadRecords(o.records);
  } catch (e) {
    throw new EvalInputError(`eval records ${o.records}: ${(e as Error).message}`);
  }
  const problems = loaded.bad.map(formatBadRecord);
  const records = loaded.records.slice(0, o.limit ?? loaded.records.length);
  const needBoxes = o.model.objects !== null && records.some((r) => r.image !== null);
  let boxes: Map<string, BoxEntry> | null = null;
  const badBoxIds = new Set<string>();
  if (needBoxes) {
    if (!o.boxes) throw new EvalInputError(`eval: the model makes object tokens from boxes; give a box file (--boxes, or data.boxes in the run's config) for the image records of ${o.records}`);
    const b = await loadBoxes(o.boxes);
    if (b.unreadable) throw new EvalInputError(`eval: box file ${formatBadRecord(b.unreadable)}`);
    const ids = new Set(records.map((r) => r.id));
    for (const x of b.bad) {
      // File-level problems always (they may hide an entry); entry problems of the evaluated records only.
      if (x.id !== null && !ids.has(x.id)) continue;
      problems.push(formatBadRecord(x));
      if (x.id !== null) badBoxIds.add(x.id);
    }
    boxes = b.entries;
  }
  const items: EvalItem[] = [];
  for (const [index, r] of records.entries()) {
    const at = `${r.source.file}${r.source.line !== undefined ? `:${r.source.line}` : ` [#${r.source.index}]`}: record ${JSON.stringify(r.id)}`;
    const cat = recordCategory(r);
    if ('problem' in cat) {
      problems.push(`${at}: ${cat.problem}`);
      continue;
    }
    const turn = llavaToTurns(r.conversations)[0];
    if (!turn) {
      problems.push(`${at}: no human message before a gpt message (nothing to ask)`);
      continue;
    }
    if (normalizeAnswer(turn.output ?? '') === '') {
      // An empty reference equals an empty prediction: a model that says nothing would score on it.
      problems.push(`${at}: the answer ${JSON.stringify(turn.output ?? '')} is empty once normalised (punctuation, articles and spaces dropped): nothing to compare a prediction with`);
      continue;
    }
    let imageFile: string | null = null;
    let entry: BoxEntry | null = null;
    if (r.image !== null) {
      if (!o.images) {
        problems.push(`${at}: has image ${r.image} but no image folder was given (--images, or data.images in the run's config)`);
        continue;
      }
      try {
        imageFile = await resolveImagePath(o.images, r.image);
      } catch (e) {
        if (!(e instanceof ImageError)) throw e;
        problems.push(`${at}: ${e.message}`);
        continue;
      }
      if (boxes) {
        entry = boxes.get(r.id) ?? null;
        if (!entry) {
          if (!badBoxIds.has(r.id)) problems.push(`${at}: no box entry for this id in ${o.boxes}`);
          continue;
        }
      }
    }
    const key = imageFile === null ? null : `${imageFile}\u0000${entry ? JSON.stringify(entry) : ''}`;
    items.push({ index, record: r, input: turn.input, answer: turn.output ?? '', imageFile, boxes: entry, key });
  }
  if (problems.length) {
    const shown = problems.slice(0, 20);
    const more = problems.length > shown.length ? [`... and ${problems.length - shown.length} more`] : [];
    throw new EvalInputError([`eval: ${problems.length} problem(s) in the inputs:`, ...shown, ...more].join('\n  '));
  }
  if (items.length === 0) throw new EvalInputError(`eval: ${o.records} has no record`);
  return items;
}

/** Items grouped by visual key (groups in order of first appearance, text-only items first), stable. */
function groupedOrder(items: readonly EvalItem[]): EvalItem[] {
  const groups = new Map<string | null, EvalItem[]>([[null, []]]);
  for (const it of items) {
    const g = groups.get(it.key);
    if (g) g.push(it);
    else groups.set(it.key, [it]);
  }
  return [...groups.values()].flat();
}

/** Preprocess (host only) the images of a batch that are neither cached nor already being loaded. */
async function loadBatchImages(
  model: MGLLaVA,
  batch: readonly EvalItem[],
  cache: Map<string, VisualTokens>,
  skip: Set<string> = new Set(),
  image: DecodeOptions = {},
): Promise<Map<string, ImageInput>> {
  const todo = new Map<string, EvalItem>();
  for (const it of batch) if (it.key && !cache.has(it.key) && !skip.has(it.key) && !todo.has(it.key)) todo.set(it.key, it);
  const out = new Map<string, ImageInput>();
  await Promise.all(
    [...todo].map(async ([key, it]) => {
      try {
        out.set(key, await loadImageInput(model, it.imageFile!, it.boxes, image));
      } catch (e) {
        throw new EvalInputError(`eval: record ${JSON.stringify(it.record.id)} (${it.record.source.file}): ${(e as Error).message}`);
      }
    }),
  );
  return new Map([...todo.keys()].filter((k) => out.has(k)).map((k) => [k, out.get(k)!]));
}

async function writeJsonl(file: string, rows: readonly object[]): Promise<void> {
  await writeFileAtomic(file, rows.map((r) => JSON.stringify(r)).join('\n') + (rows.length ? '\n' : ''), 'the predictions');
}
