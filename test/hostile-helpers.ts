// Shared by the hostile-input suites: what a refusal must look like, and a FIFO to feed a reader that must not block.
import { spawnSync } from 'node:child_process';
import { expect } from 'vitest';
import { MgllavaError } from '../src/errors.js';

/** The error `work` throws or rejects with: an MgllavaError of one line (fails the test if it succeeds). */
export async function failure(work: Promise<unknown> | (() => unknown)): Promise<MgllavaError> {
  let e: unknown = null;
  try {
    await (typeof work === 'function' ? work() : work);
  } catch (x) {
    e = x;
  }
  expect(e).toBeInstanceOf(MgllavaError);
  expect((e as Error).message.split('\n')).toHaveLength(1);
  return e as MgllavaError;
}

/** A named pipe at `file` (nothing writes to it: opening it for reading would block). */
export function mkfifo(file: string): string {
  const r = spawnSync('mkfifo', [file]);
  if (r.status !== 0) throw new Error(`mkfifo ${file} failed: ${String(r.stderr)}`);
  return file;
}
