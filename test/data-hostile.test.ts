// Issue 12 (g) and the data-side "one clear line" items: endless or huge inputs are bounded, and missing /
// wrong paths, an image deleted mid-run, a skip report in a missing folder, unbounded image workers are one
// MgllavaError line naming the file (and record), never a stack trace; skipping says how many on the console.
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { failure } from './hostile-helpers.js';
import { loadDataset } from '../src/data/dataset.js';
import { imageWorkerCount, ImageWorkerPool } from '../src/data/image-pool.js';
import { jsonItems, JsonSyntaxError } from '../src/data/json.js';
import { loadBoxes, loadRecords } from '../src/data/records.js';
import { getTemplate } from '../src/data/templates.js';
import { loadTokenizer } from '../src/data/tokenizer.js';
import { DataError } from '../src/errors.js';
import { runCli } from './cli-harness.js';

const root = mkdtempSync(path.join(tmpdir(), 'mgllava-hostile-'));
const images = path.join(root, 'images');
const records = path.join(root, 'records.jsonl');
const boxes = path.join(root, 'boxes.json');
afterAll(() => rmSync(root, { recursive: true, force: true }));

const qa = (q: string) => [
  { from: 'human', value: q },
  { from: 'gpt', value: 'red' },
];

beforeAll(async () => {
  mkdirSync(images);
  for (const n of ['a', 'b', 'c']) {
    await sharp({ create: { width: 24, height: 16, channels: 3, background: { r: 200, g: 10, b: 10 } } }).png().toFile(path.join(images, `${n}.png`));
  }
  writeFileSync(records, ['a', 'b', 'c'].map((id) => JSON.stringify({ id, image: `${id}.png`, conversations: qa('<image>\nwhat color ?') })).join('\n') + '\n');
  writeFileSync(boxes, JSON.stringify({ a: { boxes: [[1, 1, 10, 10]], labels: ['x'], scores: [0.9] }, b: { boxes: [[1, 1, 10, 10]], labels: ['x'], scores: [0.9] } }));
});


const text = async (maxLength = 64) => ({ template: getTemplate('vicuna'), tokenizer: await loadTokenizer({ type: 'byte' }), maxLength });

describe('endless and huge inputs are bounded', () => {
  it('--records /dev/zero (a device) is refused at once, in the CLI with one line', async () => {
    const e = await failure(loadRecords('/dev/zero'));
    expect(e).toBeInstanceOf(DataError);
    expect(e.message).toBe('/dev/zero: the records file is a device or socket, not a file');
    await failure(loadBoxes('/dev/urandom'));
    const r = await runCli(['data', 'check', '--records', '/dev/zero', '--boxes', boxes, '--images', images, '--tokenizer', 'byte']);
    expect(r.code).toBe(4);
    expect(r.err.trim()).toBe('mgllava: /dev/zero: the records file is a device or socket, not a file');
  });

  it('a line without end or an item past the bound is a located error, not a growing heap', async () => {
    const limits = { maxItemChars: 1000, maxFileChars: 1 << 30 };
    async function* endless(piece: string) {
      for (;;) yield piece;
    }
    const drain = async (format: 'lines' | 'auto', piece: string) => {
      for await (const item of jsonItems({ chunks: endless(piece) }, 'f.jsonl', format, undefined, limits)) void item;
    };
    const line = await drain('lines', '\0\0\0\0\0\0\0').catch((e: unknown) => e);
    expect(line).toBeInstanceOf(JsonSyntaxError);
    expect((line as Error).message).toBe('f.jsonl:1:1: malformed JSON: line 1 is longer than 1000 characters (not a JSON file, or no line breaks?)');
    const item = await drain('auto', '[{"a": "').then(() => null, (e: unknown) => e);
    expect((item as Error).message).toMatch(/item starting at line 1 is longer than 1000 characters/);
    // valid lines, forever: the total bound stops it
    const total = await (async () => {
      for await (const x of jsonItems({ chunks: endless('{"id": 1}\n') }, 'f.jsonl', 'lines', undefined, { maxItemChars: 100, maxFileChars: 10_000 })) void x;
    })().catch((e: unknown) => e);
    expect(total).toBeInstanceOf(DataError);
    expect((total as Error).message).toBe('f.jsonl: more than 10000 characters: refusing to read on (an endless stream?)');
  });

  it('a pipe fed from /dev/zero (no newline, endless) stops at the line bound', async () => {
    const fifo = path.join(root, 'endless.jsonl');
    if (spawnSync('mkfifo', [fifo]).status !== 0) return; // no mkfifo: covered by the in-memory case above
    const writer = spawn('sh', ['-c', `cat /dev/zero > '${fifo}'`], { stdio: 'ignore' });
    try {
      const r = await loadRecords(fifo);
      // a line that never ends is one malformed record: the file cannot be split into records
      expect(r.records).toEqual([]);
      expect(r.bad).toEqual([expect.objectContaining({ kind: 'malformed_json', line: 1 })]);
      expect(r.bad[0]!.reason).toMatch(/line 1 is longer than 64 Mi characters/);
    } finally {
      writer.kill();
    }
  });
});

