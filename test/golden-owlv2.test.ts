// OWLv2 golden parity with the PyTorch reference (../shared/golden/owlv2-public): all ten pieces on the test
// backend (wasm), through the same code path as `mgllava golden --dir ../shared/golden/owlv2-public`.
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { runGolden } from '../src/golden/run.js';
import { RUNNERS } from '../src/golden/pieces/index.js';
import { readSafetensors, writeSafetensors } from '../src/io/safetensors.js';

const GOLDEN = path.resolve(import.meta.dirname, '../../shared/golden/owlv2-public');
const PIECES = ['text_encoder', 'vision_encoder', 'image_embedder', 'class_head', 'box_head', 'objectness', 'detector', 'preprocess', 'post_process', 'mgllava_boxes'];

describe('golden set (owlv2-public)', () => {
  it('every piece passes', async () => {
    const report = await runGolden(GOLDEN, RUNNERS);
    for (const name of PIECES) {
      const p = report.pieces[name];
      expect(p, `piece ${name} missing from the manifest`).toBeDefined();
      expect({ name, ok: p!.ok, reason: p!.reason }).toEqual({ name, ok: true, reason: undefined });
      expect(p!.checks.length).toBeGreaterThan(0);
    }
    // the discrete results are exact
    const exact = report.pieces.mgllava_boxes!.checks.filter((c) => /keep|labels|boxes_int|final_boxes|nms|cap/.test(c.name));
    expect(exact.length).toBeGreaterThan(10);
    for (const c of exact) expect(c.maxAbsErr, c.name).toBe(0);
    expect(report.ok).toBe(true);
  });

  it('fails pieces whose golden values are perturbed', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'mgllava-golden-owl-'));
    try {
      const manifest = JSON.parse(await readFile(path.join(GOLDEN, 'manifest.json'), 'utf8'));
      const keep = ['preprocess', 'mgllava_boxes', 'detector'];
      manifest.pieces = Object.fromEntries(keep.map((k) => [k, manifest.pieces[k]]));
      // preprocess: one pixel off by 1e-5 (tolerance 1e-6)
      const pre = await readSafetensors(path.join(GOLDEN, 'preprocess.io.safetensors'));
      (pre.get('output.pixel_values_a')!.data as Float32Array)[100]! += 1e-5;
      await writeSafetensors(path.join(dir, 'preprocess.io.safetensors'), pre);
      // mgllava_boxes: a label string changed
      await copyFile(path.join(GOLDEN, 'mgllava_boxes.io.safetensors'), path.join(dir, 'mgllava_boxes.io.safetensors'));
      manifest.pieces.mgllava_boxes.config.cases.b.final_label_strings[0] = 'horse';
      // detector: parameters of another model size (the manifest's model_config says otherwise)
      await copyFile(path.join(GOLDEN, 'detector.params.safetensors'), path.join(dir, 'detector.params.safetensors'));
      await copyFile(path.join(GOLDEN, 'detector.io.safetensors'), path.join(dir, 'detector.io.safetensors'));
      manifest.model_config.vision.intermediate_size = 48;
      await writeFile(path.join(dir, 'manifest.json'), JSON.stringify(manifest));
      const report = await runGolden(dir, RUNNERS);
      expect(report.ok).toBe(false);
      expect(report.pieces.preprocess!.reason).toMatch(/output\.pixel_values_a\b/);
      expect(report.pieces.mgllava_boxes!.reason).toMatch(/final_label_strings_b/);
      expect(report.pieces.detector!.reason).toMatch(/shape mismatch/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
