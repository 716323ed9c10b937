/**
 * Files a command writes beside its work (a skip report, eval predictions, a view PNG, a tokenizer): checked
 * before the work that produces them runs, never one of the command's own inputs, and written whole or not at
 * all. Run directories and export folders have their own guard (src/run/guard.ts).
 */
import { constants } from 'node:fs';
import { access, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { DataError, fsError, UsageError } from '../errors.js';

/** Pseudo file systems where nothing of ours belongs (mkdir there fails oddly or spins). */
const VIRTUAL_ROOTS = ['/proc', '/sys', '/dev'];

/** The pseudo file system `p` lies in ('/proc', '/sys' or '/dev'), or null. */
export function virtualRootOf(p: string): string | null {
  const abs = path.resolve(p);
  return VIRTUAL_ROOTS.find((r) => abs === r || abs.startsWith(`${r}/`)) ?? null;
}

/** An input of the command that an output must not replace: its path and what it is ("the records file"). */
export interface InputFile {
  file: string | null | undefined;
  what: string;
}

export interface OutputCheck {
  /** The command's inputs: writing the output over one of them is refused (a typo would destroy the data). */
  inputs?: readonly InputFile[];
  /** The extension the written format has ('.png'): another name would mislabel the file. */
  ext?: string;
  /**
   * An existing file is replaced only when asked: `overwrite` says whether --overwrite was given, `flag` names the
   * output's option in the refusal. Absent: an existing file is replaced (e.g. a report the command rewrites).
   */
  existing?: { flag: string; overwrite: boolean };
}

/** Whether two paths name one file (symlinks and hard links included); false when either does not exist. */
async function sameFile(a: string, b: string): Promise<boolean> {
  const [sa, sb] = await Promise.all([stat(a).catch(() => null), stat(b).catch(() => null)]);
  return sa !== null && sb !== null && sa.dev === sb.dev && sa.ino === sb.ino;
}

/**
 * Refuse an output file that cannot or must not be written, before the work that produces it runs, not after:
 * an empty name, a path under /proc, /sys or /dev, a missing or read-only folder, a directory or device at the
 * path, one of the command's inputs, a name whose extension is not the format's. `what`: "the skip report
 * (--skip-bad)", "the image (--save-image)", ...
 */
export async function checkOutputFile(file: string, what: string, o: OutputCheck = {}): Promise<void> {
  if (file === '') throw new UsageError(`${what}: empty file name`);
  const virtual = virtualRootOf(file);
  if (virtual) throw new DataError(`${what} ${file}: ${virtual} is a virtual file system: choose a file on a disk`);
  if (o.ext && path.extname(file).toLowerCase() !== o.ext) {
    throw new UsageError(`${what} ${file}: the file written is ${o.ext.slice(1).toUpperCase()}: give it a ${o.ext} name`);
  }
  const dir = path.dirname(path.resolve(file));
  let s;
  try {
    s = await stat(dir);
  } catch (e) {
    throw fsError(e, dir, `the folder of ${what} ${file}`);
  }
  if (!s.isDirectory()) throw new DataError(`${what} ${file}: ${dir} is not a directory`);
  try {
    await access(dir, constants.W_OK);
  } catch (e) {
    throw fsError(e, dir, `writing ${what} ${file} into this folder`);
  }
  const existing = await stat(file).catch(() => null); // absent: it will be created
  if (existing?.isDirectory()) throw new DataError(`${what} ${file} is a directory; give a file name`);
  if (existing && !existing.isFile()) throw new DataError(`${what} ${file} exists and is not a regular file (a device or pipe)`);
  for (const input of o.inputs ?? []) {
    if (input.file && (await sameFile(file, input.file))) {
      throw new DataError(`${what} ${file} is ${input.what} (${input.file}): writing it would destroy that input; choose another name`);
    }
  }
  if (existing && o.existing && !o.existing.overwrite) {
    throw new UsageError(`${o.existing.flag} ${file} exists: pass --overwrite to replace it, or choose another name`);
  }
}

/**
 * Write `data` to `file` whole or not at all (a temporary file renamed over it): a full disk leaves the previous
 * file (or none), never a truncated one. Errors name the file and `what`.
 */
export async function writeFileAtomic(file: string, data: string | Uint8Array, what: string): Promise<void> {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.tmp-${process.pid}`);
  try {
    await writeFile(tmp, data);
    await rename(tmp, file);
  } catch (e) {
    await rm(tmp, { force: true }).catch(() => undefined);
    throw fsError(e, file, `writing ${what}`);
  }
}
