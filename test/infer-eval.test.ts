import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXIT } from '../src/errors.js';
import type { ExperimentConfig } from '../src/config/schema.js';
import { getTemplate } from '../src/data/templates.js';
import { loadTokenizer, type TextTokenizer } from '../src/data/tokenizer.js';
import { runEval, score, type Prediction } from '../src/infer/eval.js';
import { answersMatch, normalizeAnswer } from '../src/infer/normalize.js';
import type { MGLLaVA } from '../src/model/mgllava.js';
import { runCli } from './cli-harness.js';
import { makeTinyRun } from './infer-fixtures.js';

describe('normalizeAnswer', () => {
  it('lower-cases, drops punctuation at word edges and articles, collapses whitespace', () => {
    expect(normalizeAnswer('The Red.')).toBe('red');
    expect(normalizeAnswer('  red  ')).toBe('red');
    expect(normalizeAnswer('"red" !')).toBe('red');
    expect(normalizeAnswer('a  large\nred   square .')).toBe('large red square');
    expect(normalizeAnswer('3.5')).toBe('3.5');
    expect(normalizeAnswer("don't, t-shirt")).toBe("don't t-shirt");
    expect(normalizeAnswer('ＲＥＤ')).toBe('red'); // NFKC
    expect(normalizeAnswer('an')).toBe('');
    expect(answersMatch('Triangle.', 'triangle')).toBe(true);
    expect(answersMatch('red square', 'red')).toBe(false);
    expect(answersMatch('3.5', '35')).toBe(false);
    expect(answersMatch('another', 'other')).toBe(false);
  });

  it('scores overall and per category', () => {
    const p = (category: string | null, correct: boolean): Prediction => ({ id: 'x', category, question: '', answer: '', prediction: '', correct });
    const s = score([p('a', true), p('a', false), p('b', true), p(null, false)]);
    expect(s).toEqual({
      accuracy: 0.5,
      correct: 2,
      count: 4,
      byCategory: { '(none)': { accuracy: 0, correct: 0, count: 1 }, a: { accuracy: 0.5, correct: 1, count: 2 }, b: { accuracy: 1, correct: 1, count: 1 } },
    });
  });
});

