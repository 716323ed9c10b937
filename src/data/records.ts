/**
 * Dataset files: LLaVA conversation records (JSON array or JSON Lines) and the offline detector's box JSON.
 *
 * Loading never throws on a bad record: it returns the good ones plus a `BadRecord` for every problem
 * (file, record id, line/column where known, reason), so `data check` can list them all and training can
 * refuse or skip them explicitly (see check.ts). Only I/O failures (missing file) throw.
 */
import { readFile } from 'node:fs/promises';
import { IMAGE_TOKEN } from './constants.js';
import { JsonSyntaxError, parseJson, parseJsonLines } from './json.js';

export type Role = 'human' | 'gpt';

export interface Turn {
  from: Role;
  value: string;
}

export interface LlavaRecord {
  id: string;
  /** Image path relative to the image folder; null for a text-only record. */
  image: string | null;
  conversations: Turn[];
  /** Any other fields of the record (e.g. `category` in eval files), untouched. */
  extra: Record<string, unknown>;
  /** Where it came from, for error messages. */
  source: { file: string; index: number; line?: number };
}

/** Detector output for one record, in original-image pixels (xyxy). */
export interface BoxEntry {
  boxes: [number, number, number, number][];
  labels: string[];
  scores: number[];
}

export type BadKind =
  | 'malformed_json'
  | 'bad_record'
  | 'duplicate_id'
  | 'empty_conversation'
  | 'image_token_count'
  | 'image_outside_folder'
  | 'missing_image'
  | 'undecodable_image'
  | 'missing_boxes'
  | 'bad_boxes'
  | 'nonfinite_box'
  | 'all_labels_masked';

export interface BadRecord {
  file: string;
  /** Record id, or null when it could not be read (malformed line, missing id). */
  id: string | null;
  kind: BadKind;
  reason: string;
  /** 0-based position of the record in its file, when known. */
  index?: number;
  line?: number;
  column?: number;
  /** The image path involved (image problems). */
  path?: string;
}

export function countImageTokens(text: string): number {
  return text.split(IMAGE_TOKEN).length - 1;
}

// ------------------------------------------------------------------------------------------------
// Records

export interface RecordsResult {
  records: LlavaRecord[];
  bad: BadRecord[];
}

/** Read records from a `.json` (array) or `.jsonl` file; the format is sniffed when the extension is neither. */
export async function loadRecords(file: string): Promise<RecordsResult> {
  return parseRecords(await readFile(file, 'utf8'), file);
}

export function parseRecords(text: string, file: string): RecordsResult {
  const records: LlavaRecord[] = [];
  const bad: BadRecord[] = [];
  const seen = new Map<string, number>();
  const accept = (raw: unknown, index: number, line?: number): void => {
    const r = toRecord(raw, file, index, line);
    if ('bad' in r) {
      bad.push(r.bad);
      return;
    }
    const first = seen.get(r.record.id);
    if (first !== undefined) {
      bad.push({ file, id: r.record.id, index, line, kind: 'duplicate_id', reason: `id also used by record #${first}` });
      return;
    }
    seen.set(r.record.id, index);
    const problem = conversationProblem(r.record);
    if (problem) bad.push({ file, id: r.record.id, index, line, ...problem });
    else records.push(r.record);
  };

  if (isJsonLines(text, file)) {
    parseJsonLines(text, file).forEach((l, index) => {
      if (l.error) bad.push(malformed(l.error, index));
      else accept(l.value, index, l.line);
    });
    return { records, bad };
  }
  let doc: unknown;
  try {
    doc = parseJson(text, file);
  } catch (e) {
    if (e instanceof JsonSyntaxError) return { records, bad: [malformed(e)] };
    throw e;
  }
  if (!Array.isArray(doc)) {
    return { records, bad: [{ file, id: null, kind: 'bad_record', reason: 'a JSON records file must hold an array of records' }] };
  }
  doc.forEach((raw, index) => accept(raw, index));
  return { records, bad };
}

function isJsonLines(text: string, file: string): boolean {
  if (file.endsWith('.jsonl')) return true;
  if (file.endsWith('.json')) return false;
  return !text.trimStart().replace(/^\ufeff/, '').startsWith('[');
}

