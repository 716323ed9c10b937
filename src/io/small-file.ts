/**
 * Reading a small text file that names no size of its own (a run's state.json and lock, a tag list, a box
 * entry): only a regular file is opened (a FIFO would block the open forever, /dev/zero never ends), its size is
 * bounded, and its bytes must be UTF-8. Every failure is one DataError line naming the file and `what` it is.
 */
import { readFileSync, statSync, type Stats } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { DataError, fsError } from '../errors.js';

/** Default bound: far above any file of this kind (a state.json is ~1 KB, a tag list a few KB). */
export const SMALL_FILE_MAX_BYTES = 64 << 20;

export async function readSmallTextFile(file: string, what: string, maxBytes = SMALL_FILE_MAX_BYTES): Promise<string> {
  let s;
  try {
    s = await stat(file);
  } catch (e) {
    throw fsError(e, file, `reading ${what}`);
  }
  checkSmallFile(s, file, what, maxBytes);
  let bytes: Buffer;
  try {
    bytes = await readFile(file);
  } catch (e) {
    throw fsError(e, file, `reading ${what}`);
  }
  return decodeUtf8(bytes, file, what);
}

/** readSmallTextFile for synchronous callers (a config resolved while it is loaded, e.g. an adapter_config.json). */
export function readSmallTextFileSync(file: string, what: string, maxBytes = SMALL_FILE_MAX_BYTES): string {
  let s;
  try {
    s = statSync(file);
  } catch (e) {
    throw fsError(e, file, `reading ${what}`);
  }
  checkSmallFile(s, file, what, maxBytes);
  let bytes: Buffer;
  try {
    bytes = readFileSync(file);
  } catch (e) {
    throw fsError(e, file, `reading ${what}`);
  }
  return decodeUtf8(bytes, file, what);
}

function checkSmallFile(s: Stats, file: string, what: string, maxBytes: number): void {
  if (s.isDirectory()) throw new DataError(`${file}: ${what} is a directory, a file was expected`);
  if (!s.isFile()) throw new DataError(`${file}: ${what} is not a regular file (a device, pipe or socket)`);
  if (s.size > maxBytes) throw new DataError(`${file}: ${what} is ${s.size} bytes, more than the ${maxBytes} such a file may have`);
}

function decodeUtf8(bytes: Buffer, file: string, what: string): string {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new DataError(`${file}: ${what} is not UTF-8 text`, { hint: 'save the file as UTF-8' });
  }
}
