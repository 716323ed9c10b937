/**
 * Dataset validation shared by `mgllava data check` and training (dataset.ts): every record of a records
 * file is checked against its image folder, box file and text encoding, and every problem is reported with
 * the file, record id and reason (DESIGN principle 5: no silent data loss).
 *
 * Checks, per record: JSON well-formed (line/column), record shape, unique id, non-empty conversation with
 * a gpt turn, `<image>` exactly once in the first human turn of an image record and never in a text-only
 * one, image path inside the image folder, image present, within the pixel budget and decodable (fully
 * decoded by default: a truncated file fails), box entry present and well-formed with finite coordinates
 * (image records only), and at least one supervised label after truncation to max_length.
 *
 * Warnings (the record is still used, exactly as the reference would use it): boxes that are inverted, look
 * like [x, y, w, h] or reach outside the image (box-audit.ts), an image with an EXIF orientation (ignored or
 * applied per `data.exif_orientation`), and a sample whose text + image + object tokens exceed the token
 * budget (token-budget.ts; the lowest-scoring object tokens are then dropped).
 */
import { writeFileAtomic } from '../io/output-file.js';
import { auditBoxes, describeAudit } from './box-audit.js';
import { isCloseToMaxLength, preprocessBoxes } from './boxes.js';
import { encodeConversation } from './conversation.js';
import { decodeImage, describeOrientation, ImageError, orientationSwapsSides, readImageHeader, resolveImagePath, type DecodeOptions } from './image.js';
import { loadBoxes, loadRecords, type BadRecord, type BoxEntry, type LlavaRecord } from './records.js';
import type { PromptTemplate } from './templates.js';
import type { TextTokenizer } from './tokenizer.js';
import { positionBudget, samplePositions, type TokenBudget } from './token-budget.js';
import { runPool } from './pool.js';

export interface TextEncoding {
  template: PromptTemplate;
  tokenizer: TextTokenizer;
  /** Token budget of the text (1472 = 2048 - 576 at full size). */
  maxLength: number;
}

/** What the token-budget check needs besides the text: the model's image tokens and the box rule. */
export interface ObjectTokenCheck {
  imageTokens: number;
  auxSize: number;
  nmsThreshold: number;
  limitNum: number | null;
}

export interface CheckOptions {
  records: string;
  /** Box JSON; without it every image record lacks its boxes. */
  boxes?: string | null;
  images: string;
  text: TextEncoding;
  /** 'decode' (default) decodes every image fully; 'header' only reads its header (faster, misses truncation). */
  imageCheck?: 'decode' | 'header';
  /** EXIF policy and pixel budget (image.ts `imageOptionsOf(config.data)`). */
  image?: DecodeOptions;
  /** Count object tokens per record and warn past the token budget (null: the model makes no object tokens). */
  objectTokens?: ObjectTokenCheck | null;
  /** Images checked at once (default 4). */
  concurrency?: number;
}

/** A record that passed every check, with what training needs from the checks. */
export interface CheckedRecord {
  record: LlavaRecord;
  /** Resolved image file; null for text-only records. */
  imagePath: string | null;
  boxes: BoxEntry | null;
  inputIds: Int32Array;
  labels: Int32Array;
}

export type WarningKind = 'inverted_boxes' | 'xywh_boxes' | 'boxes_outside_image' | 'exif_orientation' | 'over_token_budget';

/** Something odd about a record that is still used as it is. */
export interface DataWarning {
  file: string;
  id: string;
  index: number;
  line?: number;
  kind: WarningKind;
  /** How many boxes / tokens it concerns. */
  count: number;
  reason: string;
  path?: string;
}

export interface CheckReport {
  records: string;
  boxes: string | null;
  images: string;
  /** Records seen in the file (good + bad; a file that cannot be split into records counts as 0). */
  total: number;
  valid: CheckedRecord[];
  /** Every problem; a record can appear more than once (e.g. missing image and missing boxes). */
  bad: BadRecord[];
  /** Oddities of usable records, in file order. */
  warnings: DataWarning[];
}

interface ImageInfo {
  /** Size as loaded (after EXIF rotation when applied). */
  width: number;
  height: number;
  orientation: number;
}

