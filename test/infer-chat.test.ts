import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXIT } from '../src/errors.js';
import { IMAGE_TOKEN_INDEX as IMG } from '../src/data/constants.js';
import { buildChatPrompt } from '../src/data/conversation.js';
import { loadTokenizer } from '../src/data/tokenizer.js';
import { ByteTokenizer } from '../src/data/tokenizers/byte.js';
import { getTemplate } from '../src/data/templates.js';
import { findBoxEntry } from '../src/infer/box-entry.js';
import { ChatLengthError, ChatSession } from '../src/infer/chat.js';
import { disposeVisual, loadImageInput, visualTokensFor } from '../src/infer/visual.js';
import { MGLLaVA } from '../src/model/mgllava.js';
import { Rng } from '../src/util/rng.js';
import { runCli } from './cli-harness.js';
import { makeTinyRun, randomImage, tinyConfig, type TinyRun } from './infer-fixtures.js';

describe('ChatSession', () => {
  const tok = new ByteTokenizer(); // 259 ids: the model needs as many
  let model: MGLLaVA;
  beforeAll(() => {
    const c = tinyConfig();
    model = new MGLLaVA({ ...c, llm: { ...c.llm, vocabSize: 259 } }, { rng: new Rng(2) });
  });
  afterAll(() => model.dispose());

  it('puts the image at the start of the first message and re-encodes the history as training does', async () => {
    const [visual] = visualTokensFor(model, [randomImage(1)]);
    const template = getTemplate('phi3_chat');
    const s = new ChatSession({ model, tokenizer: tok, template, visual: visual!, maxNewTokens: 3 });
    const first = s.promptIds('what <image>color?');
    expect(first).toEqual(buildChatPrompt(template, [], '<image>\nwhat color?', { tokenizer: tok }));
    expect(first.filter((id) => id === IMG).length).toBe(1);
    const a = await s.ask('what color?');
    expect(a.ids.length).toBeGreaterThan(0);
    expect(s.turns).toEqual([{ user: 'what color?', assistant: a.text }]);
    const second = s.promptIds('and the shape?');
    expect(second).toEqual(buildChatPrompt(template, [{ user: '<image>\nwhat color?', assistant: a.text }], 'and the shape?', { tokenizer: tok }));
    expect(second.filter((id) => id === IMG).length).toBe(1);
    await s.ask('and the shape?');
    expect(s.turns.length).toBe(2);
    s.reset();
    expect(s.turns).toEqual([]);
    expect(s.promptIds('what color?')).toEqual(first);
    // a system text goes into the first turn; an interrupted answer is not kept
    const sys = new ChatSession({ model, tokenizer: tok, template, visual: null, system: 'be brief', maxNewTokens: 3, temperature: 0.8, rng: new Rng(1) });
    expect(sys.promptIds('hi')).toEqual(buildChatPrompt(template, [], 'hi', { tokenizer: tok, system: 'be brief' }));
    const ac = new AbortController();
    ac.abort();
    expect((await sys.ask('hi', { signal: ac.signal })).finish).toBe('aborted');
    expect(sys.turns).toEqual([]);
    disposeVisual(visual!);
  });

  it('refuses a turn that would outgrow the trained context (image and object tokens counted), history kept', async () => {
    const [visual] = visualTokensFor(model, [randomImage(3)]);
    const template = getTemplate('vicuna');
    const probe = new ChatSession({ model, tokenizer: tok, template, visual: visual!, maxNewTokens: 2 });
    const ids = probe.promptIds('hi');
    const extra = visual!.image.shape[0] + (visual!.objects?.shape[0] ?? 0) - 1;
    expect(probe.positions(ids)).toBe(ids.length + extra);
    const need = ids.length + extra + 2;
    const fits = new ChatSession({ model, tokenizer: tok, template, visual: visual!, maxNewTokens: 2, maxLength: need });
    expect((await fits.ask('hi')).ids.length).toBeGreaterThan(0);
    // The second turn carries the first one: it no longer fits, and the refusal changes nothing.
    await expect(fits.ask('hi')).rejects.toThrow(ChatLengthError);
    await expect(fits.ask('hi')).rejects.toThrow(/data\.max_length/);
    expect(fits.turns.length).toBe(1);
    const tight = new ChatSession({ model, tokenizer: tok, template, visual: visual!, maxNewTokens: 2, maxLength: need - 1 });
    await expect(tight.ask('hi')).rejects.toThrow(new RegExp(`needs ${ids.length + extra} prompt positions \\+ 2 new tokens, more than the ${need - 1}`));
    disposeVisual(visual!);
  });

  it('without a fixed budget the answer gets what fits in the trained context (at most the cap); a full context is refused', async () => {
    const template = getTemplate('vicuna');
    const probe = new ChatSession({ model, tokenizer: tok, template, visual: null, maxNewTokens: 2 });
    const prompt = probe.positions(probe.promptIds('hi'));
    // Room for 3 tokens: the budget is 3 although the cap is 256 (the README's chat example on a 128-position run).
    const roomy = new ChatSession({ model, tokenizer: tok, template, visual: null, maxNewTokens: { fit: 256 }, maxLength: prompt + 3 });
    const g = await roomy.ask('hi');
    expect(g.ids.length).toBeGreaterThan(0);
    expect(g.ids.length).toBeLessThanOrEqual(3);
    // The cap still holds with room to spare.
    const capped = new ChatSession({ model, tokenizer: tok, template, visual: null, maxNewTokens: { fit: 2 }, maxLength: prompt + 50 });
    expect((await capped.ask('hi')).ids.length).toBeLessThanOrEqual(2);
    const full = new ChatSession({ model, tokenizer: tok, template, visual: null, maxNewTokens: { fit: 256 }, maxLength: prompt });
    await expect(full.ask('hi')).rejects.toThrow(/no room for an answer; \/reset the history/);
  });

  it('sampled answers are reproducible from the seed', async () => {
    const before = tf.memory().numTensors;
    const ask = async (seed: number) => {
      const s = new ChatSession({ model, tokenizer: tok, template: getTemplate('vicuna'), visual: null, maxNewTokens: 6, temperature: 1, topP: 0.9, rng: new Rng(seed) });
      return [(await s.ask('hello')).ids, (await s.ask('again')).ids];
    };
    expect(await ask(3)).toEqual(await ask(3));
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('findBoxEntry', () => {
  let dir: string;
  const e = (x: number) => ({ boxes: [[x, x, x + 10, x + 10]], labels: ['cat'], scores: [0.9] });
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'mgllava-boxes-'));
    await writeFile(path.join(dir, 'keyed.json'), JSON.stringify({ 'a.png': e(1), b: e(2), 'c-q1': e(3), 'c-q2': e(3), bad: { boxes: [[1, 2, 3]], labels: ['x'], scores: [1] } }));
    await writeFile(path.join(dir, 'single.json'), JSON.stringify(e(5)));
    await writeFile(path.join(dir, 'broken.json'), '{"a.png": {"boxes": [[1,2,3,4]], "labels": ["x"], "scores": [1]}');
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('finds the entry by file name, stem or --box-id; a single-entry file is used as is', async () => {
    const keyed = path.join(dir, 'keyed.json');
    expect(await findBoxEntry(keyed, '/x/a.png')).toEqual({ entry: e(1), key: 'a.png' });
    expect(await findBoxEntry(keyed, 'imgs/b.jpg')).toEqual({ entry: e(2), key: 'b' });
    expect(await findBoxEntry(keyed, 'c.png', 'c-q2')).toEqual({ entry: e(3), key: 'c-q2' });
    expect((await findBoxEntry(path.join(dir, 'single.json'), 'whatever.png')).entry).toEqual(e(5));
  });

  it('errors name the file, the keys tried and near matches', async () => {
    const keyed = path.join(dir, 'keyed.json');
    await expect(findBoxEntry(keyed, 'c.png')).rejects.toThrow(/keyed\.json has no entry "c\.png" or "c"; name one with --box-id \(e\.g\. c-q1, c-q2\)/);
    await expect(findBoxEntry(keyed, 'x.png', 'bad')).rejects.toThrow(/entry "bad": boxes\[0\] must be/);
    await expect(findBoxEntry(path.join(dir, 'broken.json'), 'a.png')).rejects.toThrow(/broken\.json.*malformed JSON|broken\.json.*end of input/);
    await expect(findBoxEntry(path.join(dir, 'single.json'), 'a.png', 'k')).rejects.toThrow(/single entry/);
    await expect(findBoxEntry(path.join(dir, 'none.json'), 'a.png')).rejects.toThrow(/none\.json: not found/);
  });
});

describe('mgllava chat', () => {
  let dir: string;
  let run: TinyRun;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'mgllava-chat-'));
    run = await makeTinyRun(dir);
  });
  afterAll(async () => {
    run.model.dispose();
    await rm(dir, { recursive: true, force: true });
  });

  const capture = (argv: string[]) => runCli([...argv, '--backend', 'wasm']);

  it('answers one prompt about an image with its boxes (streamed), as generate does', async () => {
    const image = path.join(run.data, 'images', 'eval-00002.png');
    const boxes = path.join(run.data, 'boxes.json');
    const r = await capture(['chat', run.runDir, '--image', image, '--boxes', boxes, '--box-id', 'eval-00002-small_color', '--max-new-tokens', '6', 'what color is the small circle ?']);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    // the same answer from the in-memory model
    const tokenizer = await loadTokenizer(run.config.data.tokenizer);
    const entry = (await findBoxEntry(boxes, image, 'eval-00002-small_color')).entry;
    const [visual] = visualTokensFor(run.model, [await loadImageInput(run.model, image, entry)]);
    const s = new ChatSession({ model: run.model, tokenizer, template: getTemplate('vicuna'), visual: visual!, maxNewTokens: 6 });
    const g = await s.ask('what color is the small circle ?');
    disposeVisual(visual!);
    expect(r.out).toBe(`${g.text}\n`);
    // without boxes: a note, the dummy box; a text-only question needs no image
    const n = await capture(['chat', run.runDir, '--image', image, '--max-new-tokens', '2', 'hi']);
    expect(n.code).toBe(0);
    expect(n.err).toMatch(/no --boxes: .*eval-00002\.png gets the dummy box/);
    expect((await capture(['chat', run.runDir, '--max-new-tokens', '2', '--temperature', '0.7', '--seed', '3', 'hi'])).code).toBe(0);
  });

  it('reports bad arguments as user errors', async () => {
    const image = path.join(run.data, 'images', 'eval-00002.png');
    // [argv, message, exit code of its category (src/errors.ts EXIT)]
    const cases: [string[], RegExp, number][] = [
      [['chat', run.runDir, '--image', path.join(dir, 'nope.png'), 'q'], /image not found: .*nope\.png/, EXIT.data],
      [['chat', run.runDir, '--image', image, '--boxes', path.join(run.data, 'boxes.json'), 'q'], /has no entry "eval-00002\.png" or "eval-00002"; name one with --box-id \(e\.g\. eval-00002-small_color/, EXIT.data],
      [['chat', run.runDir, '--top-p', '0', 'q'], /--top-p must be in \(0, 1\]/, EXIT.usage],
      [['chat', path.join(dir, 'missing-run'), 'q'], /missing-run: no such file or directory/, EXIT.run],
      [['chat', run.runDir, '--step', '7', 'q'], /no complete checkpoint for step 7 \(has: 5\)/, EXIT.run],
    ];
    for (const [argv, re, code] of cases) {
      const r = await capture(argv);
      expect(r.code, argv.join(' ')).toBe(code);
      expect(r.err).toMatch(re);
      expect(r.err.trim().split('\n').length, r.err).toBe(1);
    }
  });

  it('REPL: multi-turn from piped stdin, /reset and /exit', async () => {
    const bin = path.resolve('bin/mgllava.js');
    const image = path.join(run.data, 'images', 'eval-00001.png');
    const res = spawnSync(process.execPath, [bin, 'chat', run.runDir, '--image', image, '--max-new-tokens', '3'], {
      input: 'what color is the large square ?\nand the shape ?\n/reset\n/nope\nwhat color is the large square ?\n/exit\nnever asked\n',
      env: { ...process.env, MGLLAVA_BACKEND: 'wasm' },
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(res.status, res.stderr).toBe(0);
    const answers = res.stdout.split('\n').slice(0, -1);
    expect(answers.length).toBe(3); // three questions before /exit
    expect(answers[2]).toBe(answers[0]); // after /reset the first question is asked afresh
    expect(res.stderr).toMatch(/\(history cleared\)/);
    expect(res.stderr).toMatch(/unknown command \/nope/);
  });
});
