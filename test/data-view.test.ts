// Issue 17.5: "see what the model sees": the preprocessed aux image, denormalised, with the object-token boxes
// drawn and numbered, and the low-res view beside it (data show --save-image, chat --show-boxes).
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, describe, expect, it } from 'vitest';
import { normalizeImage, type RgbImage } from '../src/data/image.js';
import { BOX_COLOURS, glyphSize, renderView, saveView, VIEW_GAP, viewScale, viewSize } from '../src/data/view.js';
import { makeTinyRun } from './infer-fixtures.js';
import { runCli } from './cli-harness.js';

const root = mkdtempSync(path.join(tmpdir(), 'mgllava-view-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const solid = (side: number, rgb: [number, number, number]): RgbImage => {
  const data = new Uint8Array(side * side * 3);
  for (let i = 0; i < side * side; i++) data.set(rgb, 3 * i);
  return { data, width: side, height: side };
};

async function pngPixels(file: string): Promise<{ data: Buffer; width: number; height: number }> {
  const { data, info } = await sharp(file).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  return { data, width: info.width, height: info.height };
}
const px = (img: { data: Uint8Array; width: number }, x: number, y: number) => [...img.data.subarray((y * img.width + x) * 3, (y * img.width + x) * 3 + 3)];

describe('renderView', () => {
  it('size: two panels of aux*scale and a gap; scale makes small images readable', () => {
    expect(viewScale(128)).toBe(4);
    expect(viewScale(768)).toBe(1);
    expect(viewSize(128)).toEqual({ width: 2 * 512 + VIEW_GAP, height: 512, panel: 512 });
  });

  it('denormalises exactly, draws each box outline in its colour, leaves the inside alone', async () => {
    const aux = normalizeImage(solid(64, [10, 120, 200]));
    const lowres = normalizeImage(solid(16, [200, 20, 30]));
    const boxes = [
      [8, 8, 24, 24],
      [30, 10, 60, 50],
      [0, 0, 0, 0], // a dummy box is not drawn
    ];
    const file = path.join(root, 'view.png');
    const size = await saveView(file, { aux, auxSize: 64, lowres, lowresSize: 16, boxes });
    const img = await pngPixels(file);
    expect([img.width, img.height]).toEqual([size.width, size.height]);
    expect([img.width, img.height]).toEqual([2 * 64 * 8 + VIEW_GAP, 64 * 8]); // scale 8 for a 64 px aux image
    const s = viewScale(64);
    // outline pixels: left edge of box 1 (below its number tag), right edge of box 2
    expect(px(img, 8 * s, 22 * s)).toEqual(BOX_COLOURS[0]);
    expect(px(img, 60 * s - 1, 40 * s)).toEqual(BOX_COLOURS[1]);
    // inside a box, away from the tag: the image itself, denormalised to its exact values
    expect(px(img, 20 * s, 20 * s)).toEqual([10, 120, 200]);
    // the low-res panel, the gap
    expect(px(img, 64 * s + VIEW_GAP + 5, 5)).toEqual([200, 20, 30]);
    expect(px(img, 64 * s + 1, 5)).toEqual([255, 255, 255]);
    // the dummy box drew nothing at the corner
    const none = renderView({ aux, auxSize: 64, lowres, lowresSize: 16, boxes: [[0, 0, 0, 0]] });
    expect(px(none, 0, 0)).toEqual([10, 120, 200]);
  });

  it('numbers: box k carries the digits of k in its colour on a dark tag', () => {
    const aux = normalizeImage(solid(32, [128, 128, 128]));
    const lowres = normalizeImage(solid(8, [128, 128, 128]));
    const boxes = Array.from({ length: 12 }, (_, i) => [2 * i, 2, 2 * i + 6, 30]);
    const v = renderView({ aux, auxSize: 32, lowres, lowresSize: 8, boxes });
    // tag of box 12 at its top-left corner (x = 22 * scale): black background, box colour in the digits
    const s = viewScale(32);
    const tag = (x: number, y: number) => px(v, 22 * s + x, 2 * s + y);
    expect(tag(0, 0)).toEqual([0, 0, 0]);
    const colour = BOX_COLOURS[11 % BOX_COLOURS.length]!;
    const g = glyphSize(viewSize(32).panel);
    // the "1" glyph's top row is .#. : its first column is tag background, its second the box colour
    expect(tag(g, g)).toEqual([0, 0, 0]);
    expect(tag(2 * g, g)).toEqual(colour);
  });
});

describe('data show --save-image and chat --show-boxes', () => {
  it('data show writes the PNG of the record as the model sees it', async () => {
    const dir = path.join(root, 'show');
    mkdirSync(path.join(dir, 'images'), { recursive: true });
    await sharp({ create: { width: 48, height: 32, channels: 3, background: { r: 250, g: 250, b: 250 } } }).png().toFile(path.join(dir, 'images', 'a.png'));
    const records = path.join(dir, 'r.jsonl');
    writeFileSync(records, `${JSON.stringify({ id: 'a', image: 'a.png', conversations: [{ from: 'human', value: '<image>\nq' }, { from: 'gpt', value: 'x' }] })}\n`);
    const boxes = path.join(dir, 'b.json');
    writeFileSync(boxes, JSON.stringify({ a: { boxes: [[4, 4, 20, 20], [30, 10, 44, 28]], labels: ['p', 'q'], scores: [0.9, 0.8] } }));
    const out = path.join(dir, 'a-view.png');
    const base = ['data', 'show', 'a', '--records', records, '--boxes', boxes, '--images', path.join(dir, 'images'), '--tokenizer', 'byte', '--max-length', '64', '--aux-size', '48', '--lowres-size', '28'];
    const r = await runCli([...base, '--save-image', out]);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/#1 \[.*\] p\n\s+#2 \[.*\] q/);
    expect(r.out).toContain(`image written to ${out}`);
    const img = await pngPixels(out);
    expect([img.width, img.height]).toEqual([viewSize(48).width, viewSize(48).height]);
    // 48x32 pads to 48x48 (dy = 8): box 1 [4, 4, 20, 20] -> [4, 12, 20, 28] in aux pixels; its right edge is drawn
    const s = viewScale(48);
    expect(px(img, 20 * s - 1, 20 * s)).toEqual(BOX_COLOURS[0]);
    // a missing output folder is refused before anything runs
    const bad = await runCli([...base, '--save-image', path.join(dir, 'no', 'x.png')]);
    expect(bad.code).toBe(4);
    expect(bad.out).toBe('');
  });

  it('chat --show-boxes writes the same view for a chat image', async () => {
    const run = await makeTinyRun(path.join(root, 'chat'));
    try {
      const image = path.join(run.data, 'images', 'eval-00000.png');
      const out = path.join(root, 'chat-view.png');
      const r = await runCli(['chat', run.runDir, 'w3 w4', '--image', image, '--boxes', path.join(run.data, 'boxes.json'), '--box-id', 'eval-00000-large_shape', '--max-new-tokens', '2', '--show-boxes', out]);
      expect(r.err).not.toMatch(/internal error/);
      expect(r.code, r.err).toBe(0);
      const img = await pngPixels(out);
      const aux = run.config.model.vision_aux!.image_size;
      expect([img.width, img.height]).toEqual([viewSize(aux).width, viewSize(aux).height]);
      // some pixel carries box 1's colour
      let found = false;
      for (let i = 0; i < img.data.length && !found; i += 3) found = img.data[i] === 255 && img.data[i + 1] === 0 && img.data[i + 2] === 0;
      expect(found).toBe(true);
    } finally {
      run.model.dispose();
    }
  });
});
