// Issue 12 (d), (e) and the pixel budget: images decode as the reference's PIL does (CMYK colours, EXIF
// orientation not applied unless asked, one policy for every image load), and oversized images are refused
// from their header with one clear line.
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config/load.js';
import { cmykToRgbPil } from '../src/data/cmyk.js';
import { checkDataset } from '../src/data/check.js';
import { loadDataset } from '../src/data/dataset.js';
import { DEFAULT_MAX_IMAGE_PIXELS, decodeImage, ImageError, imageOptionsOf, prepareImage, readImageHeader } from '../src/data/image.js';
import { getTemplate } from '../src/data/templates.js';
import { loadTokenizer } from '../src/data/tokenizer.js';
import { MgllavaError } from '../src/errors.js';
import { writePngHeader } from './png-header.js';
import { runCli } from './cli-harness.js';

const FIXTURES = path.resolve(import.meta.dirname, 'fixtures/cmyk');
const root = mkdtempSync(path.join(tmpdir(), 'mgllava-policy-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('CMYK JPEGs decode to the colours PIL gives', () => {
  const expected = JSON.parse(readFileSync(path.join(FIXTURES, 'pil-expected.json'), 'utf8')) as {
    files: Record<string, { width: number; height: number; cmyk: number[]; rgb: number[] }>;
  };

  it("PIL's formula: R = (255-K) - MULDIV255(C, 255-K), i.e. (255-C)(255-K)/255 rounded", () => {
    // values derived by hand: white, pure cyan, full black, and a rounding case
    expect([...cmykToRgbPil(Uint8Array.from([0, 0, 0, 0]))]).toEqual([255, 255, 255]);
    expect([...cmykToRgbPil(Uint8Array.from([255, 0, 0, 0]))]).toEqual([0, 255, 255]);
    expect([...cmykToRgbPil(Uint8Array.from([17, 200, 3, 255]))]).toEqual([0, 0, 0]);
    // C=128, K=64: nk=191, t=128*191+128=24576, ((24576>>8)+24576)>>8=96 -> 95 = round(127*191/255)
    expect([...cmykToRgbPil(Uint8Array.from([128, 0, 255, 64]))]).toEqual([95, 191, 0]);
    // every (C, K) pair against the closed form (255-C)(255-K)/255 rounded half up
    const all = new Uint8Array(256 * 256 * 4);
    for (let c = 0; c < 256; c++) for (let k = 0; k < 256; k++) all.set([c, c, c, k], (c * 256 + k) * 4);
    const rgb = cmykToRgbPil(all);
    const wrong: string[] = [];
    for (let c = 0; c < 256; c++) {
      for (let k = 0; k < 256; k++) {
        const want = Math.floor(((255 - c) * (255 - k)) / 255 + 0.5);
        if (rgb[(c * 256 + k) * 3] !== want) wrong.push(`C=${c} K=${k}: ${rgb[(c * 256 + k) * 3]} != ${want}`);
      }
    }
    expect(wrong).toEqual([]);
    // and the formula turns PIL's own decoded CMYK into PIL's RGB
    for (const f of Object.values(expected.files)) expect([...cmykToRgbPil(Uint8Array.from(f.cmyk))]).toEqual(f.rgb);
  });

  it.each(['adobe.jpg', 'plain.jpg'])('%s: decodeImage equals PIL convert("RGB") exactly', async (name) => {
    const want = expected.files[name]!;
    const img = await decodeImage(path.join(FIXTURES, name));
    expect([img.width, img.height]).toEqual([want.width, want.height]);
    let maxDiff = 0;
    for (let i = 0; i < want.rgb.length; i++) maxDiff = Math.max(maxDiff, Math.abs(img.data[i]! - want.rgb[i]!));
    expect(maxDiff).toBe(0);
  });

  it('the whole preprocessing sees those colours (not a colour-managed conversion)', async () => {
    const want = expected.files['adobe.jpg']!;
    const p = await prepareImage(path.join(FIXTURES, 'adobe.jpg'), { auxSize: 16, lowresSize: 8 });
    // 16x12 pads to 16x16 (rows 2..13 are the image) and is not resized: pixel (0, 2) is the image's (0, 0)
    const r = ((0.48145466 + 0.26862954 * p.aux[(2 * 16 + 0) * 3]!) * 255);
    expect(Math.round(r)).toBe(want.rgb[0]);
  });
});

