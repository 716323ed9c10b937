import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkDataset, type TextEncoding } from '../src/data/check.js';
import { BadDatasetError, loadDataset } from '../src/data/dataset.js';
import { getTemplate } from '../src/data/templates.js';
import { loadTokenizer } from '../src/data/tokenizer.js';
import { runCli } from './cli-harness.js';

const root = mkdtempSync(path.join(tmpdir(), 'mgllava-check-'));
const images = path.join(root, 'images');
const recordsFile = path.join(root, 'records.jsonl');
const boxesFile = path.join(root, 'boxes.json');
let text: TextEncoding;

const qa = (q: string, a = 'red') => [
  { from: 'human', value: q },
  { from: 'gpt', value: a },
];
const box = { boxes: [[1, 1, 10, 10]], labels: ['thing'], scores: [0.9] };

/** One record per kind of problem; the expected kind is the key. */
const FIXTURE: [string | null, string][] = [
  [null, JSON.stringify({ id: 'good', image: 'good.png', conversations: qa('<image>\nwhat color ?') })],
  ['malformed_json', '{"id": "broken", "image": "good.png", conversations: []}'],
  ['missing_image', JSON.stringify({ id: 'missing', image: 'nope.png', conversations: qa('<image>\nq') })],
  ['undecodable_image', JSON.stringify({ id: 'corrupt', image: 'corrupt.png', conversations: qa('<image>\nq') })],
  ['image_outside_folder', JSON.stringify({ id: 'escape', image: '../outside.png', conversations: qa('<image>\nq') })],
  ['image_outside_folder', JSON.stringify({ id: 'absolute', image: path.join(root, 'outside.png'), conversations: qa('<image>\nq') })],
  ['image_token_count', JSON.stringify({ id: 'two-images', image: 'good.png', conversations: qa('<image>\n<image> q') })],
  ['image_token_count', JSON.stringify({ id: 'text-with-image', conversations: qa('<image>\nq') })],
  ['missing_boxes', JSON.stringify({ id: 'no-boxes', image: 'good.png', conversations: qa('<image>\nq') })],
  ['nonfinite_box', JSON.stringify({ id: 'nan-box', image: 'good.png', conversations: qa('<image>\nq') })],
  ['empty_conversation', JSON.stringify({ id: 'empty', image: 'good.png', conversations: [] })],
  ['all_labels_masked', JSON.stringify({ id: 'too-long', image: 'good.png', conversations: qa(`<image>\n${'x'.repeat(60)}`) })],
  [null, JSON.stringify({ id: 'text', conversations: qa('hello', 'hi') })],
];
const BAD_IDS = ['broken?', 'missing', 'corrupt', 'escape', 'absolute', 'two-images', 'text-with-image', 'no-boxes', 'nan-box', 'empty', 'too-long'];

