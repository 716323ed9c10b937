/**
 * One writer per run directory (issue 12 (a)): a stage holds `<run dir>/.lock` while it runs. A second process
 * is refused with the holder's pid; a lock left by a process that no longer exists (killed, machine rebooted)
 * is taken over with a warning. The lock is created atomically (`open(..., 'wx')`), so two processes starting
 * at the same moment cannot both get it.
 *
 * The file holds `{pid, host, started, argv}`. A holder on another host (a shared file system) cannot be
 * checked for liveness and is always respected: the message says how to remove a lock known to be stale.
 */
import { link, open, rename, unlink } from 'node:fs/promises';
import { hostname } from 'node:os';
import path from 'node:path';
import { fsError } from '../errors.js';
import { RunDirError } from './layout.js';
import { readSmallTextFile } from '../io/small-file.js';

export const LOCK_FILE = '.lock';

interface LockInfo {
  pid: number;
  host: string;
  started: string;
  argv?: string[];
}

export interface RunLock {
  readonly file: string;
  release(): Promise<void>;
}

/** Whether process `pid` exists on this machine (EPERM: it exists, owned by someone else). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function readLock(file: string): Promise<LockInfo | null> {
  try {
    const v = JSON.parse(await readSmallTextFile(file, 'the lock', 1 << 16)) as Partial<LockInfo>; // a FIFO planted as .lock must not block
    return Number.isInteger(v.pid) && typeof v.host === 'string' ? (v as LockInfo) : null;
  } catch {
    return null; // unreadable or half-written: treated as stale
  }
}

/** Take the lock of `runDir` (which must exist) or throw a RunDirError naming the holder. */
export async function lockRunDir(runDir: string, warn: (message: string) => void): Promise<RunLock> {
  const file = path.join(runDir, LOCK_FILE);
  const me: LockInfo = { pid: process.pid, host: hostname(), started: new Date().toISOString(), argv: process.argv.slice(2) };
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fh = await open(file, 'wx');
      try {
        await fh.writeFile(`${JSON.stringify(me)}\n`);
      } finally {
        await fh.close();
      }
      return {
        file,
        release: async () => {
          // Only our own lock: a process that took over a lock we lost must keep it.
          const now = await readLock(file);
          if (now && now.pid === me.pid && now.host === me.host) await unlink(file).catch(() => undefined);
        },
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw fsError(e, file, 'locking the run directory');
    }
    const holder = await readLock(file);
    if (holder && holder.host !== me.host) {
      throw new RunDirError(
        `${runDir} is in use by process ${holder.pid} on ${holder.host} (since ${holder.started}); ` +
          `wait for it, or delete ${file} if that process is gone`,
      );
    }
    // (our own pid counts as alive: two stages of one process must not share a run dir either)
    if (holder && alive(holder.pid)) {
      throw new RunDirError(
        `${runDir} is in use by process ${holder.pid} (since ${holder.started}${holder.argv ? `: mgllava ${holder.argv.join(' ')}` : ''}); ` +
          `two stages writing one run directory would mix their checkpoints and metrics: wait for it to finish or stop it`,
      );
    }
    // Stale: move it aside atomically (only one process wins the rename), then retry the exclusive create.
    const aside = `${file}.stale-${process.pid}`;
    try {
      await rename(file, aside);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw fsError(e, file, 'taking over a stale lock');
      continue; // someone else moved it: retry
    }
    const moved = await readLock(aside);
    if (moved && holder && (moved.pid !== holder.pid || moved.started !== holder.started)) {
      // Another process took the lock between our read and our rename: give it back (unless a third has one).
      await link(aside, file).catch(() => undefined);
      await unlink(aside).catch(() => undefined);
      continue;
    }
    await unlink(aside).catch(() => undefined);
    warn(`took over the lock of ${runDir} left by process ${holder ? holder.pid : '?'} (no longer running${holder ? `, started ${holder.started}` : ', unreadable lock'})`);
  }
  throw new RunDirError(`${runDir}: could not take its lock ${file} (another process keeps taking it)`);
}