function malformed(e: JsonSyntaxError, index?: number): BadRecord {
  return { file: e.file, id: null, index, line: e.line, column: e.column, kind: 'malformed_json', reason: `malformed JSON at line ${e.line}, column ${e.column}: ${e.detail}` };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function toRecord(raw: unknown, file: string, index: number, line?: number): { record: LlavaRecord } | { bad: BadRecord } {
  const bad = (id: string | null, reason: string, kind: BadKind = 'bad_record') => ({ bad: { file, id, index, line, kind, reason } });
  if (!isObject(raw)) return bad(null, 'a record must be a JSON object');
  const { id: rawId, image, conversations, ...extra } = raw;
  if (typeof rawId !== 'string' && typeof rawId !== 'number') return bad(null, "missing 'id' (string or number)");
  const id = String(rawId);
  if (image !== undefined && image !== null && typeof image !== 'string') return bad(id, "'image' must be a string path");
  if (image === '') return bad(id, "'image' is an empty string");
  if (!Array.isArray(conversations)) return bad(id, "missing 'conversations' array");
  const turns: Turn[] = [];
  for (const [i, t] of conversations.entries()) {
    if (!isObject(t) || (t.from !== 'human' && t.from !== 'gpt') || typeof t.value !== 'string') {
      return bad(id, `conversations[${i}] must be {"from": "human"|"gpt", "value": string}`);
    }
    turns.push({ from: t.from, value: t.value });
  }
  return { record: { id, image: typeof image === 'string' ? image : null, conversations: turns, extra, source: { file, index, line } } };
}

/** Problems visible from the conversation alone: empty, or `<image>` placeholders in the wrong number/place. */
export function conversationProblem(r: LlavaRecord): { kind: BadKind; reason: string } | null {
  if (r.conversations.length === 0) return { kind: 'empty_conversation', reason: 'conversations is empty' };
  if (!r.conversations.some((t) => t.from === 'gpt')) {
    return { kind: 'empty_conversation', reason: 'no gpt turn: nothing to supervise' };
  }
  if (!r.conversations.some((t) => t.from === 'human')) {
    return { kind: 'empty_conversation', reason: 'no human turn' };
  }
  const counts = r.conversations.map((t) => countImageTokens(t.value));
  const total = counts.reduce((a, b) => a + b, 0);
  if (r.image === null) {
    if (total > 0) return { kind: 'image_token_count', reason: `text-only record has ${total} ${IMAGE_TOKEN} placeholder(s), expected 0` };
    return null;
  }
  if (total !== 1) return { kind: 'image_token_count', reason: `image record has ${total} ${IMAGE_TOKEN} placeholders, expected exactly 1` };
  const firstHuman = r.conversations.findIndex((t) => t.from === 'human');
  if (counts[firstHuman] !== 1) {
    return { kind: 'image_token_count', reason: `${IMAGE_TOKEN} must be in the first human turn (found in conversations[${counts.indexOf(1)}])` };
  }
  return null;
}

// ------------------------------------------------------------------------------------------------
// Boxes

export interface BoxesResult {
  entries: Map<string, BoxEntry>;
  /** Problems tied to an id (reported against the record with that id) or to the file (id null). */
  bad: BadRecord[];
  /** Set when the whole file could not be read: every image record then lacks its boxes. */
  unreadable: BadRecord | null;
}

/** Box JSON: `{id: {boxes, labels, scores}}` or `[{id, boxes, labels, scores}, ...]`. */
export async function loadBoxes(file: string): Promise<BoxesResult> {
  return parseBoxes(await readFile(file, 'utf8'), file);
}

export function parseBoxes(text: string, file: string): BoxesResult {
  const entries = new Map<string, BoxEntry>();
  const bad: BadRecord[] = [];
  let doc: unknown;
  try {
    doc = parseJson(text, file);
  } catch (e) {
    if (!(e instanceof JsonSyntaxError)) throw e;
    const m = malformed(e);
    return { entries, bad: [m], unreadable: m };
  }
  const seen = new Set<string>();
  const add = (id: string, raw: unknown, index?: number): void => {
    if (seen.has(id)) {
      // Two detector outputs for one record: neither can be trusted.
      entries.delete(id);
      bad.push({ file, id, index, kind: 'bad_boxes', reason: 'duplicate box entry for this id' });
      return;
    }
    seen.add(id);
    const r = toBoxEntry(raw);
    if ('kind' in r) bad.push({ file, id, index, ...r });
    else entries.set(id, r);
  };
  if (Array.isArray(doc)) {
    doc.forEach((item, index) => {
      if (!isObject(item) || (typeof item.id !== 'string' && typeof item.id !== 'number')) {
        bad.push({ file, id: null, index, kind: 'bad_boxes', reason: "box list item without an 'id'" });
      } else add(String(item.id), item, index);
    });
  } else if (isObject(doc)) {
    for (const [id, v] of Object.entries(doc)) add(id, v);
  } else {
    const m: BadRecord = { file, id: null, kind: 'bad_boxes', reason: 'box JSON must be an object keyed by id or a list of entries with an id' };
    return { entries, bad: [m], unreadable: m };
  }
  return { entries, bad, unreadable: null };
}

function toBoxEntry(raw: unknown): BoxEntry | { kind: BadKind; reason: string } {
  const wrong = (reason: string) => ({ kind: 'bad_boxes' as const, reason });
  if (!isObject(raw)) return wrong('box entry must be an object {boxes, labels, scores}');
  const { boxes, labels, scores } = raw;
  if (!Array.isArray(boxes)) return wrong("missing 'boxes' list");
  if (!Array.isArray(labels)) return wrong("missing 'labels' list");
  if (!Array.isArray(scores)) return wrong("missing 'scores' list");
  if (labels.length !== boxes.length || scores.length !== boxes.length) {
    return wrong(`${boxes.length} boxes but ${labels.length} labels and ${scores.length} scores`);
  }
  const out: BoxEntry = { boxes: [], labels: [], scores: [] };
  for (const [i, b] of boxes.entries()) {
    if (!Array.isArray(b) || b.length !== 4) return wrong(`boxes[${i}] must be [x1, y1, x2, y2]`);
    // null is what JS serializers write for NaN/Infinity, so it counts as non-finite too.
    if (!b.every((v) => typeof v === 'number' || v === null)) return wrong(`boxes[${i}] has a non-number coordinate`);
    if (!b.every((v) => Number.isFinite(v))) {
      return { kind: 'nonfinite_box', reason: `boxes[${i}] = [${b.map(String).join(', ')}] has a non-finite coordinate` };
    }
    out.boxes.push(b as [number, number, number, number]);
  }
  for (const [i, l] of labels.entries()) {
    if (typeof l !== 'string' && typeof l !== 'number') return wrong(`labels[${i}] must be a string`);
    out.labels.push(String(l));
  }
  for (const [i, s] of scores.entries()) {
    if (typeof s !== 'number' || !Number.isFinite(s)) return wrong(`scores[${i}] must be a finite number`);
    out.scores.push(s);
  }
  return out;
}
