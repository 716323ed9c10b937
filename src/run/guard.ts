/**
 * Run-directory and output-path policy (issue 12 (b), (c), (h)): what a stage may write into, checked before
 * anything is written.
 *
 *   runDirFor        `<output_dir>/<name>` where name is one plain path component ('..', '.', 'a/b' refused)
 *   checkRunDir      an existing directory must be this run's: only run files, and a run's files without a
 *                    checkpoint (a run that died before its first save) only with `--resume auto` and the same
 *                    config; a folder of anything else is never written into
 *   ensureDir        mkdir -p that cannot spin: missing components are created one by one under the deepest
 *                    existing ancestor, so /proc/x, a path below a file or a dangling symlink is one line, not
 *                    a 100 % CPU loop (Node's recursive mkdir retries forever on procfs)
 */
import { lstat, mkdir, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { fsError, MgllavaError } from '../errors.js';
import { BASE_FILE, CONFIG_FILE, LORA_FROM_FILE, LOSS_CURVE_FILE, METRICS_FILE, readRunConfig, RunDirError } from './layout.js';
import { LOCK_FILE } from './lock.js';
import { virtualRootOf } from '../io/output-file.js';

/** Names a run directory may hold besides step dirs (and temp/old step dirs of interrupted saves). A function:
 *  layout.ts (and lock.ts through it) import this module, so their constants are not initialised while this one loads. */
const runFileNames = () => new Set([CONFIG_FILE, BASE_FILE, METRICS_FILE, LOSS_CURVE_FILE, LOCK_FILE, LORA_FROM_FILE]);
const RUN_ENTRY = /^(step-\d{8}|\.tmp-step-.*|\.old-step-.*|\.lock\..*|.*\.tmp-\d+.*|(heldout-)?predictions.*\.jsonl)$/;

/** The run directory of a config, refusing a name that is not one plain path component. */
export function runDirFor(outputDir: string, name: string): string {
  if (name === '' || name === '.' || name === '..' || /[/\\]/.test(name) || /^\.+$/.test(name)) {
    throw new RunDirError(`name: ${JSON.stringify(name)} is not a run name (the run directory would be ${path.join(outputDir, name)}): use letters, digits, _ . -`);
  }
  const root = path.resolve(outputDir);
  const dir = path.resolve(root, name);
  if (path.dirname(dir) !== root) throw new RunDirError(`name: ${JSON.stringify(name)} escapes output_dir ${outputDir}`);
  return dir;
}

export interface RunDirCheck {
  /** --resume given ('auto' or a path): a run's own files without a checkpoint may be reused. */
  resuming: boolean;
  /** The config hash of this invocation (a left-over config.yaml must match it). */
  hash: string;
}

/**
 * Refuse a run directory that holds something else than this run: a file, a folder with other files, or a
 * run's files without a checkpoint when not resuming (or of another config). A missing or empty folder is fine.
 */
export async function checkRunDir(runDir: string, o: RunDirCheck): Promise<void> {
  let s;
  try {
    s = await stat(runDir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw fsError(e, runDir, 'opening the run directory');
  }
  if (!s.isDirectory()) throw new RunDirError(`run directory ${runDir} is a file, not a directory; choose another name or output_dir`);
  const names = await readdir(runDir);
  const known = runFileNames();
  const foreign = names.filter((n) => !known.has(n) && !RUN_ENTRY.test(n));
  if (foreign.length) {
    throw new RunDirError(
      `${runDir} is not a run directory (it holds ${foreign.slice(0, 4).join(', ')}${foreign.length > 4 ? `, ... ${foreign.length} entries` : ''}); ` +
        `a run writes config.yaml, metrics.jsonl and step dirs there: choose another name or output_dir`,
    );
  }
  const hasSteps = names.some((n) => /^step-\d{8}$/.test(n));
  const runFiles = names.filter((n) => n === CONFIG_FILE || n === METRICS_FILE || n === BASE_FILE);
  if (hasSteps || runFiles.length === 0) return; // checkpoints: resumePoint decides; nothing of a run: fresh
  if (!o.resuming) {
    throw new RunDirError(
      `${runDir} holds a run's ${runFiles.join(', ')} but no checkpoint (a run stopped before its first save?): ` +
        `continue it with --resume auto (same config), or remove the directory, or give the run another name`,
    );
  }
  if (names.includes(CONFIG_FILE)) {
    const file = path.join(runDir, CONFIG_FILE);
    let other: string;
    try {
      other = (await readRunConfig(runDir)).hash;
    } catch (e) {
      throw new RunDirError(`${file} is not a readable run config (${e instanceof MgllavaError ? e.message : (e as Error).message}): remove the directory or choose another name`);
    }
    if (other !== o.hash) throw new RunDirError(`${runDir} holds another config's run (${file} differs in the keys that change results); give this run another name`);
  }
}

/**
 * `mkdir -p dir`, refusing paths that cannot hold files: under /proc, /sys or /dev, below a regular file, through
 * a dangling symlink. `what` names the directory in errors ("output_dir", "--out").
 */
export async function ensureDir(dir: string, what: string): Promise<void> {
  const abs = path.resolve(dir);
  const virtual = virtualRootOf(abs);
  if (virtual) throw new MgllavaError(`${what} ${dir}: ${virtual} is a virtual file system: choose a directory on a disk`, 'run');
  // The deepest existing ancestor, and the components to create below it.
  const missing: string[] = [];
  let cur = abs;
  for (;;) {
    let st;
    try {
      st = await lstat(cur);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      // ENOTDIR: a component above is a file; walking up finds it and says so
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw fsError(e, cur, `checking ${what} ${dir}`);
      missing.unshift(cur);
      const up = path.dirname(cur);
      if (up === cur) throw new MgllavaError(`${what} ${dir}: no existing parent directory`, 'run');
      cur = up;
      continue;
    }
    if (st.isSymbolicLink()) {
      try {
        st = await stat(cur);
      } catch {
        throw new MgllavaError(`${what} ${dir}: ${cur} is a symbolic link to nothing (dangling)`, 'run');
      }
    }
    if (!st.isDirectory()) throw new MgllavaError(`${what} ${dir}: ${cur} is a file, not a directory`, 'run');
    break;
  }
  for (const d of missing) {
    try {
      await mkdir(d);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST' && (await stat(d).catch(() => null))?.isDirectory()) continue; // made meanwhile
      throw fsError(e, d, `creating ${what}`);
    }
  }
}