describe('wrong paths: one line naming the file', () => {
  it('missing records or box file, a records path that is a directory (training path and CLI)', async () => {
    const o = { records, boxes, images, text: await text(), auxSize: 16, lowresSize: 8, log: () => undefined };
    const missing = path.join(root, 'nope.jsonl');
    expect((await failure(loadDataset({ ...o, records: missing }))).message).toBe(`${missing}: reading the records file: no such file or directory`);
    expect((await failure(loadDataset({ ...o, boxes: path.join(root, 'nope.json') }))).message).toMatch(/nope\.json: reading the box file: no such file or directory/);
    expect((await failure(loadDataset({ ...o, records: images }))).message).toBe(`${images}: the records file is a directory; give the JSON file inside it`);
    const cli = await runCli(['data', 'check', '--records', images, '--boxes', boxes, '--images', images, '--tokenizer', 'byte']);
    expect([cli.code, cli.err.trim().split('\n').length]).toEqual([4, 1]);
    const cli2 = await runCli(['data', 'check', '--records', records, '--boxes', boxes, '--images', path.join(root, 'no-images'), '--tokenizer', 'byte']);
    expect(cli2.err.trim()).toMatch(/^mgllava: .*no-images: opening the image folder: no such file or directory$/);
  });

  it('a skip report in a missing folder is refused before the check runs', async () => {
    const report = path.join(root, 'missing-dir', 'skipped.jsonl');
    const o = { records, boxes, images, text: await text(), auxSize: 16, lowresSize: 8, skipBadReport: report, log: () => undefined };
    const e = await failure(loadDataset(o));
    expect(e.message).toMatch(/missing-dir: the folder of the skip report \(data\.skip_bad\) .*skipped\.jsonl: no such file or directory/);
    const cli = await runCli(['data', 'check', '--records', records, '--boxes', boxes, '--images', images, '--tokenizer', 'byte', '--skip-bad', report]);
    expect(cli.code).toBe(4);
    expect(cli.out).toBe(''); // nothing was checked
    expect(cli.err.trim().split('\n')).toHaveLength(1);
  });

  it('skipping says on the console how many records were skipped', async () => {
    const lines: string[] = [];
    const report = path.join(root, 'skipped.jsonl');
    const { dataset } = await loadDataset({ records, boxes, images, text: await text(), auxSize: 16, lowresSize: 8, skipBadReport: report, log: (l) => lines.push(l) });
    expect(dataset.size).toBe(2); // c has no box entry
    expect(lines).toContain(`data: skipped 1 of 3 records of ${records} (1 problem(s)); report: ${report}`);
    expect(readFileSync(report, 'utf8')).toContain('"id":"c"');
  });

  it('an image deleted after the check names the record and the file', async () => {
    const dir = path.join(root, 'midrun');
    mkdirSync(dir);
    await sharp({ create: { width: 8, height: 8, channels: 3, background: { r: 1, g: 2, b: 3 } } }).png().toFile(path.join(dir, 'a.png'));
    const recs = path.join(dir, 'r.jsonl');
    writeFileSync(recs, `${JSON.stringify({ id: 'only', image: 'a.png', conversations: qa('<image>\nq') })}\n`);
    const bx = path.join(dir, 'b.json');
    writeFileSync(bx, JSON.stringify({ only: { boxes: [[1, 1, 4, 4]], labels: ['x'], scores: [1] } }));
    const { dataset } = await loadDataset({ records: recs, boxes: bx, images: dir, text: await text(), auxSize: 16, lowresSize: 8, log: () => undefined });
    unlinkSync(path.join(dir, 'a.png'));
    const e = await failure(dataset.get(0));
    expect(e).toBeInstanceOf(DataError);
    expect(e.message).toBe(`${recs}: record "only": ${path.join(dir, 'a.png')}: image file not found`);
    expect(e.hint).toMatch(/moved, deleted or rewritten/);
    // the same through the worker pool (training's default path)
    await sharp({ create: { width: 8, height: 8, channels: 3, background: { r: 1, g: 2, b: 3 } } }).png().toFile(path.join(dir, 'a.png'));
    const pool = new ImageWorkerPool(1);
    try {
      const viaPool = await loadDataset({ records: recs, boxes: bx, images: dir, text: await text(), auxSize: 16, lowresSize: 8, log: () => undefined, prepare: (f, o) => pool.prepare(f, o) });
      unlinkSync(path.join(dir, 'a.png'));
      expect((await failure(viaPool.dataset.get(0))).message).toBe(e.message);
    } finally {
      await pool.close();
    }
  });
});

describe('data.image_workers', () => {
  it('is capped at the cores with a warning', () => {
    const warned: string[] = [];
    expect(imageWorkerCount(64, (l) => warned.push(l), 2)).toBe(2);
    expect(warned).toEqual(['warning: data.image_workers = 64 is more than the 2 cores of this machine: using 2']);
    expect(imageWorkerCount(1, (l) => warned.push(l), 2)).toBe(1);
    expect(warned).toHaveLength(1);
  });

  it('a pool asked for 1000 workers starts one per core', async () => {
    const pool = new ImageWorkerPool(1000, () => undefined);
    try {
      expect(pool.size).toBe(availableParallelism());
    } finally {
      await pool.close();
    }
  });
});
