/**
 * Red-team sweep, round 3 (issue 12): images (truncated, animated, odd pixel formats), box files, and the
 * picture outputs of data show / chat. Each case failed before its fix (or pins a data-loss refusal).
 */
import { existsSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';
import { beforeAll, describe, expect, it } from 'vitest';
import { failure } from './hostile-helpers.js';
import { expectOneLineError, runCli } from './cli-harness.js';
import { tempRoot } from './temp-root.js';
import { decodeImage, readImageHeader } from '../src/data/image.js';
import { EXIT, MgllavaError } from '../src/errors.js';
import { getTemplate } from '../src/data/templates.js';
import { runEval } from '../src/infer/eval.js';
import { makeTinyRun, tinyModel, WordTokenizer } from './infer-fixtures.js';
import { loadRunModel } from '../src/model/factory.js';
import { collector, makeTinyTrainSetup } from './train-fixture.js';
import { train } from '../src/train/trainer.js';
import { buildWarmupData } from '../src/train/warmup-data.js';
import { synthDataset } from '../src/data/synth.js';
import { loadConfig } from '../src/config/load.js';
import { modelConfigFrom } from '../src/config/build-model.js';

const tmp = tempRoot('hostile3');

/** images/ with a good PNG, a second user picture and a truncated JPEG; records and boxes for them. */
let dir: string;
let images: string;
let base: string[];
beforeAll(async () => {
  dir = await tmp.fresh('data');
  images = path.join(dir, 'images');
  mkdirSync(images);
  const solid = (r: number) => sharp({ create: { width: 32, height: 24, channels: 3, background: { r, g: 40, b: 40 } } });
  await solid(200).png().toFile(path.join(images, 'a.png'));
  await solid(20).png().toFile(path.join(images, 'b.png'));
  const jpeg = await solid(90).jpeg().toBuffer();
  writeFileSync(path.join(images, 'cut.jpg'), jpeg.subarray(0, 200)); // a download that stopped early
  const rec = (id: string, image: string) => ({ id, image, conversations: [{ from: 'human', value: '<image>\nq' }, { from: 'gpt', value: 'x' }] });
  writeFileSync(path.join(dir, 'r.jsonl'), [rec('a', 'a.png'), rec('b', 'b.png'), rec('cut', 'cut.jpg'), rec('bad', 'a.png')].map((r) => JSON.stringify(r)).join('\n') + '\n');
  const box = { boxes: [[2, 2, 20, 20]], labels: ['p'], scores: [0.9] };
  writeFileSync(path.join(dir, 'b.json'), JSON.stringify({ a: box, b: box, cut: box, bad: { boxes: [['2', '2', '20', '20']], labels: ['p'], scores: [1] } }));
  base = ['--records', path.join(dir, 'r.jsonl'), '--boxes', path.join(dir, 'b.json'), '--images', images, '--tokenizer', 'byte', '--max-length', '64', '--aux-size', '32', '--lowres-size', '28'];
});

describe('images', () => {
  it('a truncated JPEG is one line (libvips repeated its warning over several lines)', async () => {
    const file = path.join(images, 'cut.jpg');
    for (const work of [() => readImageHeader(file), () => decodeImage(file)]) {
      const e = await failure(work);
      expect(e.exitCode).toBe(EXIT.data);
      expect(e.message).toContain('cut.jpg');
      expect(e.message.match(/premature end of JPEG/g) ?? []).toHaveLength(1);
    }
    const r = await runCli(['data', 'show', 'cut', ...base]);
    expect(expectOneLineError(r)).toMatch(/record "cut".*cut\.jpg: cannot decode image/);
    expect(r.code).toBe(EXIT.data);
  });
});

describe('data show', () => {
  it('a bad box entry names the box file and is a data error (it named neither, exit 1)', async () => {
    const r = await runCli(['data', 'show', 'bad', ...base]);
    expect(expectOneLineError(r)).toContain(`${path.join(dir, 'b.json')}: record "bad": boxes[0] has a non-number coordinate`);
    expect(r.code).toBe(EXIT.data);
  });

  it('--save-image never replaces an existing file without --overwrite (another record\'s image was overwritten)', async () => {
    const other = path.join(images, 'b.png');
    const before = readFileSync(other);
    const r = await runCli(['data', 'show', 'a', ...base, '--save-image', other]);
    expect(expectOneLineError(r)).toMatch(/--save-image .*b\.png exists: pass --overwrite/);
    expect(r.out).toBe('');
    expect(readFileSync(other).equals(before)).toBe(true);
    const view = path.join(dir, 'view.png');
    writeFileSync(view, 'old');
    const ok = await runCli(['data', 'show', 'a', ...base, '--save-image', view, '--overwrite']);
    expect(ok.code).toBe(0);
    expect((await sharp(view).metadata()).format).toBe('png');
  });
});

describe('chat', () => {
  it('--show-boxes never replaces an existing file without --overwrite, refused before the run is opened', async () => {
    const other = path.join(images, 'b.png');
    const before = readFileSync(other);
    const r = await runCli(['chat', path.join(dir, 'no-run'), 'q', '--image', path.join(images, 'a.png'), '--show-boxes', other]);
    expect(expectOneLineError(r)).toMatch(/--show-boxes .*b\.png exists: pass --overwrite/);
    expect(readFileSync(other).equals(before)).toBe(true);
  });
});

describe('eval', () => {
  it('a reference answer that is empty once normalised is refused before generating (an empty prediction scored as correct)', async () => {
    const d = await tmp.fresh('eval');
    const rec = (id: string, answer: string) => ({ id, category: 'c', conversations: [{ from: 'human', value: 'w3 w4' }, { from: 'gpt', value: answer }] });
    const records = path.join(d, 'eval.jsonl');
    writeFileSync(records, [rec('empty', ''), rec('dot', ' . '), rec('article', 'The'), rec('ok', 'w5')].map((r) => JSON.stringify(r)).join('\n') + '\n');
    const model = tinyModel();
    try {
      const out = path.join(d, 'preds.jsonl');
      const e = await runEval({ model, tokenizer: new WordTokenizer(), template: getTemplate('vicuna'), records, images: null, boxes: null, out }).then(() => null, (x: unknown) => x as MgllavaError);
      expect(e).toBeInstanceOf(MgllavaError);
      expect(e!.exitCode).toBe(EXIT.data);
      expect(e!.message).toMatch(/3 problem\(s\)/);
      for (const id of ['empty', 'dot', 'article']) expect(e!.message).toContain(`record "${id}": the answer`);
      expect(e!.message).not.toContain('record "ok"');
      expect(existsSync(out)).toBe(false);
    } finally {
      model.dispose();
    }
  });
});

describe('held-out evaluation during training', () => {
  it('an empty reference answer in train.eval_records stops the run before its first step (not at its first evaluation)', async () => {
    const setup = await makeTinyTrainSetup(4);
    try {
      const recs = JSON.parse(readFileSync(path.join(setup.data, 'finetune.json'), 'utf8')) as { conversations: { value: string }[] }[];
      const held = recs.slice(0, 2);
      held[1]!.conversations[1]!.value = '';
      const file = path.join(setup.root, 'heldout-empty.json');
      writeFileSync(file, JSON.stringify(held));
      const steps: number[] = [];
      const run = train({ configFile: setup.pretrainYaml, stage: 'pretrain', sets: [`output_dir=${path.join(setup.root, 'empty-answer')}`, `train.eval_records=${file}`, 'train.max_steps=1'], progress: 'off', out: collector().stream, onStep: (s) => steps.push(s.step) });
      await expect(run).rejects.toThrow(/the answer "" is empty once normalised/);
      expect(steps).toEqual([]);
    } finally {
      await setup.cleanup();
    }
  });
});

describe('warm-up annotations', () => {
  it('an image that is missing, outside the folder or of another size is refused before the first step (it failed when its batch came)', async () => {
    const setup = await makeTinyTrainSetup(4);
    try {
      const doc = JSON.parse(readFileSync(path.join(setup.data, 'annotations.json'), 'utf8')) as { images: Record<string, { image: string; width: number }> };
      const [id] = Object.keys(doc.images);
      const cases: [string, (e: { image: string; width: number }) => void, RegExp][] = [
        ['missing', (e) => (e.image = 'nowhere.png'), /image file not found/],
        ['outside', (e) => (e.image = '../../escape.png'), /outside the image folder/],
        ['size', (e) => (e.width += 1), /its annotation says/],
      ];
      // The run's image policy (data.max_image_pixels, data.exif_orientation) holds for the warm-up too (it used the defaults)
      const tight = path.join(setup.root, 'warmup-tight.yaml');
      writeFileSync(tight, `extends: base.yaml\nname: w-tight\nstage: warmup\nwarmup: { annotations: ${path.join(setup.data, 'annotations.json')}, eval_split: null }\ndata: { max_image_pixels: 100 }\n`);
      const t = loadConfig(tight).config;
      expect((await failure(() => buildWarmupData(t, modelConfigFrom(t.model), { imageWorkers: 0 }))).message).toMatch(/over the pixel budget .*data\.max_image_pixels = 100/);
      for (const [name, spoil, why] of cases) {
        const bad = structuredClone(doc);
        spoil(bad.images[id!]!);
        const file = path.join(setup.root, `annotations-${name}.json`);
        writeFileSync(file, JSON.stringify(bad));
        const yaml = path.join(setup.root, `warmup-${name}.yaml`);
        writeFileSync(yaml, `extends: base.yaml\nname: w-${name}\nstage: warmup\nwarmup: { annotations: ${file}, eval_split: null }\n`);
        const { config } = loadConfig(yaml);
        const e = await failure(() => buildWarmupData(config, modelConfigFrom(config.model), { imageWorkers: 0 }));
        expect(e.exitCode).toBe(EXIT.data);
        expect(e.message, e.message).toContain(`image "${id}"`);
        expect(e.message).toMatch(why);
      }
    } finally {
      await setup.cleanup();
    }
  });
});

describe('a run\'s tokenizer', () => {
  it('replaced by one with ids beyond the LLM vocabulary is refused when the run is opened (chat crashed in splice with a stack trace)', async () => {
    const run = await makeTinyRun(await tmp.fresh('run'));
    run.model.dispose();
    const file = path.join(run.data, 'tokenizer.json');
    const tok = JSON.parse(readFileSync(file, 'utf8')) as { model: { vocab: Record<string, number> } };
    tok.model.vocab.zebra = 74; // the run's LLM has 64 ids
    writeFileSync(file, JSON.stringify(tok));
    const e = await failure(() => loadRunModel(run.runDir));
    expect(e.message).toMatch(/tokenizer .* has \d+ ids but the LLM vocabulary \(model\.llm\.vocab_size\) has 64/);
    expect(e.message).toContain(file);
    const r = await runCli(['chat', run.runDir, 'w3 zebra', '--max-new-tokens', '1']);
    expectOneLineError(r);
    expect(r.code).toBe(EXIT.run);
  });
});

describe('tokenizer.json files', () => {
  it('vocabulary ids that are negative, fractional, strings or shared by two tokens are refused at load (internal error or a silent ambiguity)', async () => {
    const d = await tmp.fresh('tokids');
    const synth = path.join(d, 'synth');
    await synthDataset({ out: synth, train: 1, eval: 0, seed: 3, size: 64 });
    const base = JSON.parse(readFileSync(path.join(synth, 'tokenizer.json'), 'utf8')) as { model: { vocab: Record<string, unknown> } };
    const word = Object.keys(base.model.vocab).find((w) => /^[a-z]+$/.test(w))!;
    for (const [name, id, why] of [['neg', -3, /ids must be integers >= 0/], ['frac', 1.5, /ids must be integers >= 0/], ['str', '7', /ids must be integers >= 0/], ['dup', 0, /share id 0/]] as const) {
      const dir = path.join(d, name);
      mkdirSync(dir);
      const tok = structuredClone(base);
      tok.model.vocab[word] = id;
      writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tok));
      writeFileSync(path.join(dir, 'tokenizer_config.json'), readFileSync(path.join(synth, 'tokenizer_config.json')));
      const r = await runCli(['data', 'show', '0', '--records', path.join(synth, 'finetune.json'), '--boxes', path.join(synth, 'boxes.json'), '--images', path.join(synth, 'images'), '--tokenizer', dir]);
      const line = expectOneLineError(r);
      expect(line).toContain(path.join(dir, 'tokenizer.json'));
      expect(line).toContain(JSON.stringify(word));
      expect(line).toMatch(why);
      expect(r.code).toBe(EXIT.data);
    }
  });

  it('one without an EOS token (no tokenizer_config.json beside it) under a template that ends answers with EOS is one line (it was an internal error)', async () => {
    const d = await tmp.fresh('tok');
    const synth = path.join(d, 'synth');
    await synthDataset({ out: synth, train: 1, eval: 0, seed: 3, size: 64 });
    const lone = path.join(d, 'tokenizer.json');
    writeFileSync(lone, readFileSync(path.join(synth, 'tokenizer.json')));
    const r = await runCli(['data', 'show', '0', '--records', path.join(synth, 'finetune.json'), '--boxes', path.join(synth, 'boxes.json'), '--images', path.join(synth, 'images'), '--tokenizer', lone, '--template', 'vicuna']);
    expect(expectOneLineError(r)).toMatch(/tokenizer hf:.*tokenizer\.json has no EOS token.*\[hint: set eos_token in the tokenizer_config\.json/);
    expect(r.code).toBe(EXIT.data);
  });
});
