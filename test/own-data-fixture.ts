/**
 * "A user's folder of images" for the README's own-data recipe test: JPEG photos of one coloured shape on a
 * plain table, with the records and box JSON a user would write by hand in the README's format (one box per
 * object, x1,y1,x2,y2 in original pixels, labels, scores). Deterministic for a seed.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import sharp from 'sharp';
import { Rng } from '../src/util/rng.js';

export const OWN_COLORS: Record<string, [number, number, number]> = { red: [220, 30, 30], green: [30, 170, 50], blue: [40, 60, 220] };
export const OWN_SHAPES = ['square', 'circle', 'triangle'] as const;

function shapeSvg(shape: string, x: number, y: number, s: number, rgb: [number, number, number]): string {
  const fill = `rgb(${rgb.join(',')})`;
  if (shape === 'square') return `<rect x="${x}" y="${y}" width="${s}" height="${s}" fill="${fill}"/>`;
  if (shape === 'circle') return `<circle cx="${x + s / 2}" cy="${y + s / 2}" r="${s / 2}" fill="${fill}"/>`;
  return `<polygon points="${x + s / 2},${y} ${x + s},${y + s} ${x},${y + s}" fill="${fill}"/>`;
}

export interface OwnDataFolder {
  dir: string;
  train: string;
  eval: string;
  boxes: string;
  images: string;
  /** The first image file name and its record id (chat example). */
  firstImage: string;
  firstId: string;
}

/** `dir/images/*.jpg` + `dir/train.json`, `dir/eval.json`, `dir/boxes.json`. */
export async function makeOwnDataFolder(dir: string, o: { train?: number; eval?: number; seed?: number } = {}): Promise<OwnDataFolder> {
  const rng = new Rng(o.seed ?? 7);
  const images = path.join(dir, 'images');
  await mkdir(images, { recursive: true });
  const nTrain = o.train ?? 36;
  const nEval = o.eval ?? 9;
  const train: object[] = [];
  const evalRecs: object[] = [];
  const boxes: Record<string, object> = {};
  for (let i = 0; i < nTrain + nEval; i++) {
    const colour = Object.keys(OWN_COLORS)[i % 3]!;
    const shape = OWN_SHAPES[Math.floor(i / 3) % 3]!;
    const w = 160;
    const h = 120;
    const s = 30 + rng.int(40);
    const x = rng.int(w - s);
    const y = rng.int(h - s);
    const bg = 180 + rng.int(40);
    const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}"><rect width="${w}" height="${h}" fill="rgb(${bg},${bg},${bg - 10})"/>${shapeSvg(shape, x, y, s, OWN_COLORS[colour]!)}</svg>`;
    const file = `img-${String(i).padStart(3, '0')}.jpg`;
    await sharp(Buffer.from(svg)).jpeg({ quality: 90 }).toFile(path.join(images, file));
    const split = i < nTrain ? train : evalRecs;
    const box = { boxes: [[x, y, x + s, y + s]], labels: [shape], scores: [1.0] };
    for (const [kind, q, a] of [
      ['color', 'What color is the object?', colour],
      ['shape', 'What shape is the object?', shape],
    ] as const) {
      const id = `${file.replace('.jpg', '')}-${kind}`;
      split.push({ id, image: file, category: kind, conversations: [{ from: 'human', value: `<image>\n${q}` }, { from: 'gpt', value: a }] });
      boxes[id] = box;
    }
  }
  const f = (n: string) => path.join(dir, n);
  await writeFile(f('train.json'), `[\n${train.map((r) => JSON.stringify(r)).join(',\n')}\n]\n`);
  await writeFile(f('eval.json'), `[\n${evalRecs.map((r) => JSON.stringify(r)).join(',\n')}\n]\n`);
  await writeFile(f('boxes.json'), `{\n${Object.entries(boxes).map(([k, v]) => `${JSON.stringify(k)}: ${JSON.stringify(v)}`).join(',\n')}\n}\n`);
  return { dir, train: f('train.json'), eval: f('eval.json'), boxes: f('boxes.json'), images, firstImage: 'img-000.jpg', firstId: 'img-000-color' };
}
