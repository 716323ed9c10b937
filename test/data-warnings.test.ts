// Issue 12 (silent acceptance) and 17.2: boxes a person got wrong are warned about with counts per record,
// a sample whose text + image + object tokens exceed the budget is reported and capped, and eval categories
// that are not strings are refused instead of being counted as "(none)".
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { auditBoxes } from '../src/data/box-audit.js';
import { preprocessBoxes } from '../src/data/boxes.js';
import { checkDataset, formatWarning } from '../src/data/check.js';
import { loadDataset } from '../src/data/dataset.js';
import { recordCategory } from '../src/data/records.js';
import { getTemplate } from '../src/data/templates.js';
import { objectTokenRoom, positionBudget } from '../src/data/token-budget.js';
import { loadTokenizer } from '../src/data/tokenizer.js';
import { runEval } from '../src/infer/eval.js';
import { MgllavaError } from '../src/errors.js';
import { tinyModel, WordTokenizer } from './infer-fixtures.js';
import { runCli } from './cli-harness.js';

const root = mkdtempSync(path.join(tmpdir(), 'mgllava-warn-'));
const images = path.join(root, 'images');
afterAll(() => rmSync(root, { recursive: true, force: true }));

const qa = (q: string, a = 'red') => [
  { from: 'human', value: q },
  { from: 'gpt', value: a },
];

// 100x50 image: inverted, xywh-looking, outside and fine boxes.
const ENTRIES = {
  fine: { boxes: [[10, 10, 40, 40]], labels: ['a'], scores: [0.9] },
  inverted: { boxes: [[60, 10, 50, 40], [10, 10, 40, 40], [90, 45, 80, 5]], labels: ['a', 'b', 'c'], scores: [0.9, 0.8, 0.7] },
  xywh: { boxes: [[30, 20, 10, 15], [50, 5, 20, 10]], labels: ['a', 'b'], scores: [0.9, 0.8] },
  outside: { boxes: [[-5, 10, 30, 40], [90, 10, 130, 60], [200, 200, 220, 220]], labels: ['a', 'b', 'c'], scores: [0.9, 0.8, 0.7] },
};

let records: string;
let boxes: string;
beforeAll(async () => {
  mkdirSync(images);
  await sharp({ create: { width: 100, height: 50, channels: 3, background: { r: 20, g: 200, b: 20 } } }).png().toFile(path.join(images, 'img.png'));
  records = path.join(root, 'records.jsonl');
  writeFileSync(records, Object.keys(ENTRIES).map((id) => JSON.stringify({ id, image: 'img.png', conversations: qa('<image>\nwhat ?') })).join('\n') + '\n');
  boxes = path.join(root, 'boxes.json');
  writeFileSync(boxes, JSON.stringify(ENTRIES));
});

const text = async (maxLength = 64) => ({ template: getTemplate('vicuna'), tokenizer: await loadTokenizer({ type: 'byte' }), maxLength });

