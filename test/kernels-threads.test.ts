/**
 * The threaded wasm build (MGLLAVA_WASM_THREADS): parsing of the variable, and a child process that
 * runs golden pieces on it (the pack's kernels on the shared heap) and exits by itself.
 */
import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { wasmThreadsFromEnv } from '../src/backend/kernels/threads.js';

const ROOT = resolve(import.meta.dirname, '..');

describe('threaded wasm build', () => {
  it('reads MGLLAVA_WASM_THREADS (default 1) and rejects malformed values', () => {
    expect(wasmThreadsFromEnv({})).toBe(1);
    expect(wasmThreadsFromEnv({ MGLLAVA_WASM_THREADS: ' ' })).toBe(1);
    expect(wasmThreadsFromEnv({ MGLLAVA_WASM_THREADS: '2' })).toBe(2);
    for (const bad of ['0', '-1', '1.5', 'two', '65']) {
      expect(() => wasmThreadsFromEnv({ MGLLAVA_WASM_THREADS: bad })).toThrow(/MGLLAVA_WASM_THREADS=.*integer from 1 to 64/);
    }
  });

  it('runs golden pieces with 2 threads and the process exits on its own', () => {
    const r = spawnSync(
      process.execPath,
      ['bin/mgllava.js', 'golden', '--dir', '../shared/golden/public', '--only', 'llama_b,object_features,fuse_v0', '--backend', 'wasm'],
      { cwd: ROOT, env: { ...process.env, MGLLAVA_WASM_THREADS: '2' }, encoding: 'utf8', timeout: 120_000 },
    );
    expect(r.stderr + r.stdout).toMatch(/3 of 3 pieces ok/);
    expect(r.status).toBe(0);
  }, 130_000);
});