beforeAll(async () => {
  mkdirSync(images);
  const png = await sharp({ create: { width: 24, height: 16, channels: 3, background: { r: 200, g: 10, b: 10 } } }).png().toBuffer();
  writeFileSync(path.join(images, 'good.png'), png);
  writeFileSync(path.join(images, 'corrupt.png'), png.subarray(0, png.length - 40));
  writeFileSync(path.join(root, 'outside.png'), png);
  writeFileSync(recordsFile, `${FIXTURE.map(([, line]) => line).join('\n')}\n`);
  const entries: Record<string, unknown> = {};
  for (const id of ['good', 'missing', 'corrupt', 'escape', 'absolute', 'two-images', 'empty', 'too-long']) entries[id] = box;
  // Python's json.dump writes NaN for a non-finite float: the file must stay readable.
  const boxesText = JSON.stringify(entries).replace(/}$/, ', "nan-box": {"boxes": [[1, NaN, 3, 4]], "labels": ["a"], "scores": [0.5]}}');
  writeFileSync(boxesFile, boxesText);
  text = { template: getTemplate('vicuna'), tokenizer: await loadTokenizer({ type: 'byte' }), maxLength: 40 };
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('data check', () => {
  it('finds every kind of bad record, naming file, id and reason', async () => {
    const r = await checkDataset({ records: recordsFile, boxes: boxesFile, images, text });
    expect(r.total).toBe(FIXTURE.length);
    expect(r.valid.map((v) => v.record.id)).toEqual(['good', 'text']);
    const kindsById = new Map<string | null, string[]>();
    for (const b of r.bad) kindsById.set(b.id, [...(kindsById.get(b.id) ?? []), b.kind]);
    FIXTURE.forEach(([kind, line]) => {
      const id = kind === 'malformed_json' ? null : (JSON.parse(line) as { id: string }).id;
      if (kind === null) expect(kindsById.has(id)).toBe(false);
      else expect(kindsById.get(id), String(id)).toEqual([kind]);
    });
    const nan = r.bad.find((b) => b.id === 'nan-box')!;
    expect(nan.file).toBe(boxesFile);
    expect(r.bad.find((b) => b.kind === 'malformed_json')).toMatchObject({ line: 2, column: 39, id: null });
    expect(r.bad.find((b) => b.id === 'corrupt')!.path).toBe(path.join(images, 'corrupt.png'));
    expect(r.bad.find((b) => b.id === 'missing')!.path).toBe(path.join(images, 'nope.png'));
    // the valid records carry what training needs
    const good = r.valid[0]!;
    expect(good.imagePath).toBe(path.join(images, 'good.png'));
    expect(good.boxes).toEqual(box);
    expect(good.inputIds).toContain(-200);
    expect(r.valid[1]!.imagePath).toBeNull();
  });

  it('CLI: exit 1 listing each bad record; --skip-bad writes the report and exits 0; --json', async () => {
    const args = ['data', 'check', '--records', recordsFile, '--boxes', boxesFile, '--images', images, '--tokenizer', 'byte', '--max-length', '40'];
    const fail = await runCli(args);
    expect(fail.code).toBe(1);
    for (const id of BAD_IDS.filter((x) => !x.endsWith('?'))) expect(fail.out).toContain(`record "${id}"`);
    expect(fail.out).toMatch(new RegExp(`${recordsFile.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:2:39: record \\?: malformed_json`));
    expect(fail.out).toMatch(/13 records, 2 good/);

    const report = path.join(root, 'skipped.jsonl');
    const skip = await runCli([...args, '--skip-bad', report]);
    expect(skip.code).toBe(0);
    const lines = readFileSync(report, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { id: string | null; kind: string });
    expect(lines.length).toBe(BAD_IDS.length);
    expect(new Set(lines.map((l) => l.id ?? 'broken?'))).toEqual(new Set(BAD_IDS));

    const json = await runCli([...args, '--json']);
    const parsed = JSON.parse(json.out) as { total: number; valid: number; bad: unknown[] };
    expect([parsed.total, parsed.valid, parsed.bad.length]).toEqual([13, 2, 11]);
  });

  it('data show prints a record as the model sees it; --config supplies the data settings and sizes', async () => {
    const show = await runCli(['data', 'show', 'good', '--records', recordsFile, '--boxes', boxesFile, '--images', images, '--tokenizer', 'byte', '--max-length', '40', '--aux-size', '32', '--lowres-size', '28', '--json']);
    expect(show.code).toBe(0);
    const o = JSON.parse(show.out) as Record<string, unknown>;
    expect(o).toMatchObject({ id: 'good', imageTokens: 4, objectTokens: 1, auxSize: 32, imageSize: [24, 16], padding: { side: 24, dx: 0, dy: 4 } });
    expect(o.prompt).toMatch(/^<s>USER: <image>\nwhat color \? ASSISTANT:\[\[red<\/s>\]\]/);
    expect(o.llmPositions).toBe((o.textTokens as number) - 1 + 4 + 1);
    // the same through an experiment config (the repo's tiny-shapes recipe, data pointed at the fixture;
    // flags beat the config: the tokenizer stays the toy one)
    const cfg = path.join(root, 'exp.yaml');
    const base = path.resolve(import.meta.dirname, '../configs/tiny-shapes/pretrain.yaml');
    writeFileSync(cfg, [`extends: ${base}`, 'data:', `  records: ${recordsFile}`, `  boxes: ${boxesFile}`, `  images: ${images}`, ''].join('\n'));
    const viaCfg = JSON.parse((await runCli(['data', 'show', 'good', '--config', cfg, '--set', 'data.max_length=40', '--tokenizer', 'byte', '--json'])).out) as Record<string, unknown>;
    expect(viaCfg).toMatchObject({ auxSize: 128, lowresSize: 56, imageTokens: 16, prompt: o.prompt });
    const bad = await runCli(['data', 'show', 'corrupt', '--config', cfg, '--tokenizer', 'byte']);
    expect(bad.code).toBe(4); // a data error (src/errors.ts)
    expect(bad.err).toContain(`record "corrupt": ${path.join(images, 'corrupt.png')}: cannot decode image`);
  });

  it('loadDataset refuses bad records unless skipping is asked for (with a report)', async () => {
    const o = { records: recordsFile, boxes: boxesFile, images, text, auxSize: 16, lowresSize: 8 };
    const err = await loadDataset(o).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BadDatasetError);
    expect((err as Error).message).toMatch(/11 bad record problem\(s\)/);
    expect((err as Error).message).toContain('record "corrupt"');
    const report = path.join(root, 'skip2.jsonl');
    const { dataset } = await loadDataset({ ...o, skipBadReport: report });
    expect(dataset.size).toBe(2);
    expect(readFileSync(report, 'utf8').trim().split('\n')).toHaveLength(11);
    const s = await dataset.get(0);
    expect(s.aux!.length).toBe(16 * 16 * 3);
    expect(s.boxes.length % 4).toBe(0);
    const t = await dataset.get(1);
    expect([t.hasImage, [...t.boxes]]).toEqual([false, [0, 0, 100, 100]]);
    expect(dataset.modalityLengths[1]).toBeLessThan(0);
  });

  it('malformed JSON arrays: a bad record or the whole file, with line and column', async () => {
    const file = path.join(root, 'bad.json');
    writeFileSync(file, '[\n {"id": "a", "conversations": []},\n {"id": "b" "conversations": []}\n]\n');
    const r = await checkDataset({ records: file, boxes: boxesFile, images, text });
    expect(r.bad).toEqual([
      expect.objectContaining({ file, line: 2, id: 'a', kind: 'empty_conversation' }),
      expect.objectContaining({ file, line: 3, column: 13, kind: 'malformed_json', id: null }),
    ]);
    expect(r.total).toBe(2);
    writeFileSync(file, '[\n {"id": "a", "conversations": []}\n {"id": "b", "conversations": []}\n]\n');
    const s = await checkDataset({ records: file, boxes: boxesFile, images, text });
    expect(s.bad).toEqual([expect.objectContaining({ file, line: 3, column: 2, kind: 'malformed_json', id: null })]);
    expect(s.total).toBe(0);
  });
});