export async function checkDataset(o: CheckOptions): Promise<CheckReport> {
  const recs = await loadRecords(o.records);
  const boxes = o.boxes ? await loadBoxes(o.boxes) : null;
  const bad: BadRecord[] = [...recs.bad];
  const warnings: DataWarning[] = [];
  const imageIds = new Set(recs.records.filter((r) => r.image !== null).map((r) => r.id));
  if (boxes) {
    // File-level box problems always; entry problems only for the image records of this file (text-only
    // records use no boxes, other ids belong to other record files).
    bad.push(...boxes.bad.filter((b) => b.id === null || imageIds.has(b.id)));
  }
  const boxProblem = new Set(boxes?.bad.filter((b) => b.id !== null).map((b) => b.id!) ?? []);
  const imageStatus = new Map<string, Promise<ImageProblem | ImageInfo>>();
  const checkImage = (file: string) => {
    let p = imageStatus.get(file);
    if (!p) {
      p = inspectImage(file, o.imageCheck ?? 'decode', o.image ?? {});
      imageStatus.set(file, p);
    }
    return p;
  };
  const budget: TokenBudget | null = o.objectTokens ? { maxLength: o.text.maxLength, imageTokens: o.objectTokens.imageTokens } : null;

  const valid: (CheckedRecord | null)[] = new Array(recs.records.length).fill(null);
  const recordWarnings: DataWarning[][] = recs.records.map(() => []);
  await runPool(recs.records, o.concurrency ?? 4, async (r, k) => {
    const problems: BadRecord[] = [];
    const at = { file: r.source.file, id: r.id, index: r.source.index, line: r.source.line };
    let imagePath: string | null = null;
    let info: ImageInfo | null = null;
    if (r.image !== null) {
      try {
        imagePath = await resolveImagePath(o.images, r.image);
        const p = await checkImage(imagePath);
        if ('kind' in p) problems.push({ ...at, ...p });
        else info = p;
      } catch (e) {
        if (!(e instanceof ImageError)) throw e;
        problems.push({ ...at, ...fromImageError(e) });
      }
    }
    let entry: BoxEntry | null = null;
    if (r.image !== null) {
      if (!boxes) {
        problems.push({ ...at, kind: 'missing_boxes', reason: 'no box file given (--boxes)' });
      } else if (boxes.unreadable) {
        problems.push({ ...at, kind: 'missing_boxes', reason: `box file ${o.boxes} could not be read: ${boxes.unreadable.reason}` });
      } else if (!boxProblem.has(r.id)) {
        entry = boxes.entries.get(r.id) ?? null;
        if (!entry) problems.push({ ...at, kind: 'missing_boxes', reason: `no entry for this id in ${o.boxes}` });
      }
      // (a malformed entry was already reported from the box file, under this id)
    }
    // The record's structure was checked when it was read, so an encoding error here is a template /
    // tokenizer problem that concerns every record: it propagates instead of marking records bad.
    const e = encodeConversation(r.conversations, o.text);
    const wantImage = r.image === null ? 0 : 1;
    if (e.numImageTokens !== wantImage) {
      // Truncation cut the placeholder off (the raw text had exactly the right count).
      problems.push({ ...at, kind: 'image_token_count', reason: `${e.numImageTokens} image placeholder(s) left after truncation to max_length ${o.text.maxLength}, expected ${wantImage}` });
    }
    if (e.allMasked) {
      problems.push({ ...at, kind: 'all_labels_masked', reason: `no supervised token left after truncation to max_length ${o.text.maxLength} (${e.inputIds.length} tokens)` });
    }
    const enc = { inputIds: Int32Array.from(e.inputIds), labels: Int32Array.from(e.labels) };
    if (problems.length > 0 || (r.image !== null && boxProblem.has(r.id))) {
      bad.push(...problems);
      return;
    }
    valid[k] = { record: r, imagePath, boxes: entry, ...enc };
    if (info && entry) recordWarnings[k] = imageWarnings(at, imagePath!, info, entry, o, budget, enc.inputIds.length);
  });

  warnings.push(...recordWarnings.flat());
  return {
    records: o.records,
    boxes: o.boxes ?? null,
    images: o.images,
    total: recs.records.length + recs.bad.filter((b) => b.index !== undefined).length,
    valid: valid.filter((v): v is CheckedRecord => v !== null),
    bad: sortBad(bad),
    warnings,
  };
}

/** Box audit, EXIF orientation and token budget of one usable image record. */
function imageWarnings(
  at: { file: string; id: string; index: number; line?: number },
  imagePath: string,
  info: ImageInfo,
  entry: BoxEntry,
  o: CheckOptions,
  budget: TokenBudget | null,
  textTokens: number,
): DataWarning[] {
  const out: DataWarning[] = [];
  if (info.orientation !== 1) {
    const applied = o.image?.exifOrientation === 'apply';
    out.push({
      ...at,
      kind: 'exif_orientation',
      count: 1,
      path: imagePath,
      reason: applied
        ? `EXIF orientation ${info.orientation} (${describeOrientation(info.orientation)}) is applied (data.exif_orientation: apply): its boxes must be in the rotated ${info.width}x${info.height} frame`
        : `EXIF orientation ${info.orientation} (${describeOrientation(info.orientation)}) is ignored, as the reference does (data.exif_orientation: ignore): its boxes must be in the stored ${info.width}x${info.height} frame`,
    });
  }
  for (const w of describeAudit(auditBoxes(entry, info.width, info.height), entry, info.width, info.height)) out.push({ ...at, ...w });
  if (budget && o.objectTokens) {
    const c = o.objectTokens;
    const objects = preprocessBoxes(entry, {
      origW: info.width,
      origH: info.height,
      auxSize: c.auxSize,
      nmsThreshold: c.nmsThreshold,
      limitNum: c.limitNum,
      closeToMaxLength: isCloseToMaxLength(textTokens, budget.maxLength),
    }).boxes.length;
    const positions = samplePositions(textTokens, objects, budget);
    const limit = positionBudget(budget);
    if (positions > limit) {
      const over = positions - limit;
      out.push({
        ...at,
        kind: 'over_token_budget',
        count: over,
        reason:
          `${textTokens - 1} text + ${budget.imageTokens} image + ${objects} object tokens (of ${entry.boxes.length} detector boxes, after NMS and the per-label cap) = ${positions} LLM positions, ` +
          `over the budget of ${limit} (data.max_length ${budget.maxLength} + image tokens): the ${over} lowest-scoring object tokens are dropped`,
      });
    }
  }
  return out;
}

