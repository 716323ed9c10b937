// Golden parity with the PyTorch reference: every piece of ../shared/golden/public must pass on the
// test backend (wasm), through the same code path as `mgllava golden`.
import { mkdtemp, readFile, writeFile, copyFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { runGolden } from '../src/golden/run.js';
import { RUNNERS } from '../src/golden/pieces/index.js';

const GOLDEN = path.resolve(import.meta.dirname, '../../shared/golden/public');

const MODEL_PIECES = [
  'clip_vit', 'convnext', 'fuse_v0', 'fuse_v1', 'fuse_v2', 'fuse_v3', 'projector', 'roi_align',
  'object_features', 'object_features_multilevel', 'llama_a', 'llama_b', 'splice', 'splice_textonly', 'e2e',
];
const DATA_PIECES = ['boxes.json', 'conversation.json', 'schedule.json'];

describe('golden set (public)', () => {
  it('every piece of the manifest has a runner and passes', async () => {
    const report = await runGolden(GOLDEN, RUNNERS);
    for (const name of [...MODEL_PIECES, ...DATA_PIECES]) {
      const p = report.pieces[name];
      expect(p, `piece ${name} missing from the manifest`).toBeDefined();
      expect({ name, ok: p!.ok, reason: p!.reason }).toEqual({ name, ok: true, reason: undefined });
      expect(p!.checks.length).toBeGreaterThan(0);
    }
    expect(report.ok).toBe(true);
  });

  it('fails a piece whose golden values are perturbed, and reports pieces it does not know', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'mgllava-golden-'));
    const manifest = JSON.parse(await readFile(path.join(GOLDEN, 'manifest.json'), 'utf8'));
    const entry = manifest.pieces.projector;
    await copyFile(path.join(GOLDEN, entry.params_file), path.join(dir, entry.params_file));
    // Perturb one output value of the projector piece.
    const { readSafetensors, writeSafetensors } = await import('../src/io/safetensors.js');
    const io = await readSafetensors(path.join(GOLDEN, entry.io_file));
    const y = io.get('output.y')!;
    (y.data as Float32Array)[3]! += 1e-2;
    await writeSafetensors(path.join(dir, entry.io_file), io);
    manifest.pieces = { projector: entry, brand_new_piece: { description: 'unknown' } };
    await writeFile(path.join(dir, 'manifest.json'), JSON.stringify(manifest));
    const report = await runGolden(dir, RUNNERS);
    expect(report.ok).toBe(false);
    expect(report.pieces.projector!.ok).toBe(false);
    expect(report.pieces.projector!.reason).toMatch(/output\.y/);
    expect(report.pieces.brand_new_piece).toMatchObject({ ok: false, reason: 'not implemented' });
  });
});