describe('EXIF orientation: one policy, the reference by default', () => {
  const rotated = path.join(root, 'imgs', 'rot.jpg');
  beforeAll(async () => {
    mkdirSync(path.join(root, 'imgs'), { recursive: true });
    // stored 40x20, left half red; EXIF 6 = "rotate 90° clockwise to display"
    const raw = Buffer.alloc(40 * 20 * 3);
    for (let y = 0; y < 20; y++) for (let x = 0; x < 40; x++) raw.set(x < 20 ? [250, 0, 0] : [0, 0, 250], (y * 40 + x) * 3);
    await sharp(raw, { raw: { width: 40, height: 20, channels: 3 } }).jpeg({ quality: 100 }).withMetadata({ orientation: 6 }).toFile(rotated);
  });

  it('the config key defaults to ignore and feeds every decoder option', () => {
    const { config } = loadConfig(path.resolve(import.meta.dirname, '../configs/tiny-shapes/pretrain.yaml'));
    expect(config.data.exif_orientation).toBe('ignore');
    expect(imageOptionsOf(config.data)).toEqual({ exifOrientation: 'ignore', maxPixels: DEFAULT_MAX_IMAGE_PIXELS });
    expect(imageOptionsOf({ exif_orientation: 'apply', max_image_pixels: null })).toEqual({ exifOrientation: 'apply', maxPixels: null });
    expect(() => loadConfig(path.resolve(import.meta.dirname, '../configs/tiny-shapes/pretrain.yaml'), ['data.exif_orientation=rotate'])).toThrow(
      /data\.exif_orientation: "rotate" is not one of ignore, apply/,
    );
  });

  it('decode and preprocessing: stored frame by default, rotated on request', async () => {
    expect(await readImageHeader(rotated)).toMatchObject({ width: 40, height: 20, orientation: 6 });
    expect(await decodeImage(rotated)).toMatchObject({ width: 40, height: 20 });
    expect(await decodeImage(rotated, { exifOrientation: 'apply' })).toMatchObject({ width: 20, height: 40 });
    const p = await prepareImage(rotated, { auxSize: 8, lowresSize: 4 });
    expect([p.width, p.height, p.padding]).toEqual([40, 20, { side: 40, dx: 0, dy: 10 }]);
  });

  it('training samples follow the policy (boxes stay in the frame of the pixels used)', async () => {
    const records = path.join(root, 'rot.jsonl');
    writeFileSync(records, `${JSON.stringify({ id: 'r', image: 'rot.jpg', conversations: [{ from: 'human', value: '<image>\nq' }, { from: 'gpt', value: 'a' }] })}\n`);
    const boxes = path.join(root, 'rot-boxes.json');
    writeFileSync(boxes, JSON.stringify({ r: { boxes: [[0, 0, 20, 20]], labels: ['red'], scores: [0.9] } }));
    const text = { template: getTemplate('vicuna'), tokenizer: await loadTokenizer({ type: 'byte' }), maxLength: 64 };
    const base = { records, boxes, images: path.join(root, 'imgs'), text, auxSize: 40, lowresSize: 20, log: () => undefined };
    const ignore = await (await loadDataset(base)).dataset.get(0);
    const apply = await (await loadDataset({ ...base, image: { exifOrientation: 'apply' } })).dataset.get(0);
    // ignore: the box [0,0,20,20] on the stored 40x20 image -> shifted by dy=10 in the 40x40 square: the red half
    expect([...ignore.boxes]).toEqual([0, 10, 20, 30]);
    const red = (s: typeof ignore, x: number, y: number) => s.aux![(y * 40 + x) * 3]! > 1; // normalised red channel high
    expect(red(ignore, 5, 20)).toBe(true);
    // apply: the rotated 20x40 image is padded with dx=10, so the same box lands elsewhere
    expect([...apply.boxes]).toEqual([10, 0, 30, 20]);
    expect(red(apply, 5, 20)).toBe(false);
  });

  it('data check reports rotated images (and how they are treated)', async () => {
    const records = path.join(root, 'rot.jsonl');
    const boxes = path.join(root, 'rot-boxes.json');
    const base = ['data', 'check', '--records', records, '--boxes', boxes, '--images', path.join(root, 'imgs'), '--tokenizer', 'byte', '--max-length', '64'];
    const r = await runCli(base);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/record "r": warning: exif_orientation: EXIF orientation 6 \(rotated 90° clockwise\) is ignored, as the reference does \(data\.exif_orientation: ignore\)/);
    expect(r.out).toMatch(/1 record with exif_orientation/);
    const a = await runCli([...base, '--exif-orientation', 'apply', '--json']);
    const j = JSON.parse(a.out) as { warnings: { kind: string; reason: string }[] };
    expect(j.warnings.map((w) => w.kind)).toContain('exif_orientation');
    expect(j.warnings.find((w) => w.kind === 'exif_orientation')!.reason).toMatch(/is applied.*rotated 20x40 frame/);
  });

  it('every image in src/ is decoded through data/image.ts (one policy): no other sharp() reads files', () => {
    const src = path.resolve(import.meta.dirname, '../src');
    const files: string[] = [];
    const walk = (d: string) => {
      for (const n of readdirSync(d)) {
        const f = path.join(d, n);
        if (statSync(f).isDirectory()) walk(f);
        else if (f.endsWith('.ts')) files.push(f);
      }
    };
    walk(src);
    // Allowed: the decoder itself, and places that only *write* images from raw pixels or SVG.
    const allowed = new Set(['data/image.ts', 'data/view.ts', 'data/synth/render.ts']);
    const offenders = files.filter((f) => /\bsharp\(/.test(readFileSync(f, 'utf8')) && !allowed.has(path.relative(src, f).split(path.sep).join('/')));
    expect(offenders).toEqual([]);
  });
});

