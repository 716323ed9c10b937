/**
 * The detector entry of one image for chat, from a box JSON file.
 *
 * Which entry:
 *   1. a file holding a single entry `{"boxes": [...], "labels": [...], "scores": [...]}` is that entry;
 *   2. `id` given (--box-id): the entry with that id (record id, as training's box files are keyed);
 *   3. otherwise the entry keyed by the image's file name (`cat.jpg`), else by its stem (`cat`).
 * No match is an error that names the keys tried and lists entries whose id starts with the stem (e.g. the
 * synthetic set keys boxes by question id, `eval-00000-small_color` for `eval-00000.png`).
 */
import { stat } from 'node:fs/promises';
import { readSmallTextFile } from '../io/small-file.js';
import path from 'node:path';
import { parseJson } from '../data/json.js';
import { loadBoxes, parseBoxes, type BoxEntry, type BoxesResult } from '../data/records.js';
import { DataError } from '../errors.js';

export class BoxEntryError extends DataError {
  constructor(message: string) {
    super(message);
    this.name = 'BoxEntryError';
  }
}

/** Files up to this size are read whole to recognise the single-entry form; bigger ones are streamed. */
const SINGLE_ENTRY_MAX_BYTES = 16 << 20;

export async function findBoxEntry(boxFile: string, imageFile: string, id?: string): Promise<{ entry: BoxEntry; key: string }> {
  let s;
  try {
    s = await stat(boxFile);
  } catch {
    throw new BoxEntryError(`box file ${boxFile}: not found`);
  }
  let result: BoxesResult | null = null;
  if (s.isFile() && s.size <= SINGLE_ENTRY_MAX_BYTES) {
    // (a device or pipe goes to loadBoxes, which refuses devices and bounds what it reads from a pipe)
    const text = await readSmallTextFile(boxFile, 'the box file', SINGLE_ENTRY_MAX_BYTES);
    let doc: unknown = null;
    try {
      doc = parseJson(text, boxFile);
    } catch {
      // malformed: loadBoxes below reports it with its position
    }
    if (isSingleEntry(doc)) {
      if (id !== undefined) throw new BoxEntryError(`box file ${boxFile} holds a single entry (no ids): drop --box-id`);
      result = await parseBoxes(`{"(single entry)": ${text}}`, boxFile);
      return pick(result, boxFile, ['(single entry)'], '');
    }
  }
  result = await loadBoxes(boxFile);
  if (result.unreadable) throw new BoxEntryError(`box file ${boxFile}: ${result.unreadable.reason}`);
  const name = path.basename(imageFile);
  const stem = name.replace(/\.[^.]*$/, '');
  return pick(result, boxFile, id !== undefined ? [id] : [...new Set([name, stem])], stem);
}

function isSingleEntry(doc: unknown): boolean {
  return typeof doc === 'object' && doc !== null && !Array.isArray(doc) && Array.isArray((doc as Record<string, unknown>).boxes);
}

function pick(r: BoxesResult, file: string, keys: string[], stem: string): { entry: BoxEntry; key: string } {
  for (const key of keys) {
    const bad = r.bad.find((b) => b.id === key);
    if (bad) throw new BoxEntryError(`box file ${file}: entry ${JSON.stringify(key)}: ${bad.reason}`);
    const entry = r.entries.get(key);
    if (entry) return { entry, key };
  }
  const similar = stem ? [...r.entries.keys()].filter((k) => k.startsWith(stem)).slice(0, 5) : [];
  throw new BoxEntryError(
    `box file ${file} has no entry ${keys.map((k) => JSON.stringify(k)).join(' or ')}` +
      (similar.length ? `; name one with --box-id (e.g. ${similar.join(', ')})` : '; name one with --box-id'),
  );
}