describe('eval', () => {
  let dir: string;
  let data: string;
  let runDir: string;
  let config: ExperimentConfig;
  let model: MGLLaVA;
  let tokenizer: TextTokenizer;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'mgllava-eval-'));
    ({ data, runDir, config, model } = await makeTinyRun(dir));
    tokenizer = await loadTokenizer(config.data.tokenizer);
  });

  afterAll(async () => {
    model.dispose();
    await rm(dir, { recursive: true, force: true });
  });

  const evalWith = (records: string, out: string, batchSize = 4) =>
    runEval({
      model,
      tokenizer,
      template: getTemplate('vicuna'),
      records,
      images: path.join(data, 'images'),
      boxes: path.join(data, 'boxes.json'),
      out,
      batchSize,
    });

  const readJsonl = async (file: string) => (await readFile(file, 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as Prediction);

  it('CLI: --json summary agrees with the predictions file; the images are encoded once each', async () => {
    const out = path.join(dir, 'cli-preds.jsonl');
    const r = await runCli(['eval', runDir, '--records', path.join(data, 'eval.json'), '--json', '--batch-size', '5', '--out', out, '--backend', 'wasm']);
    expect(r.code).toBe(0);
    const summary = JSON.parse(r.out) as { accuracy: number; count: number; correct: number; byCategory: Record<string, { accuracy: number; correct: number; count: number }>; predictions: string; step: number };
    expect(summary.count).toBe(12); // 4 images x 3 categories
    expect(summary.step).toBe(5);
    expect(summary.predictions).toBe(out);
    const preds = await readJsonl(out);
    const records = JSON.parse(await readFile(path.join(data, 'eval.json'), 'utf8')) as { id: string; category: string; conversations: { value: string }[] }[];
    expect(preds.map((p) => p.id)).toEqual(records.map((r) => r.id)); // file order, not processing order
    for (const [i, p] of preds.entries()) {
      expect(Object.keys(p)).toEqual(['id', 'category', 'question', 'answer', 'prediction', 'correct']);
      expect(p.category).toBe(records[i]!.category);
      expect(p.answer).toBe(records[i]!.conversations[1]!.value);
      expect(p.question).toBe(records[i]!.conversations[0]!.value.replace('<image>\n', ''));
      expect(p.correct).toBe(answersMatch(p.prediction, p.answer));
    }
    expect(summary.correct).toBe(preds.filter((p) => p.correct).length);
    expect(summary.accuracy).toBeCloseTo(summary.correct / 12, 12);
    expect(Object.keys(summary.byCategory).sort()).toEqual(['large_color', 'large_shape', 'small_color']);
    for (const [c, s] of Object.entries(summary.byCategory)) {
      expect(s.count).toBe(4);
      expect(s.correct).toBe(preds.filter((p) => p.category === c && p.correct).length);
    }
    // the model loaded from the run dir answers as the in-memory one, whatever the batch size
    const direct = await evalWith(path.join(data, 'eval.json'), path.join(dir, 'direct.jsonl'), 1);
    expect(direct.images).toBe(4);
    expect((await readJsonl(path.join(dir, 'direct.jsonl'))).map((p) => p.prediction)).toEqual(preds.map((p) => p.prediction));
  });

  it('counts matches after normalisation: references set to the predictions score exactly as planned', async () => {
    const first = path.join(dir, 'first.jsonl');
    await evalWith(path.join(data, 'eval.json'), first);
    const preds = await readJsonl(first);
    const records = JSON.parse(await readFile(path.join(data, 'eval.json'), 'utf8')) as { id: string; category: string; conversations: { from: string; value: string }[] }[];
    // small_color: every answer becomes the prediction written differently (case, article, final period);
    // large_color: the first one only; large_shape: answers that can never be produced.
    const changed = records.map((r, i) => {
      const p = preds[i]!.prediction;
      let answer = r.conversations[1]!.value;
      if (r.category === 'small_color') answer = `The ${p.toUpperCase()}.`;
      else if (r.category === 'large_color' && r.id.startsWith('eval-00000')) answer = p;
      else if (r.category === 'large_shape') answer = 'zzz never';
      return { ...r, conversations: [r.conversations[0], { from: 'gpt', value: answer }] };
    });
    const file = path.join(dir, 'planned.json');
    await writeFile(file, JSON.stringify(changed));
    const s = await evalWith(file, path.join(dir, 'planned.jsonl'));
    expect(s.byCategory.small_color).toEqual({ accuracy: 1, correct: 4, count: 4 });
    expect(s.byCategory.large_shape).toEqual({ accuracy: 0, correct: 0, count: 4 });
    expect(s.byCategory.large_color!.correct).toBeGreaterThanOrEqual(1);
    expect(s.count).toBe(12);
  });

  it('multi-turn records: only the first exchange is asked; text-only records need no image; no leak', async () => {
    const file = path.join(dir, 'mixed.jsonl');
    const rows = [
      { id: 'm1', image: 'eval-00001.png', category: 'multi', conversations: [{ from: 'human', value: '<image>\nwhat color is the large square ?' }, { from: 'gpt', value: 'red' }, { from: 'human', value: 'and ?' }, { from: 'gpt', value: 'blue' }] },
      { id: 't1', category: 'text', conversations: [{ from: 'human', value: 'what shape ?' }, { from: 'gpt', value: 'circle' }] },
    ];
    await writeFile(file, rows.map((r) => JSON.stringify(r)).join('\n'));
    await writeFile(path.join(dir, 'mixed-boxes.json'), JSON.stringify({ m1: JSON.parse(await readFile(path.join(data, 'boxes.json'), 'utf8'))['eval-00001-small_color'] }));
    const before = tf.memory().numTensors;
    const s = await runEval({ model, tokenizer, template: getTemplate('vicuna'), records: file, images: path.join(data, 'images'), boxes: path.join(dir, 'mixed-boxes.json'), out: path.join(dir, 'mixed-out.jsonl') });
    expect(tf.memory().numTensors).toBe(before); // visual tokens freed after their last question
    const preds = await readJsonl(path.join(dir, 'mixed-out.jsonl'));
    expect(preds.map((p) => [p.id, p.question, p.answer])).toEqual([['m1', 'what color is the large square ?', 'red'], ['t1', 'what shape ?', 'circle']]);
    expect(s.images).toBe(1);
  });

  it('bad inputs name the file and the record', async () => {
    const before = tf.memory().numTensors;
    const records = JSON.parse(await readFile(path.join(data, 'eval.json'), 'utf8')) as object[];
    const missing = path.join(dir, 'missing-image.json');
    await writeFile(missing, `[\n${JSON.stringify(records[0])},\n${JSON.stringify({ ...records[1], image: 'nope.png' })}\n]`);
    await expect(evalWith(missing, path.join(dir, 'x.jsonl'))).rejects.toThrow(/missing-image\.json:3: record "eval-00000-large_color": .*nope\.png: image file not found/);
    const malformed = path.join(dir, 'malformed.json');
    await writeFile(malformed, `[\n${JSON.stringify(records[0])},\n{"id": "oops", "image": }\n]`);
    await expect(evalWith(malformed, path.join(dir, 'x.jsonl'))).rejects.toThrow(/malformed\.json:3:\d+: record \?: malformed_json/);
    const noBoxes = path.join(dir, 'no-boxes.json');
    await writeFile(noBoxes, JSON.stringify([{ ...records[0], id: 'fresh-id' }]));
    await expect(evalWith(noBoxes, path.join(dir, 'x.jsonl'))).rejects.toThrow(/no-boxes\.json:1: record "fresh-id": no box entry for this id in .*boxes\.json/);
    await expect(
      runEval({ model, tokenizer, template: getTemplate('vicuna'), records: path.join(data, 'eval.json'), images: null, boxes: null, out: path.join(dir, 'x.jsonl') }),
    ).rejects.toThrow(/give a box file/);
    // an undecodable image fails during the run, naming the record; nothing leaks
    const broken = path.join(data, 'images', 'broken.png');
    await writeFile(broken, 'not a png');
    const bad = path.join(dir, 'broken.json');
    await writeFile(bad, JSON.stringify([{ ...records[0], image: 'broken.png' }]));
    await expect(evalWith(bad, path.join(dir, 'x.jsonl'))).rejects.toThrow(/record "eval-00000-small_color" .*broken\.png: cannot decode image/);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('CLI errors are one line on stderr with the exit code of their category', async () => {
    const noRun = await runCli(['eval', path.join(dir, 'nowhere'), '--records', path.join(data, 'eval.json'), '--backend', 'wasm']);
    expect(noRun.code).toBe(EXIT.run);
    const noRecords = await runCli(['eval', runDir, '--records', path.join(dir, 'none.json'), '--backend', 'wasm']);
    expect(noRecords.code).toBe(EXIT.data);
    expect(noRun.err).toMatch(/nowhere: no such file or directory/);
    expect(noRecords.err).toMatch(/eval records not found: .*none\.json/);
  });
});
