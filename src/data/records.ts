/**
 * Dataset files: LLaVA conversation records (JSON array or JSON Lines) and the offline detector's box JSON.
 *
 * Loading never throws on a bad record: it returns the good ones plus a `BadRecord` for every problem
 * (file, record id, line/column where known, reason), so `data check` can list them all and training can
 * refuse or skip them explicitly (see check.ts). Only I/O failures (missing file) throw.
 */
import { open, stat } from 'node:fs/promises';
import { DataError, fsError } from '../errors.js';
import { IMAGE_TOKEN } from './constants.js';
import { JsonSyntaxError, jsonItems, type JsonContainer } from './json.js';

/** A dataset file, or its text in memory (whole or in chunks). */
type DataSource = string | { chunks: string[] } | { file: string };

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
  | 'image_too_large'
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

/**
 * Check that a dataset path can be read as a file before streaming it: a missing file, a directory, a device
 * (`/dev/zero` never ends) is one DataError naming the file and what it is for. Pipes (FIFOs) are allowed;
 * json.ts bounds what is read from them.
 */
export async function checkDataFile(file: string, what: string): Promise<void> {
  let s;
  try {
    s = await stat(file);
  } catch (e) {
    throw fsError(e, file, `reading the ${what}`);
  }
  if (s.isDirectory()) throw new DataError(`${file}: the ${what} is a directory; give the JSON file inside it`);
  if (!s.isFile() && !s.isFIFO()) throw new DataError(`${file}: the ${what} is a device or socket, not a file`);
}

/** Run a read of a dataset file, turning file-system errors (EISDIR, EIO, ...) into one line naming the file. */
async function reading<T>(file: string, what: string, read: () => Promise<T>): Promise<T> {
  try {
    return await read();
  } catch (e) {
    throw fsError(e, file, `reading the ${what}`);
  }
}

/** Read records from a `.json` (array) or `.jsonl` file, streamed; JSON Lines unless the file starts with '['. */
export async function loadRecords(file: string): Promise<RecordsResult> {
  await checkDataFile(file, 'records file');
  return reading(file, 'records file', () => readRecords({ file }, file));
}

/** The same from text in memory, whole or in chunks (tests, small inputs). */
export async function parseRecords(text: string | { chunks: string[] }, file: string): Promise<RecordsResult> {
  return readRecords(text, file);
}

async function readRecords(source: DataSource, file: string): Promise<RecordsResult> {
  const records: LlavaRecord[] = [];
  const bad: BadRecord[] = [];
  const seen = new Map<string, number>();
  let container: JsonContainer | null = null;
  try {
    const format = (await looksLikeJsonLines(source, file)) ? 'lines' : 'auto';
    for await (const item of jsonItems(source, file, format, (c) => (container = c))) {
      if (container === 'object') break;
      const line = item.line;
      const index = item.index;
      if (item.error) {
        bad.push(malformed(item.error, index));
        continue;
      }
      const r = toRecord(item.value, file, index, line);
      if ('bad' in r) {
        bad.push(r.bad);
        continue;
      }
      const first = seen.get(r.record.id);
      if (first !== undefined) {
        bad.push({ file, id: r.record.id, index, line, kind: 'duplicate_id', reason: `id also used by record #${first}` });
        continue;
      }
      seen.set(r.record.id, index);
      const problem = conversationProblem(r.record);
      if (problem) bad.push({ file, id: r.record.id, index, line, ...problem });
      else records.push(r.record);
    }
  } catch (e) {
    // A structural error: the file cannot be split into records, none of it is used.
    if (e instanceof JsonSyntaxError) return { records: [], bad: [malformed(e)] };
    throw e;
  }
  if (container === 'object') {
    return { records: [], bad: [{ file, id: null, kind: 'bad_record', reason: 'a JSON records file must hold an array of records (or one record per line)' }] };
  }
  return { records, bad };
}

/** `.jsonl` → lines, `.json` → array; otherwise sniff the first non-blank character. */
async function looksLikeJsonLines(source: DataSource, file: string): Promise<boolean> {
  if (file.endsWith('.jsonl')) return true;
  if (file.endsWith('.json')) return false;
  let head: string;
  if (typeof source === 'string') head = source.slice(0, 4096);
  else if ('chunks' in source) head = [...source.chunks].join('').slice(0, 4096);
  else {
    const fh = await open(source.file, 'r');
    try {
      const buf = Buffer.alloc(4096);
      const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
      head = buf.subarray(0, bytesRead).toString('utf8');
    } finally {
      await fh.close();
    }
  }
  return !head.replace(/^\ufeff/, '').trimStart().startsWith('[');
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

/**
 * The `category` of an eval record: a string (or number, as text); absent = uncategorised (null). Anything else
 * (null, an object, a list, a boolean, an empty string) is a problem: it would otherwise be counted silently
 * under "(none)" or as "[object Object]".
 */
export function recordCategory(r: Pick<LlavaRecord, 'extra'>): { category: string | null } | { problem: string } {
  if (!('category' in r.extra)) return { category: null };
  const c = r.extra.category;
  if (typeof c === 'string' && c.trim() !== '') return { category: c };
  if (typeof c === 'number' && Number.isFinite(c)) return { category: String(c) };
  const got = c === null ? 'null' : Array.isArray(c) ? 'a list' : typeof c === 'string' ? 'an empty string' : typeof c === 'object' ? 'an object' : `a ${typeof c}`;
  return { problem: `'category' must be a non-empty string or a number, got ${got} (leave the key out for an uncategorised record)` };
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

/** Box JSON: `{id: {boxes, labels, scores}}` or `[{id, boxes, labels, scores}, ...]`, streamed. */
export async function loadBoxes(file: string): Promise<BoxesResult> {
  await checkDataFile(file, 'box file');
  return reading(file, 'box file', () => readBoxes({ file }, file));
}

export async function parseBoxes(text: string | { chunks: string[] }, file: string): Promise<BoxesResult> {
  return readBoxes(text, file);
}

async function readBoxes(source: DataSource, file: string): Promise<BoxesResult> {
  const entries = new Map<string, BoxEntry>();
  const bad: BadRecord[] = [];
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
  try {
    for await (const item of jsonItems(source, file, 'auto')) {
      if (item.key !== null) {
        // {id: entry}: a malformed entry is still attributable to its id.
        if (item.error) bad.push({ ...malformed(item.error), id: item.key });
        else add(item.key, item.value);
        continue;
      }
      if (item.error) {
        bad.push(malformed(item.error, item.index));
        continue;
      }
      const v = item.value;
      if (!isObject(v) || (typeof v.id !== 'string' && typeof v.id !== 'number')) {
        bad.push({ file, id: null, index: item.index, line: item.line, kind: 'bad_boxes', reason: "box list item without an 'id'" });
      } else add(String(v.id), v, item.index);
    }
  } catch (e) {
    if (!(e instanceof JsonSyntaxError)) throw e;
    const m = malformed(e);
    return { entries: new Map(), bad: [m], unreadable: m };
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