describe('pixel budget (data.max_image_pixels)', () => {
  it('a 16000x16000 image (under sharp’s own limit) is refused from its header with one line', async () => {
    const big = path.join(root, 'big.png');
    writePngHeader(big, 16000, 16000);
    const e = await decodeImage(big).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ImageError);
    expect(e).toBeInstanceOf(MgllavaError);
    expect((e as ImageError).kind).toBe('too_large');
    expect((e as Error).message).toMatch(/big\.png: image is 16000x16000: its padded square 16000x16000 \(256\.0 MP\) is over the pixel budget of 89\.5 MP \(data\.max_image_pixels = 89478485\)/);
    expect((e as Error).message.split('\n')).toHaveLength(1);
  });

  it('the budget is on the padded square: a 20000x2 strip is refused too', async () => {
    const strip = path.join(root, 'strip.png');
    await sharp({ create: { width: 20000, height: 2, channels: 3, background: { r: 1, g: 2, b: 3 } } }).png().toFile(strip);
    await expect(decodeImage(strip)).rejects.toMatchObject({ kind: 'too_large' });
    expect(await decodeImage(strip, { maxPixels: 20000 * 20000 })).toMatchObject({ width: 20000, height: 2 });
  });

  it('data check names the record; the budget comes from the config or --max-image-pixels', async () => {
    const dir = path.join(root, 'budget');
    mkdirSync(path.join(dir, 'imgs'), { recursive: true });
    await sharp({ create: { width: 24, height: 16, channels: 3, background: { r: 9, g: 9, b: 9 } } }).png().toFile(path.join(dir, 'imgs', 'a.png'));
    const records = path.join(dir, 'r.jsonl');
    writeFileSync(records, `${JSON.stringify({ id: 'a', image: 'a.png', conversations: [{ from: 'human', value: '<image>\nq' }, { from: 'gpt', value: 'x' }] })}\n`);
    const boxes = path.join(dir, 'b.json');
    writeFileSync(boxes, JSON.stringify({ a: { boxes: [[1, 1, 5, 5]], labels: ['t'], scores: [1] } }));
    const text = { template: getTemplate('vicuna'), tokenizer: await loadTokenizer({ type: 'byte' }), maxLength: 64 };
    const r = await checkDataset({ records, boxes, images: path.join(dir, 'imgs'), text, image: { maxPixels: 500 } });
    expect(r.bad).toEqual([expect.objectContaining({ id: 'a', kind: 'image_too_large' })]);
    expect(r.bad[0]!.reason).toMatch(/24x16: its padded square 24x24 \(0\.0 MP\) is over the pixel budget/);
    const cli = await runCli(['data', 'check', '--records', records, '--boxes', boxes, '--images', path.join(dir, 'imgs'), '--tokenizer', 'byte', '--max-image-pixels', '500']);
    expect(cli.code).toBe(1);
    expect(cli.out).toContain('record "a": image_too_large');
  });
});
