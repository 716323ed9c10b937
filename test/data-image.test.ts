import { mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import sharp from 'sharp';
import { afterAll, describe, expect, it } from 'vitest';
import {
  CLIP_NORM,
  decodeImage,
  expandToSquare,
  ImageError,
  normalizeImage,
  padFill,
  prepareImage,
  resizeBilinear,
  resolveImagePath,
  type RgbImage,
} from '../src/data/image.js';
import { resizeBicubicPil } from '../src/data/resample.js';
import { writePngHeader } from './png-header.js';

const dir = mkdtempSync(path.join(tmpdir(), 'mgllava-image-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const solid = (width: number, height: number, rgb: [number, number, number]): RgbImage => {
  const data = new Uint8Array(width * height * 3);
  for (let i = 0; i < width * height; i++) data.set(rgb, 3 * i);
  return { data, width, height };
};
const pixel = (img: RgbImage, x: number, y: number) => [...img.data.subarray((y * img.width + x) * 3, (y * img.width + x) * 3 + 3)];
const norm = (rgb: number[]) => rgb.map((v, c) => (v / 255 - CLIP_NORM.mean[c]!) / CLIP_NORM.std[c]!);

async function expectImageError(p: Promise<unknown>, kind: string, pathPart: string): Promise<ImageError> {
  const e = await p.then(
    () => null,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(ImageError);
  expect((e as ImageError).kind).toBe(kind);
  expect((e as ImageError).message).toContain(pathPart);
  return e as ImageError;
}

describe('expand2square', () => {
  it('fill is int(255*mean) of the CLIP mean', () => {
    expect(padFill()).toEqual([122, 116, 104]);
  });

  it('pastes at ((side-w)//2, (side-h)//2) on the fill colour', () => {
    const fill = padFill();
    // wide 5x2: side 5, dy = floor(3/2) = 1 -> rows 1,2 image, rows 0,3,4 fill
    const wide = expandToSquare(solid(5, 2, [1, 2, 3]), fill);
    expect(wide.padding).toEqual({ side: 5, dx: 0, dy: 1 });
    expect([0, 1, 2, 3, 4].map((y) => pixel(wide.image, 2, y))).toEqual([fill, [1, 2, 3], [1, 2, 3], fill, fill]);
    // tall 2x5: dx = 1
    const tall = expandToSquare(solid(2, 5, [9, 9, 9]), fill);
    expect(tall.padding).toEqual({ side: 5, dx: 1, dy: 0 });
    expect([0, 1, 2, 3, 4].map((x) => pixel(tall.image, x, 4))).toEqual([fill, [9, 9, 9], [9, 9, 9], fill, fill]);
    // square: unchanged
    const sq = solid(3, 3, [0, 0, 0]);
    expect(expandToSquare(sq, fill).image).toBe(sq);
  });

  it('keeps the image content in place', () => {
    const img: RgbImage = { data: Uint8Array.from({ length: 3 * 2 * 3 }, (_, i) => i), width: 3, height: 2 };
    const { image, padding } = expandToSquare(img, [0, 0, 0]);
    expect(padding).toEqual({ side: 3, dx: 0, dy: 0 }); // floor(1/2) = 0: the extra row goes below
    expect(pixel(image, 0, 0)).toEqual(pixel(img, 0, 0));
    expect(pixel(image, 2, 1)).toEqual(pixel(img, 2, 1));
    expect(pixel(image, 1, 2)).toEqual([0, 0, 0]);
  });
});

describe('bicubic resize = PIL', () => {
  it('reproduces PIL Image.resize(BICUBIC) bit for bit (values recorded from Pillow 9.4)', () => {
    // A 5x3 RGB image (Python: random.seed(1); bytes(random.randrange(256) for _ in range(45))).
    const src: RgbImage = {
      width: 5,
      height: 3,
      data: Uint8Array.from([68, 32, 130, 60, 253, 230, 241, 194, 107, 48, 249, 14, 199, 221, 1, 228, 136, 117, 52, 162, 15, 11, 13, 4, 195, 110, 216, 14, 113, 224, 253, 119, 176, 118, 112, 235, 148, 11, 213, 51, 95, 151, 61, 170, 216]),
    };
    const pil: [number, number, number[]][] = [
      [7, 2, [127, 60, 122, 78, 162, 141, 75, 210, 127, 155, 131, 63, 118, 183, 80, 114, 197, 86, 134, 179, 79, 255, 129, 155, 163, 135, 153, 82, 94, 145, 91, 4, 136, 108, 65, 167, 78, 124, 206, 33, 148, 230]],
      [3, 5, [59, 122, 186, 164, 239, 122, 139, 242, 0, 93, 134, 133, 120, 171, 85, 123, 189, 81, 150, 148, 68, 58, 65, 47, 94, 110, 227, 186, 129, 151, 91, 46, 146, 67, 123, 211, 203, 115, 213, 120, 46, 216, 52, 140, 183]],
      [2, 2, [101, 148, 119, 124, 182, 79, 150, 96, 146, 74, 91, 187]],
    ];
    for (const [w, h, want] of pil) expect([...resizeBicubicPil(src, w, h).data], `${w}x${h}`).toEqual(want);
    const up = resizeBicubicPil(src, 11, 7).data; // enlarging (where libvips differs most)
    expect([...up.subarray(0, 12)]).toEqual([52, 0, 120, 51, 53, 148, 43, 179, 218, 74, 255, 248]);
    expect([...up.subarray(up.length - 9)]).toEqual([39, 129, 164, 60, 167, 205, 68, 183, 222]);
    expect(resizeBicubicPil(src, 5, 3)).toBe(src);
  });
});

describe('normalization', () => {
  it('is (x/255 - mean)/std per channel, HWC float32', () => {
    const img: RgbImage = { data: Uint8Array.from([0, 128, 255, 255, 0, 7]), width: 2, height: 1 };
    const out = normalizeImage(img);
    expect(out).toBeInstanceOf(Float32Array);
    const want = [...norm([0, 128, 255]), ...norm([255, 0, 7])];
    out.forEach((v, i) => expect(v).toBeCloseTo(want[i]!, 6));
  });
});

describe('bilinear resize (half-pixel centres, no antialias)', () => {
  it('matches a hand computation: 4x4 -> 2x2 averages 2x2 blocks, 2 -> 3 clamps the left edge', () => {
    const src = Float32Array.from({ length: 16 }, (_, i) => i); // row-major 4x4, 1 channel
    // out(0,0) samples src(0.5, 0.5) = mean(0,1,4,5) = 2.5; out(1,1) samples (2.5,2.5) = mean(10,11,14,15)
    expect([...resizeBilinear(src, 4, 4, 1, 2, 2)]).toEqual([2.5, 4.5, 10.5, 12.5]);
    // 1x2 -> 1x3: x = (o+0.5)*2/3-0.5 = -1/6 (clamped to 0), 0.5, 7/6 (right tap clamped): a, (a+b)/2, b
    const row = resizeBilinear(Float32Array.from([10, 20]), 1, 2, 1, 1, 3);
    expect([...row]).toEqual([10, 15, 20]);
    // 3 -> 2 along x: x = 0.25, 1.75 -> 10 + 0.25*10, 20 + 0.75*10
    expect([...resizeBilinear(Float32Array.from([10, 20, 30]), 1, 3, 1, 1, 2)]).toEqual([12.5, 27.5]);
  });

  it('equals tf.image.resizeBilinear(x, size, false, true) (torch align_corners=False), leak-free', () => {
    const h = 13;
    const w = 11;
    const data = Float32Array.from({ length: h * w * 3 }, (_, i) => Math.sin(i * 0.37) * 2);
    const before = tf.memory().numTensors;
    for (const [oh, ow] of [
      [5, 7],
      [20, 4],
      [13, 11],
    ] as const) {
      const ours = resizeBilinear(data, h, w, 3, oh, ow);
      const theirs = tf.tidy(() => tf.image.resizeBilinear(tf.tensor3d(data, [h, w, 3]), [oh, ow], false, true).dataSync());
      expect(ours.length).toBe(theirs.length);
      let maxErr = 0;
      ours.forEach((v, i) => (maxErr = Math.max(maxErr, Math.abs(v - theirs[i]!))));
      expect(maxErr).toBeLessThan(1e-5);
    }
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('decode + prepare', () => {
  it('aux [S,S,3] and low-res [L,L,3]: padding rows carry the fill, the image rows its colour', async () => {
    const file = path.join(dir, 'red.png');
    await sharp({ create: { width: 40, height: 20, channels: 3, background: { r: 200, g: 30, b: 10 } } }).png().toFile(file);
    const p = await prepareImage(file, { auxSize: 20, lowresSize: 10 });
    expect(p.aux).toBeInstanceOf(Float32Array);
    expect(p.aux.length).toBe(20 * 20 * 3);
    expect(p.lowres.length).toBe(10 * 10 * 3);
    expect({ w: p.width, h: p.height, pad: p.padding }).toEqual({ w: 40, h: 20, pad: { side: 40, dx: 0, dy: 10 } });
    const at = (img: Float32Array, s: number, x: number, y: number) => [...img.subarray((y * s + x) * 3, (y * s + x) * 3 + 3)];
    const fill = norm(padFill());
    const red = norm([200, 30, 10]);
    // canvas 40x40 -> 20x20: canvas rows 10..29 are the image = aux rows 5..14; the bicubic kernel reaches
    // 4 canvas rows, so aux rows 0..2 / 17..19 are pure fill and 7..12 pure image colour
    for (const [y, want] of [
      [0, fill],
      [2, fill],
      [7, red],
      [12, red],
      [17, fill],
      [19, fill],
    ] as const) {
      at(p.aux, 20, 9, y).forEach((v, c) => expect(v).toBeCloseTo(want[c]!, 5));
    }
    // low-res = bilinear of the normalized aux image
    const low = resizeBilinear(p.aux, 20, 20, 3, 10, 10);
    expect([...p.lowres]).toEqual([...low]);
  });

  it('drops alpha, expands greyscale, and applies EXIF orientation only when asked (the reference does not)', async () => {
    const rgba = path.join(dir, 'rgba.png');
    await sharp({ create: { width: 3, height: 2, channels: 4, background: { r: 10, g: 20, b: 30, alpha: 0.5 } } }).png().toFile(rgba);
    const a = await decodeImage(rgba);
    expect([a.width, a.height, a.data.length]).toEqual([3, 2, 18]);
    expect(pixel(a, 0, 0)).toEqual([10, 20, 30]);

    const grey = path.join(dir, 'grey.png');
    await sharp({ create: { width: 2, height: 2, channels: 3, background: { r: 90, g: 90, b: 90 } } }).greyscale().png().toFile(grey);
    const g = await decodeImage(grey);
    expect(g.data.length).toBe(12);
    expect(pixel(g, 1, 1)).toEqual([90, 90, 90]);

    const rotated = path.join(dir, 'rot.jpg');
    await sharp({ create: { width: 8, height: 4, channels: 3, background: { r: 0, g: 0, b: 0 } } }).jpeg().withMetadata({ orientation: 6 }).toFile(rotated);
    expect(await decodeImage(rotated)).toMatchObject({ width: 8, height: 4 }); // PIL's Image.open: stored pixels
    expect(await decodeImage(rotated, { exifOrientation: 'ignore' })).toMatchObject({ width: 8, height: 4 });
    expect(await decodeImage(rotated, { exifOrientation: 'apply' })).toMatchObject({ width: 4, height: 8 });
  });

  it('a corrupt, truncated or missing image is an ImageError naming the path', async () => {
    const good = await sharp({ create: { width: 32, height: 32, channels: 3, background: { r: 1, g: 2, b: 3 } } }).png().toBuffer();
    const truncated = path.join(dir, 'truncated.png');
    writeFileSync(truncated, good.subarray(0, good.length - 30));
    await expectImageError(prepareImage(truncated, { auxSize: 8, lowresSize: 4 }), 'undecodable', truncated);
    const garbage = path.join(dir, 'garbage.jpg');
    writeFileSync(garbage, 'not an image at all');
    await expectImageError(decodeImage(garbage), 'undecodable', garbage);
    await expectImageError(decodeImage(path.join(dir, 'nope.png')), 'missing', 'nope.png');
  });

  it('refuses decompression bombs (the pixel limit stays on)', async () => {
    // A PNG header claiming 30000x30000 pixels; sharp must refuse it before allocating anything.
    const bomb = path.join(dir, 'bomb.png');
    writePngHeader(bomb, 30000, 30000);
    // The pixel budget refuses it from the header; without a budget, sharp's own limit still does.
    const e = await expectImageError(decodeImage(bomb), 'too_large', bomb);
    expect(e.detail).toMatch(/30000x30000.*pixel budget of 89\.5 MP \(data\.max_image_pixels/);
    const s = await expectImageError(decodeImage(bomb, { maxPixels: null }), 'undecodable', bomb);
    expect(s.detail).toMatch(/pixel limit/i);
  });
});

describe('image paths', () => {
  it('resolves inside the folder and refuses ../, absolute paths and links leading out', async () => {
    const root = path.join(dir, 'images');
    const outside = path.join(dir, 'outside.png');
    writeFileSync(outside, 'x');
    await sharp({ create: { width: 2, height: 2, channels: 3, background: 'white' } }).png().toFile(path.join(dir, 'inside.png'));
    const { mkdirSync } = await import('node:fs');
    mkdirSync(path.join(root, 'sub'), { recursive: true });
    writeFileSync(path.join(root, 'sub', 'a.png'), 'x');
    symlinkSync(outside, path.join(root, 'link.png'));
    expect(await resolveImagePath(root, 'sub/a.png')).toBe(path.join(root, 'sub', 'a.png'));
    expect(await resolveImagePath(root, 'sub/../sub/a.png')).toBe(path.join(root, 'sub', 'a.png'));
    await expectImageError(resolveImagePath(root, '../outside.png'), 'outside', '../outside.png');
    await expectImageError(resolveImagePath(root, outside), 'outside', outside);
    await expectImageError(resolveImagePath(root, 'link.png'), 'outside', 'link.png');
    await expectImageError(resolveImagePath(root, 'sub/missing.png'), 'missing', 'missing.png');
  });
});
