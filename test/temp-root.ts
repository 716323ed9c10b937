/** A temporary folder for one test file, removed after its tests, with fresh subfolders on demand. */
import { mkdtempSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll } from 'vitest';

export interface TempRoot {
  root: string;
  /** A new empty folder `<root>/<name>-<i>` (i counts up, so the same name can be asked for again). */
  fresh(name: string): Promise<string>;
}

/** `mgllava-<label>-XXXXXX` under the system temp dir; call at the top level of a test file. */
export function tempRoot(label: string): TempRoot {
  const root = mkdtempSync(path.join(tmpdir(), `mgllava-${label}-`));
  afterAll(() => rm(root, { recursive: true, force: true }));
  let n = 0;
  return {
    root,
    fresh: async (name) => {
      const d = path.join(root, `${name}-${n++}`);
      await mkdir(d, { recursive: true });
      return d;
    },
  };
}
