/**
 * How far are our resizers from the reference's (PIL bicubic in CLIPImageProcessor)? Generates a few
 * photo-like images (smooth colour fields, texture noise, hard-edged shapes), runs expand2square + resize to
 * S through PIL, through our resample.ts (what the pipeline uses) and through sharp's cubic resize (what it
 * would use otherwise), and prints mean / max absolute differences of the resized 8-bit images (grey levels)
 * and of the normalized aux images (normalized units), plus the time of each resize.
 *
 *   npx tsx scripts/pil-compare.ts [--json]
 *
 * Needs Debian's python3-pil and python3-numpy (`apt-get install -y python3-pil python3-numpy`); runs
 * /usr/bin/python3.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { decodeImage, expandToSquare, normalizeImage, padFill, resizeShortestEdgeAndCrop } from '../src/data/image.js';
import { streamRng } from '../src/data/random.js';

interface Case {
  name: string;
  width: number;
  height: number;
  size: number;
  format: 'png' | 'jpeg';
}

const CASES: Case[] = [
  { name: 'down-1024x768', width: 1024, height: 768, size: 768, format: 'png' },
  { name: 'down-1600x1200', width: 1600, height: 1200, size: 768, format: 'png' },
  { name: 'down-2400x1800', width: 2400, height: 1800, size: 768, format: 'png' },
  { name: 'up-517x333', width: 517, height: 333, size: 768, format: 'png' },
  { name: 'up-300x400', width: 300, height: 400, size: 768, format: 'png' },
  { name: 'demo-180x140', width: 180, height: 140, size: 128, format: 'png' },
  { name: 'demo-120x200', width: 120, height: 200, size: 128, format: 'png' },
  { name: 'jpeg-1024x768', width: 1024, height: 768, size: 768, format: 'jpeg' },
];

/** A deterministic photo-like RGB image: smooth colour waves + fine texture noise + a few hard-edged shapes. */
function photoLike(width: number, height: number, seed: number): Uint8Array {
  const rng = streamRng(seed, 77);
  const waves = Array.from({ length: 6 }, () => ({ fx: rng.uniform(0.5, 6) / width, fy: rng.uniform(0.5, 6) / height, ph: rng.uniform(0, 6.28), c: rng.int(3), a: rng.uniform(20, 50) }));
  const shapes = Array.from({ length: 12 }, () => ({ x: rng.uniform(0, width), y: rng.uniform(0, height), r: rng.uniform(0.02, 0.15) * width, rgb: [rng.int(256), rng.int(256), rng.int(256)], round: rng.next() < 0.5 }));
  const out = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const px = [128, 120, 110];
      for (const w of waves) px[w.c]! += w.a * Math.sin(2 * Math.PI * (w.fx * x + w.fy * y) + w.ph);
      for (const s of shapes) {
        const inside = s.round ? (x - s.x) ** 2 + (y - s.y) ** 2 < s.r * s.r : Math.abs(x - s.x) < s.r && Math.abs(y - s.y) < s.r * 0.6;
        if (inside) for (let c = 0; c < 3; c++) px[c] = s.rgb[c]!;
      }
      const n = (rng.next() - 0.5) * 24;
      for (let c = 0; c < 3; c++) out[(y * width + x) * 3 + c] = Math.max(0, Math.min(255, Math.round(px[c]! + n)));
    }
  }
  return out;
}

const PIL_SCRIPT = `
import sys
from PIL import Image
src, dst, size, r, g, b = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
img = Image.open(src).convert('RGB')
w, h = img.size
side = max(w, h)
canvas = Image.new('RGB', (side, side), (r, g, b))
canvas.paste(img, ((side - w) // 2, (side - h) // 2))
# CLIPImageProcessor: shortest edge -> size (square canvas: size x size), PIL bicubic, no reducing_gap
out = canvas.resize((size, size), resample=Image.BICUBIC)
open(dst, 'wb').write(out.tobytes())
`;

