import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { preprocessBoxes } from '../src/data/boxes.js';
import { checkDataset } from '../src/data/check.js';
import { streamRng } from '../src/data/random.js';
import { parseBoxes, parseRecords, type LlavaRecord } from '../src/data/records.js';
import { synthDataset } from '../src/data/synth.js';
import { annotateScene } from '../src/data/synth/annotate.js';
import { makeScene, smallestFirst } from '../src/data/synth/scene.js';
import { getTemplate } from '../src/data/templates.js';
import { loadTokenizer } from '../src/data/tokenizer.js';

let root: string;
const dirA = () => path.join(root, 'a');
const opts = { train: 12, eval: 3, seed: 5 };

beforeAll(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'mgllava-synth-'));
  await synthDataset({ out: dirA(), ...opts });
});
afterAll(() => rm(root, { recursive: true, force: true }));

const read = (f: string) => readFileSync(path.join(dirA(), f), 'utf8');
const records = async (f: string): Promise<LlavaRecord[]> => {
  const r = await parseRecords(read(f), f);
  expect(r.bad).toEqual([]);
  return r.records;
};

function listFiles(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((d) => d.isFile())
    .map((d) => path.relative(dir, path.join(d.parentPath, d.name)))
    .sort();
}

describe('synthetic dataset', () => {
  it('same seed -> byte-identical files (whatever the render concurrency); another seed differs', async () => {
    const b = path.join(root, 'b');
    await synthDataset({ out: b, ...opts, concurrency: 1 });
    const files = listFiles(dirA());
    expect(files).toEqual(listFiles(b));
    expect(files.filter((f) => f.endsWith('.png'))).toHaveLength(15);
    for (const f of files) expect(readFileSync(path.join(b, f)).equals(readFileSync(path.join(dirA(), f))), f).toBe(true);
    const c = path.join(root, 'c');
    await synthDataset({ out: c, ...opts, seed: 6 });
    expect(readFileSync(path.join(c, 'boxes.json')).equals(readFileSync(path.join(dirA(), 'boxes.json')))).toBe(false);
    // an existing dataset is not overwritten silently
    await expect(synthDataset({ out: c, ...opts })).rejects.toThrow(/not empty.*--overwrite/);
    await synthDataset({ out: c, ...opts, overwrite: true });
    expect(readFileSync(path.join(c, 'boxes.json')).equals(readFileSync(path.join(dirA(), 'boxes.json')))).toBe(true);
  });

  it('passes data check with its own tokenizer', async () => {
    const text = { template: getTemplate('vicuna'), tokenizer: await loadTokenizer({ type: 'hf', path: dirA() }), maxLength: 128 };
    for (const f of ['pretrain.json', 'finetune.json', 'eval.json']) {
      const r = await checkDataset({ records: path.join(dirA(), f), boxes: path.join(dirA(), 'boxes.json'), images: path.join(dirA(), 'images'), text });
      expect(r.bad, f).toEqual([]);
      expect(r.valid.length).toBe(r.total);
    }
  });

  it('has the question kinds of the study: small colour only, large colour and shape; eval has categories', async () => {
    const ft = await records('finetune.json');
    expect(ft.some((r) => r.conversations.length > 2)).toBe(true); // some multi-turn
    expect(ft.some((r) => r.conversations.length === 2)).toBe(true);
    const questions = ft.flatMap((r) => r.conversations.filter((t) => t.from === 'human').map((t) => t.value.replace('<image>\n', '')));
    for (const q of questions) expect(q).toMatch(/^what (color is the (small|large) (square|circle|triangle)|shape is the large \w+ object) \?$/);
    expect(questions.join('\n')).not.toMatch(/shape is the small/);
    expect(ft.filter((r) => r.image === 'train-00000.png').flatMap((r) => r.conversations).filter((t) => t.from === 'gpt')).toHaveLength(3);
    const ev = await records('eval.json');
    expect(ev).toHaveLength(9);
    expect(ev.map((r) => r.extra.category)).toEqual(Array(3).fill(['small_color', 'large_color', 'large_shape']).flat());
    for (const r of ev) expect(r.conversations[1]!.value).toMatch(/^[a-z]+$/);
    const pre = await records('pretrain.json');
    expect(pre).toHaveLength(12);
    expect(pre[0]!.conversations[1]!.value).toMatch(/^a small \w+ \w+ , .* and a large \w+ \w+ \.$/);
  });

  it('scenes: non-square canvases 120-200 px, 3-6 objects, one small (4-6 %), one large (24-32 %), medium 12-16 %', async () => {
    for (let i = 0; i < 40; i++) {
      const s = makeScene(streamRng(1, 1, i));
      expect(s.width).toBeGreaterThanOrEqual(120);
      expect(s.height).toBeLessThanOrEqual(200);
      expect(s.objects.length).toBeGreaterThanOrEqual(3);
      expect(s.objects.length).toBeLessThanOrEqual(6);
      const longest = Math.max(s.width, s.height);
      const side = (o: (typeof s.objects)[number]) => (o.box[2] - o.box[0]) / longest;
      const by = (size: string) => s.objects.filter((o) => o.size === size);
      expect(by('small')).toHaveLength(1);
      expect(by('large')).toHaveLength(1);
      expect(side(by('small')[0]!)).toBeGreaterThanOrEqual(0.04);
      expect(side(by('small')[0]!)).toBeLessThanOrEqual(0.06);
      expect(side(by('large')[0]!)).toBeGreaterThanOrEqual(0.24);
      for (const m of by('medium')) expect(side(m)).toBeGreaterThanOrEqual(0.12);
      for (const o of s.objects) expect(o.box[2] <= s.width && o.box[3] <= s.height).toBe(true);
    }
    const meta = await sharp(path.join(dirA(), 'images', 'train-00003.png')).metadata();
    const scene = makeScene(streamRng(opts.seed, 1, 3));
    expect([meta.width, meta.height, meta.channels]).toEqual([scene.width, scene.height, 3]);
  });

  it('boxes: after the reference pipeline (NMS 0.2) exactly the real objects remain, smallest first', async () => {
    const boxes = await parseBoxes(read('boxes.json'), 'boxes.json');
    expect(boxes.bad).toEqual([]);
    let extras = 0;
    for (let i = 0; i < 60; i++) {
      const s = makeScene(streamRng(2, 1, i));
      const a = annotateScene(streamRng(2, 9, i), s);
      extras += a.boxes.length - a.real;
      expect(a.real).toBe(s.objects.length);
      // The file order is already smallest first for the real boxes, with decreasing scores.
      for (let k = 1; k < a.real; k++) expect(a.scores[k]!).toBeLessThan(a.scores[k - 1]!);
      for (let k = a.real; k < a.boxes.length; k++) expect(a.scores[k]!).toBeLessThan(a.scores[a.real - 1]!);
      const res = preprocessBoxes(a, { origW: s.width, origH: s.height, auxSize: 128 });
      expect(res.stages.nmsKeep).toEqual(Array.from({ length: a.real }, (_, k) => k));
      expect(res.labels).toEqual(smallestFirst(s).map((o) => o.shape));
      // first the small object, last the large one, mediums in between
      const areas = res.boxes.map((b) => (b[2] - b[0]) * (b[3] - b[1]));
      expect(Math.min(...areas.slice(1))).toBeGreaterThan(areas[0]!);
      expect(Math.max(...areas.slice(0, -1))).toBeLessThan(areas[areas.length - 1]!);
    }
    expect(extras).toBeGreaterThan(60); // duplicates and partial boxes are there for NMS to remove
  });

  it('writes a word-level HF tokenizer that @huggingface/tokenizers loads, covering the corpus', async () => {
    const json = JSON.parse(read('tokenizer.json')) as { model: { type: string; vocab: Record<string, number> }; pre_tokenizer: { type: string } };
    expect(json.model.type).toBe('WordLevel');
    expect(json.pre_tokenizer.type).toBe('Whitespace');
    expect(Object.entries(json.model.vocab).slice(0, 4)).toEqual([
      ['<unk>', 0],
      ['<s>', 1],
      ['</s>', 2],
      ['<pad>', 3],
    ]);
    const tok = new Tokenizer(json as never, JSON.parse(read('tokenizer_config.json')) as never);
    const enc = tok.encode('what color is the small triangle ?', { add_special_tokens: false });
    expect(enc.tokens).toEqual(['what', 'color', 'is', 'the', 'small', 'triangle', '?']);
    expect(enc.ids).toEqual(enc.tokens.map((t: string) => json.model.vocab[t]));
    const corpus = (await Promise.all(['pretrain.json', 'finetune.json', 'eval.json'].map(records))).flatMap((rs) => rs.flatMap((r) => r.conversations.map((t) => t.value.replace('<image>', ''))));
    for (const t of [...corpus, 'USER: ASSISTANT:']) expect(tok.encode(t, { add_special_tokens: false }).ids).not.toContain(0);
    expect(Object.keys(json.model.vocab).length).toBeLessThan(40);
  });

  it('annotations.json: every image with its objects smallest first, exact (unjittered) boxes, colour, shape, size', async () => {
    const ann = JSON.parse(read('annotations.json')) as {
      format: string;
      attributes: Record<string, string[]>;
      images: Record<string, { image: string; split: string; width: number; height: number; objects: { box: number[]; color: string; shape: string; size: string }[] }>;
    };
    expect(ann.format).toBe('mgllava-annotations');
    expect(ann.attributes).toEqual({ color: ['red', 'green', 'blue', 'yellow', 'purple', 'cyan'], shape: ['square', 'circle', 'triangle'], size: ['small', 'medium', 'large'] });
    expect(Object.keys(ann.images)).toEqual([...Array.from({ length: 12 }, (_, i) => `train-${String(i).padStart(5, '0')}`), 'eval-00000', 'eval-00001', 'eval-00002']);
    for (const [id, a] of Object.entries(ann.images)) {
      const [split, i] = id.split('-') as [string, string];
      const scene = makeScene(streamRng(opts.seed, split === 'train' ? 1 : 2, Number(i)));
      expect(a).toMatchObject({ image: `${id}.png`, split, width: scene.width, height: scene.height });
      const objs = smallestFirst(scene);
      expect(a.objects.map((o) => [o.color, o.shape, o.size])).toEqual(objs.map((o) => [o.color, o.shape, o.size]));
      a.objects.forEach((o, k) => o.box.forEach((v, j) => expect(Math.abs(v - objs[k]!.box[j]!)).toBeLessThanOrEqual(0.005)));
    }
  });
});
