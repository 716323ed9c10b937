/**
 * Dataset validation shared by `mgllava data check` and training (dataset.ts): every record of a records
 * file is checked against its image folder, box file and text encoding, and every problem is reported with
 * the file, record id and reason (DESIGN principle 5: no silent data loss).
 *
 * Checks, per record: JSON well-formed (line/column), record shape, unique id, non-empty conversation with
 * a gpt turn, `<image>` exactly once in the first human turn of an image record and never in a text-only
 * one, image path inside the image folder, image present and decodable (fully decoded by default: a
 * truncated file fails), box entry present and well-formed with finite coordinates (image records only),
 * and at least one supervised label after truncation to max_length.
 */
import { writeFile } from 'node:fs/promises';
import sharp from 'sharp';
import { encodeConversation } from './conversation.js';
import { decodeImage, ImageError, resolveImagePath } from './image.js';
import { loadBoxes, loadRecords, type BadRecord, type BoxEntry, type LlavaRecord } from './records.js';
import type { PromptTemplate } from './templates.js';
import type { TextTokenizer } from './tokenizer.js';
import { runPool } from './pool.js';

export interface TextEncoding {
  template: PromptTemplate;
  tokenizer: TextTokenizer;
  /** Token budget of the text (1472 = 2048 - 576 at full size). */
  maxLength: number;
}

export interface CheckOptions {
  records: string;
  /** Box JSON; without it every image record lacks its boxes. */
  boxes?: string | null;
  images: string;
  text: TextEncoding;
  /** 'decode' (default) decodes every image fully; 'header' only reads its header (faster, misses truncation). */
  imageCheck?: 'decode' | 'header';
  /** Passed to the decoder (see image.ts). */
  autoOrient?: boolean;
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

export interface CheckReport {
  records: string;
  boxes: string | null;
  images: string;
  /** Records seen in the file (good + bad; a file that cannot be split into records counts as 0). */
  total: number;
  valid: CheckedRecord[];
  /** Every problem; a record can appear more than once (e.g. missing image and missing boxes). */
  bad: BadRecord[];
}

export async function checkDataset(o: CheckOptions): Promise<CheckReport> {
  const recs = await loadRecords(o.records);
  const boxes = o.boxes ? await loadBoxes(o.boxes) : null;
  const bad: BadRecord[] = [...recs.bad];
  const imageIds = new Set(recs.records.filter((r) => r.image !== null).map((r) => r.id));
  if (boxes) {
    // File-level box problems always; entry problems only for the image records of this file (text-only
    // records use no boxes, other ids belong to other record files).
    bad.push(...boxes.bad.filter((b) => b.id === null || imageIds.has(b.id)));
  }
  const boxProblem = new Set(boxes?.bad.filter((b) => b.id !== null).map((b) => b.id!) ?? []);
  const imageStatus = new Map<string, Promise<ImageProblem | null>>();
  const checkImage = (file: string) => {
    let p = imageStatus.get(file);
    if (!p) {
      p = imageProblem(file, o.imageCheck ?? 'decode', o.autoOrient);
      imageStatus.set(file, p);
    }
    return p;
  };

  const valid: (CheckedRecord | null)[] = new Array(recs.records.length).fill(null);
  await runPool(recs.records, o.concurrency ?? 4, async (r, k) => {
    const problems: BadRecord[] = [];
    const at = { file: r.source.file, id: r.id, index: r.source.index, line: r.source.line };
    let imagePath: string | null = null;
    if (r.image !== null) {
      try {
        imagePath = await resolveImagePath(o.images, r.image);
        const p = await checkImage(imagePath);
        if (p) problems.push({ ...at, ...p });
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
  });

  return {
    records: o.records,
    boxes: o.boxes ?? null,
    images: o.images,
    total: recs.records.length + recs.bad.filter((b) => b.index !== undefined).length,
    valid: valid.filter((v): v is CheckedRecord => v !== null),
    bad: sortBad(bad),
  };
}

type ImageProblem = Pick<BadRecord, 'kind' | 'reason' | 'path'>;

function fromImageError(e: ImageError): ImageProblem {
  const kind = e.kind === 'missing' ? 'missing_image' : e.kind === 'outside' ? 'image_outside_folder' : 'undecodable_image';
  return { kind, reason: e.detail, path: e.path };
}

async function imageProblem(file: string, mode: 'decode' | 'header', autoOrient?: boolean): Promise<ImageProblem | null> {
  try {
    if (mode === 'decode') {
      await decodeImage(file, { autoOrient });
    } else {
      const m = await sharp(file, { failOn: 'warning', limitInputPixels: true }).metadata();
      if (!m.width || !m.height) return { kind: 'undecodable_image', reason: 'image header has no size', path: file };
    }
    return null;
  } catch (e) {
    if (e instanceof ImageError) return fromImageError(e);
    return { kind: 'undecodable_image', reason: `cannot read image header: ${(e as Error).message}`, path: file };
  }
}

function sortBad(bad: BadRecord[]): BadRecord[] {
  return bad
    .map((b, i) => ({ b, i }))
    .sort((x, y) => (x.b.file < y.b.file ? -1 : x.b.file > y.b.file ? 1 : 0) || (x.b.index ?? -1) - (y.b.index ?? -1) || x.i - y.i)
    .map((x) => x.b);
}

/** `file:line:col: record <id>: <kind>: <reason>` — one line per problem. */
export function formatBadRecord(b: BadRecord): string {
  const where = b.line !== undefined ? `${b.file}:${b.line}${b.column !== undefined ? `:${b.column}` : ''}` : b.index !== undefined ? `${b.file} [#${b.index}]` : b.file;
  const who = b.id !== null ? `record ${JSON.stringify(b.id)}` : 'record ?';
  return `${where}: ${who}: ${b.kind}: ${b.reason}${b.path && !b.reason.includes(b.path) ? ` (${b.path})` : ''}`;
}

/** The skip report: one JSON object per line, every field of BadRecord. */
export async function writeBadReport(file: string, bad: readonly BadRecord[]): Promise<void> {
  await writeFile(file, bad.map((b) => JSON.stringify(b)).join('\n') + (bad.length ? '\n' : ''));
}