type ImageProblem = Pick<BadRecord, 'kind' | 'reason' | 'path'>;

function fromImageError(e: ImageError): ImageProblem {
  const kind = e.kind === 'missing' ? 'missing_image' : e.kind === 'outside' ? 'image_outside_folder' : e.kind === 'too_large' ? 'image_too_large' : 'undecodable_image';
  return { kind, reason: e.detail, path: e.path };
}

async function inspectImage(file: string, mode: 'decode' | 'header', opts: DecodeOptions): Promise<ImageProblem | ImageInfo> {
  try {
    const h = await readImageHeader(file, opts);
    if (mode === 'decode') {
      const img = await decodeImage(file, opts);
      return { width: img.width, height: img.height, orientation: h.orientation };
    }
    const swap = opts.exifOrientation === 'apply' && orientationSwapsSides(h.orientation);
    return { width: swap ? h.height : h.width, height: swap ? h.width : h.height, orientation: h.orientation };
  } catch (e) {
    if (e instanceof ImageError) return fromImageError(e);
    throw e;
  }
}

function sortBad(bad: BadRecord[]): BadRecord[] {
  return bad
    .map((b, i) => ({ b, i }))
    .sort((x, y) => (x.b.file < y.b.file ? -1 : x.b.file > y.b.file ? 1 : 0) || (x.b.index ?? -1) - (y.b.index ?? -1) || x.i - y.i)
    .map((x) => x.b);
}

function where(b: { file: string; line?: number; column?: number; index?: number }): string {
  return b.line !== undefined ? `${b.file}:${b.line}${b.column !== undefined ? `:${b.column}` : ''}` : b.index !== undefined ? `${b.file} [#${b.index}]` : b.file;
}

/** `file:line:col: record <id>: <kind>: <reason>` — one line per problem. */
export function formatBadRecord(b: BadRecord): string {
  const who = b.id !== null ? `record ${JSON.stringify(b.id)}` : 'record ?';
  return `${where(b)}: ${who}: ${b.kind}: ${b.reason}${b.path && !b.reason.includes(b.path) ? ` (${b.path})` : ''}`;
}

/** `file:line: record <id>: warning: <kind>: <reason>` — one line per warning. */
export function formatWarning(w: DataWarning): string {
  return `${where(w)}: record ${JSON.stringify(w.id)}: warning: ${w.kind}: ${w.reason}${w.path && !w.reason.includes(w.path) ? ` (${w.path})` : ''}`;
}

/** "3 records with inverted_boxes (7 boxes), 1 with exif_orientation" — the warning totals by kind. */
export function summarizeWarnings(warnings: readonly DataWarning[]): string {
  const by = new Map<WarningKind, { records: number; count: number }>();
  for (const w of warnings) {
    const s = by.get(w.kind) ?? { records: 0, count: 0 };
    s.records++;
    s.count += w.count;
    by.set(w.kind, s);
  }
  const unit: Record<WarningKind, [string, string] | null> = {
    inverted_boxes: ['box', 'boxes'],
    xywh_boxes: ['box', 'boxes'],
    boxes_outside_image: ['box', 'boxes'],
    exif_orientation: null,
    over_token_budget: ['object token dropped', 'object tokens dropped'],
  };
  return [...by]
    .map(([k, s]) => {
      const u = unit[k];
      return `${s.records} record${s.records === 1 ? '' : 's'} with ${k}${u ? ` (${s.count} ${u[s.count === 1 ? 0 : 1]})` : ''}`;
    })
    .join(', ');
}

// Output files (the skip report, --save-image, eval --out) are checked by io/output-file.ts.
export { checkOutputFile } from '../io/output-file.js';

/** The skip report: one JSON object per line, every field of BadRecord. */
export async function writeBadReport(file: string, bad: readonly BadRecord[]): Promise<void> {
  await writeFileAtomic(file, bad.map((b) => JSON.stringify(b)).join('\n') + (bad.length ? '\n' : ''), 'the skip report');
}