describe('boxes a user can get wrong', () => {
  it('auditBoxes tells inverted, xywh-looking and outside boxes apart', () => {
    expect(auditBoxes(ENTRIES.fine, 100, 50)).toMatchObject({ inverted: [], xywh: [], outside: [] });
    expect(auditBoxes(ENTRIES.inverted, 100, 50)).toMatchObject({ inverted: [0, 2], xywh: [] });
    expect(auditBoxes(ENTRIES.xywh, 100, 50)).toMatchObject({ xywh: [0, 1], inverted: [] });
    expect(auditBoxes(ENTRIES.outside, 100, 50)).toMatchObject({ outside: [0, 1, 2], whollyOutside: [2] });
  });

  it('data check warns per record with counts (still exit 0: the reference would use them as they are)', async () => {
    const r = await runCli(['data', 'check', '--records', records, '--boxes', boxes, '--images', images, '--tokenizer', 'byte', '--max-length', '64']);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/record "inverted": warning: inverted_boxes: 2 of 3 boxes are inverted \(x2 < x1 or y2 < y1\), e\.g\. boxes\[0\] = \[60, 10, 50, 40\]/);
    expect(r.out).toMatch(/record "xywh": warning: xywh_boxes: 2 of 2 boxes look like \[x, y, width, height\]/);
    expect(r.out).toMatch(/record "outside": warning: boxes_outside_image: 3 of 3 boxes reach outside the 100x50 image \(1 entirely outside it/);
    expect(r.out).not.toMatch(/record "fine": warning/);
    expect(r.out).toMatch(/4 records, 4 good, 0 problem\(s\); warnings: 1 record with inverted_boxes \(2 boxes\), 1 record with xywh_boxes \(2 boxes\), 1 record with boxes_outside_image \(3 boxes\)/);
    const j = JSON.parse((await runCli(['data', 'check', '--records', records, '--boxes', boxes, '--images', images, '--tokenizer', 'byte', '--max-length', '64', '--json'])).out) as {
      warnings: { id: string; kind: string; count: number }[];
    };
    expect(j.warnings.map((w) => [w.id, w.kind, w.count])).toEqual([
      ['inverted', 'inverted_boxes', 2],
      ['xywh', 'xywh_boxes', 2],
      ['outside', 'boxes_outside_image', 3],
    ]);
  });

  it('training prints the same warnings (loadDataset is what the trainer calls)', async () => {
    const lines: string[] = [];
    await loadDataset({ records, boxes, images, text: await text(), auxSize: 32, lowresSize: 16, log: (l) => lines.push(l) });
    expect(lines.filter((l) => l.includes('warning: '))).toHaveLength(3);
    expect(lines.at(-1)).toMatch(/^data: warnings: 1 record with inverted_boxes \(2 boxes\)/);
  });
});

describe('token budget: text + image + object tokens', () => {
  // 10,000 boxes of 10,000 labels on one 200x200 image: NMS keeps them all, the per-label cap never applies
  const many = { boxes: [] as number[][], labels: [] as string[], scores: [] as number[] };
  for (let i = 0; i < 10_000; i++) {
    const x = (i % 100) * 2;
    const y = Math.floor(i / 100) * 2;
    many.boxes.push([x, y, x + 1, y + 1]);
    many.labels.push(`l${i}`);
    many.scores.push(1 - i / 20_000);
  }

  it('the budget is max_length + image tokens; room for objects is what the text leaves (>= 1)', () => {
    const b = { maxLength: 128, imageTokens: 16 };
    expect(positionBudget(b)).toBe(144);
    expect(objectTokenRoom(36, b)).toBe(144 - 35 - 16);
    expect(objectTokenRoom(128, b)).toBe(1);
  });

  it('maxBoxes keeps the highest-scoring boxes in pipeline order and counts what it dropped', () => {
    const all = preprocessBoxes(many, { origW: 200, origH: 200, auxSize: 200, limitNum: 100 });
    expect(all.boxes.length).toBe(10_000); // the reference's pipeline: no bound at all
    const capped = preprocessBoxes(many, { origW: 200, origH: 200, auxSize: 200, limitNum: 100, maxBoxes: 93 });
    expect(capped.boxes).toEqual(all.boxes.slice(0, 93)); // scores descend with the index here
    expect(capped.stages.budgetDropped).toBe(10_000 - 93);
    const within = preprocessBoxes(ENTRIES.inverted, { origW: 100, origH: 50, auxSize: 32, maxBoxes: 10 });
    expect(within.boxes).toEqual(preprocessBoxes(ENTRIES.inverted, { origW: 100, origH: 50, auxSize: 32 }).boxes);
  });

  it('data check and training say when a record exceeds it, and the samples are capped', async () => {
    const dir = path.join(root, 'many');
    mkdirSync(dir);
    await sharp({ create: { width: 200, height: 200, channels: 3, background: { r: 1, g: 2, b: 3 } } }).png().toFile(path.join(dir, 'm.png'));
    const recs = path.join(dir, 'r.jsonl');
    writeFileSync(recs, `${JSON.stringify({ id: 'crowded', image: 'm.png', conversations: qa('<image>\nq') })}\n`);
    const bx = path.join(dir, 'b.json');
    writeFileSync(bx, JSON.stringify({ crowded: many }));
    const t = await text(128);
    const objectTokens = { imageTokens: 16, auxSize: 200, nmsThreshold: 0.2, limitNum: 100 };
    const report = await checkDataset({ records: recs, boxes: bx, images: dir, text: t, objectTokens });
    expect(report.warnings).toHaveLength(1);
    const w = report.warnings[0]!;
    const textTokens = report.valid[0]!.inputIds.length;
    expect(w).toMatchObject({ id: 'crowded', kind: 'over_token_budget', count: textTokens - 1 + 16 + 10_000 - 144 });
    expect(formatWarning(w)).toMatch(
      new RegExp(`record "crowded": warning: over_token_budget: ${textTokens - 1} text \\+ 16 image \\+ 10000 object tokens .* over the budget of 144 \\(data\\.max_length 128 \\+ image tokens\\): the \\d+ lowest-scoring object tokens are dropped`),
    );
    const lines: string[] = [];
    const { dataset } = await loadDataset({ records: recs, boxes: bx, images: dir, text: t, auxSize: 200, lowresSize: 56, imageTokens: 16, log: (l) => lines.push(l) });
    expect(lines.join('\n')).toMatch(/over_token_budget/);
    const s = await dataset.get(0);
    expect(s.boxes.length / 4).toBe(objectTokenRoom(textTokens, { maxLength: 128, imageTokens: 16 }));
    expect(textTokens - 1 + 16 + s.boxes.length / 4).toBe(144);
    // without imageTokens (a model without object tokens) nothing is capped or reported
    const plain = await loadDataset({ records: recs, boxes: bx, images: dir, text: t, auxSize: 200, lowresSize: 56, log: () => undefined });
    expect((await plain.dataset.get(0)).boxes.length / 4).toBe(10_000);
  });
});

