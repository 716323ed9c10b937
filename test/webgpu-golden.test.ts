// Golden parity on webgpu: every piece of ../shared/golden/public, forward and gradients, within the manifest's
// tolerances, through the same code path as `mgllava golden --backend webgpu` (lavapipe in CI; see
// webgpu-helpers.ts for when it skips).
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { readManifest } from '../src/golden/manifest.js';
import { runGolden } from '../src/golden/run.js';
import { RUNNERS } from '../src/golden/pieces/index.js';
import { useWebgpu } from './webgpu-helpers.js';

const GOLDEN = path.resolve(import.meta.dirname, '../../shared/golden/public');
const gpu = await useWebgpu();

describe.runIf(gpu)('golden set (public) on webgpu', () => {
  it('every piece passes, forward and gradients, with no tensor leaked', async () => {
    const manifest = await readManifest(GOLDEN);
    const report = await runGolden(GOLDEN, RUNNERS);
    const names = Object.keys(manifest.pieces);
    expect(names.length).toBeGreaterThanOrEqual(18);
    for (const name of names) {
      const p = report.pieces[name]!;
      expect({ name, ok: p.ok, reason: p.reason }).toEqual({ name, ok: true, reason: undefined });
      expect(p.checks.length).toBeGreaterThan(0);
    }
    // The e2e piece covers the gradient of every trainable weight and a clipped AdamW step in both modes.
    expect(report.pieces.e2e!.checks.filter((c) => c.name.startsWith('grad.')).length).toBeGreaterThan(20);
  });
});