interface Row {
  case: string;
  resizer: 'resample.ts' | 'sharp cubic';
  size: number;
  meanAbsU8: number;
  maxAbsU8: number;
  fracDiffering: number;
  meanAbsNorm: number;
  maxAbsNorm: number;
  ms: number;
}

async function main(): Promise<void> {
  const json = process.argv.includes('--json');
  const dir = mkdtempSync(path.join(tmpdir(), 'mgllava-pil-'));
  const script = path.join(dir, 'pil.py');
  writeFileSync(script, PIL_SCRIPT);
  const fill = padFill();
  const rows: Row[] = [];
  try {
    for (const [i, c] of CASES.entries()) {
      const file = path.join(dir, `${c.name}.${c.format}`);
      const raw = sharp(Buffer.from(photoLike(c.width, c.height, i)), { raw: { width: c.width, height: c.height, channels: 3 } });
      await (c.format === 'png' ? raw.png() : raw.jpeg({ quality: 90 })).toFile(file);

      const dec = await decodeImage(file);
      const square = expandToSquare(dec, fill).image;
      const t0 = performance.now();
      const ours = resizeShortestEdgeAndCrop(square, c.size);
      const t1 = performance.now();
      const viaSharp = await sharp(square.data, { raw: { width: square.width, height: square.height, channels: 3 } })
        .resize(c.size, c.size, { kernel: 'cubic', fit: 'fill' })
        .raw()
        .toBuffer();
      const t2 = performance.now();

      const pilFile = path.join(dir, `${c.name}.pil.raw`);
      execFileSync('/usr/bin/python3', [script, file, pilFile, String(c.size), ...fill.map(String)]);
      const pil = new Uint8Array(readFileSync(pilFile));
      const ref = normalizeImage({ data: pil, width: c.size, height: c.size });
      for (const [resizer, data, ms] of [
        ['resample.ts', ours.data, t1 - t0],
        ['sharp cubic', new Uint8Array(viaSharp), t2 - t1],
      ] as const) {
        if (pil.length !== data.length) throw new Error(`${c.name}: PIL gave ${pil.length} bytes, ${resizer} ${data.length}`);
        const a = normalizeImage({ data, width: c.size, height: c.size });
        let sumU8 = 0;
        let maxU8 = 0;
        let differing = 0;
        let sumN = 0;
        let maxN = 0;
        for (let k = 0; k < pil.length; k++) {
          const d = Math.abs(data[k]! - pil[k]!);
          sumU8 += d;
          maxU8 = Math.max(maxU8, d);
          if (d > 0) differing++;
          const dn = Math.abs(a[k]! - ref[k]!);
          sumN += dn;
          maxN = Math.max(maxN, dn);
        }
        rows.push({ case: c.name, resizer, size: c.size, meanAbsU8: sumU8 / pil.length, maxAbsU8: maxU8, fracDiffering: differing / pil.length, meanAbsNorm: sumN / pil.length, maxAbsNorm: maxN, ms });
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  if (json) {
    process.stdout.write(`${JSON.stringify(rows)}\n`);
    return;
  }
  process.stdout.write('case              resizer        S    mean|d| u8  max|d| u8  differing  mean|d| norm  max|d| norm  resize ms\n');
  for (const r of rows) {
    process.stdout.write(
      `${r.case.padEnd(17)} ${r.resizer.padEnd(12)} ${String(r.size).padStart(3)}  ${r.meanAbsU8.toFixed(3).padStart(10)}  ${String(r.maxAbsU8).padStart(9)}  ${(100 * r.fracDiffering).toFixed(1).padStart(8)}%  ${r.meanAbsNorm.toFixed(4).padStart(12)}  ${r.maxAbsNorm.toFixed(3).padStart(11)}  ${r.ms.toFixed(1).padStart(9)}\n`,
    );
  }
}

await main();