describe('eval categories', () => {
  it('a string or number is a category, absent is uncategorised, anything else is refused', () => {
    expect(recordCategory({ extra: { category: 'shape' } })).toEqual({ category: 'shape' });
    expect(recordCategory({ extra: { category: 3 } })).toEqual({ category: '3' });
    expect(recordCategory({ extra: {} })).toEqual({ category: null });
    for (const [v, got] of [
      [null, 'null'],
      [{ a: 1 }, 'an object'],
      [['x'], 'a list'],
      [true, 'a boolean'],
      ['', 'an empty string'],
    ] as const) {
      expect(recordCategory({ extra: { category: v } })).toEqual({ problem: expect.stringContaining(`got ${got}`) });
    }
  });

  it('runEval refuses records whose category is an object or null, naming them, before generating', async () => {
    const file = path.join(root, 'eval.jsonl');
    writeFileSync(
      file,
      [
        { id: 'ok', category: 'x', conversations: qa('w3 w4', 'w5') },
        { id: 'obj', category: { name: 'x' }, conversations: qa('w3', 'w5') },
        { id: 'nul', category: null, conversations: qa('w3', 'w5') },
      ]
        .map((r) => JSON.stringify(r))
        .join('\n') + '\n',
    );
    const model = tinyModel(1, 'lowres');
    try {
      const e = await runEval({ model, tokenizer: new WordTokenizer(), template: getTemplate('vicuna'), records: file, images: null, boxes: null, out: path.join(root, 'o.jsonl') }).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(MgllavaError);
      const m = (e as Error).message;
      expect(m).toMatch(/2 problem\(s\)/);
      expect(m).toMatch(/record "obj": 'category' must be a non-empty string or a number, got an object/);
      expect(m).toMatch(/record "nul": .*got null/);
    } finally {
      model.dispose();
    }
  });
});
