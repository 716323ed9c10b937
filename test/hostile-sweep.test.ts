/**
 * The red-team sweep of issue 12, one case per class it found (each failed before its fix): every bad or odd
 * input ends in one line and a non-zero exit, never a stack trace, a hang, a silent result or lost data.
 * Command line, config, data files, output files, devices and pipes, run directories, signals.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import sharp from 'sharp';
import { beforeAll, describe, expect, it } from 'vitest';
import { failure, mkfifo } from './hostile-helpers.js';
import { expectOneLineError, runCli } from './cli-harness.js';
import { tempRoot } from './temp-root.js';
import { makeTinyTrainSetup, capturedPretrain, type TinyTrainSetup } from './train-fixture.js';
import { loadConfig } from '../src/config/load.js';
import { modelConfigFrom } from '../src/config/build-model.js';
import { readImageHeader } from '../src/data/image.js';
import { loadRecords } from '../src/data/records.js';
import { synthDataset } from '../src/data/synth.js';
import { writeWordVocab } from '../src/data/word-vocab.js';
import { getTemplate } from '../src/data/templates.js';
import { DataError, EXIT, InterruptedError, MgllavaError, reportError, ResourceError, UsageError } from '../src/errors.js';
import { Module } from '../src/nn/module.js';
import { zeros } from '../src/nn/init.js';
import { Rng } from '../src/util/rng.js';
import { findBoxEntry } from '../src/infer/box-entry.js';
import { resolveTags } from '../src/detect/queries.js';
import { readManifest } from '../src/golden/manifest.js';
import { checkOutputFile, writeFileAtomic } from '../src/io/output-file.js';
import { readSmallTextFile } from '../src/io/small-file.js';
import { SafetensorsReader } from '../src/io/safetensors.js';
import { TorchCheckpoint } from '../src/io/torch-load.js';
import { lockRunDir } from '../src/run/lock.js';
import { readState, withCheckpoint } from '../src/run/layout.js';
import { totalStepsOf } from '../src/train/build-data.js';
import { train } from '../src/train/trainer.js';

const tmp = tempRoot('hostile');


const TINY = path.resolve('configs/tiny-shapes/pretrain.yaml');

describe('command line', () => {
  it('a flag given twice is refused before any work (it was a list the handler crashed on)', async () => {
    const r = await runCli(['pretrain', '--config', 'a.yaml', '--config', 'b.yaml']);
    expect(r.code).toBe(EXIT.usage);
    expect(expectOneLineError(r)).toMatch(/^mgllava: --config given 2 times \("a\.yaml", "b\.yaml"\): give it once/);
    expect(expectOneLineError(await runCli(['export', 'run', '--format', 'xtuner', '--out', 'a', '--out', 'b']))).toMatch(/--out given 2 times/);
  });

  it('an empty value is refused (export --out "" wrote into the current folder; --config "" read a folder)', async () => {
    const out = await runCli(['export', 'some-run', '--format', 'xtuner', '--out', '']);
    expect(out.code).toBe(EXIT.usage);
    expect(expectOneLineError(out)).toMatch(/^mgllava: --out: empty value/);
    expect(expectOneLineError(await runCli(['pretrain', '--config', '']))).toMatch(/--config: empty value/);
    expect(expectOneLineError(await runCli(['chat', 'some-run', '']))).toMatch(/<prompt>: empty value/);
    expect(expectOneLineError(await runCli(['data', 'vocab', '--records', 'a.json', '--records', '', '--out', 'x']))).toMatch(/--records: empty value/);
  });

  it('a malformed MGLLAVA_WASM_THREADS is a backend error (auto selection fell back to the 50x slower cpu backend)', () => {
    const r = spawnSync(process.execPath, ['bin/mgllava.js', 'doctor'], { encoding: 'utf8', env: { ...process.env, MGLLAVA_WASM_THREADS: 'abc', MGLLAVA_BACKEND: '' }, timeout: 60_000 });
    expect(r.status).toBe(EXIT.backend);
    expect(r.stderr.trim().split('\n').pop()).toBe('mgllava: MGLLAVA_WASM_THREADS=abc: expected an integer from 1 to 64');
  });

  it('boxes on a folder without images is refused (it wrote an empty box file and exited 0)', async () => {
    const empty = await tmp.fresh('no-images');
    const out = path.join(empty, 'boxes.json');
    const r = await runCli(['boxes', '--detector', empty, '--images', empty, '--tags', 'dog', '--out', out]);
    expect(r.code).toBe(EXIT.data);
    expect(expectOneLineError(r)).toBe(`mgllava: ${empty}: no image file (.jpg, .png, .webp, ...) to detect boxes for`);
    expect(readdirSync(empty)).toEqual([]);
  });

  it('numbers out of range are usage errors before any work (they crashed in preprocessing or sampled silently)', async () => {
    expect(expectOneLineError(await runCli(['chat', 'no-run', '--temperature', 'Infinity', 'hi']))).toMatch(/--temperature must be a finite number >= 0, got Infinity/);
    expect(expectOneLineError(await runCli(['chat', 'no-run', '--seed', '-1', 'hi']))).toMatch(/--seed must be an integer >= 0, got -1/);
    const show = ['data', 'show', '0', '--records', 'r.json', '--images', 'imgs', '--tokenizer', 'byte'];
    expect(expectOneLineError(await runCli([...show, '--patch', '1.5']))).toMatch(/--patch must be an integer from 1 to 16384, got 1\.5/);
    expect(expectOneLineError(await runCli([...show, '--aux-size', '-1']))).toMatch(/--aux-size must be an integer from 1 to 16384, got -1/);
  });

  it('bench --steps below 1 and golden --only naming no piece are usage errors (they printed NaN / "passed" nothing)', async () => {
    expect(expectOneLineError(await runCli(['bench', 'step', '--steps', '-1']))).toMatch(/--steps must be an integer >= 1, got -1/);
    expect(expectOneLineError(await runCli(['golden', '--dir', '../shared/golden/public', '--only', ',']))).toMatch(/--only "," names no piece/);
  });
});

describe('config', () => {
  const model = (sets: string[]) => modelConfigFrom(loadConfig(TINY, sets).config.model);

  it.each([
    ['model.vision.num_heads=3', /^model\.vision: CLIP ViT config: hiddenSize 64 is not a multiple of numHeads 3$/],
    ['model.vision.select_layer=5', /^model\.vision: .*selectLayer 5 is out of range/],
    ['model.vision_aux.dims=[16,32]', /^model\.vision_aux: ConvNeXt config: depths/],
    ['model.llm.num_heads=3', /^model\.llm: invalid LLaMA config: headDim must be a positive integer/],
    ['model.vision.patch_size=13', /^model: MG-LLaVA config: the aux image 128 px gives a 4x4 last ConvNeXt map, but the fusion needs the 4\.31x4\.31 ViT grid/],
  ])('%s: a config error naming the key, one line (was a stack trace from the model builder)', (set, message) => {
    let e: unknown = null;
    try {
      model([set]);
    } catch (x) {
      e = x;
    }
    expect(e).toBeInstanceOf(MgllavaError);
    expect((e as MgllavaError).category).toBe('config');
    expect((e as Error).message).toMatch(message);
    expect((e as Error).message).not.toContain('\n');
  });

  it('sizes that no model can have are refused before building (1e11 layers looped for hours; a 1e9-row embedding was a RangeError)', () => {
    expect(() => model(['model.llm.num_layers=99999999999'])).toThrow(/^model: 1\.98e\+16 parameters \(llm: 1\.98e\+16\), more than any model mgllava can hold/);
    expect(() => model(['model.projector_depth=99999999999'])).toThrow(/\(projector: /);
    expect(() => loadConfig(TINY, ['model.objects.output_size=100000'])).toThrow(/model\.objects\.output_size: must be <= 1024/);
    expect(() => loadConfig(TINY, ['model.objects.sampling_ratio=99999999999'])).toThrow(/model\.objects\.sampling_ratio: must be <= 1024/);
    class Huge extends Module {
      constructor() {
        super({});
        this.addWeight('weight', [999_999_999, 128], zeros, { rng: new Rng(0) });
      }
    }
    expect(() => new Huge()).toThrow(ResourceError);
    expect(() => new Huge()).toThrow(/a weight of shape \[999999999, 128\] \(weight\) has 127999999872 elements, more than one tensor can hold/);
  });

  it('data.prefetch is bounded (1e9 batches ahead hung the run); a NaN is shown as NaN, not null', () => {
    expect(() => loadConfig(TINY, ['data.prefetch=1000000000'])).toThrow(/data\.prefetch: must be <= 64 \(got 1000000000\)/);
    expect(() => loadConfig(TINY, ['train.lr=.nan'])).toThrow(/train\.lr: must be a number \(got NaN\)/);
  });

  it('train.grad_accum above the micro-batches of an epoch is refused (1e9 held every batch of a never-ending step)', () => {
    const { config } = loadConfig(TINY, ['train.grad_accum=1000000000', 'train.batch_size=4']);
    expect(() => totalStepsOf(config, 10)).toThrow(/train\.grad_accum: 1000000000 micro-batches per optimizer step, but the data gives only 10 micro-batches of 4 per epoch/);
    expect(totalStepsOf(loadConfig(TINY, ['train.grad_accum=10', 'train.max_steps=null', 'train.epochs=1']).config, 10)).toBe(1);
  });
});

describe('data files', () => {
  let data: string;
  beforeAll(async () => {
    data = await tmp.fresh('data');
    await synthDataset({ out: data, train: 2, eval: 0, seed: 1, size: 48 });
  });

  it('records that are not UTF-8 are refused with their line (they loaded with U+FFFD in place of the text)', async () => {
    const dir = await tmp.fresh('utf8');
    const latin1 = path.join(dir, 'latin1.jsonl');
    const good = JSON.stringify({ id: 'a', conversations: [{ from: 'human', value: 'q' }, { from: 'gpt', value: 'red' }] });
    const before = Buffer.from(`${good}\n{"id": "b", "conversations": [{"from": "human", "value": "squ`);
    writeFileSync(latin1, Buffer.concat([before, Buffer.from([0xe4]), Buffer.from('re"}, {"from": "gpt", "value": "a"}]}\n')]));
    const e = await failure(loadRecords(latin1));
    expect(e).toBeInstanceOf(DataError);
    expect(e.message).toBe(`${latin1}: not UTF-8 text: byte 0xe4 at line 2 (byte ${before.length}) is not valid UTF-8 (a Latin-1, Windows-1252 or UTF-16 file?)`);
    // Valid UTF-8 still loads: a BOM, and a 3-byte character split by the 1 MiB read boundary.
    const split = path.join(dir, 'split.jsonl');
    const record = (id: string, answer: string) => JSON.stringify({ id, conversations: [{ from: 'human', value: 'q' }, { from: 'gpt', value: answer }] });
    const head = `\ufeff${record('pad', 'x'.repeat(1000))}\n`;
    const answerAt = record('euro', 'MARK').indexOf('MARK');
    const fill = 'y'.repeat((1 << 20) - 1 - Buffer.byteLength(head) - answerAt); // the euro sign's first byte ends the first read
    writeFileSync(split, `${head}${record('euro', `${fill}€`)}\n`);
    expect(readFileSync(split).subarray((1 << 20) - 1, (1 << 20) + 2).toString()).toBe('€');
    const r = await loadRecords(split);
    expect(r.bad).toEqual([]);
    expect(r.records.map((x) => x.id)).toEqual(['pad', 'euro']);
    expect(r.records[1]!.conversations[1]!.value.endsWith('y€')).toBe(true);
  });

  it('an empty records file is refused by data check (it said "0 records, 0 problem(s)" and exited 0)', async () => {
    const empty = path.join(await tmp.fresh('empty'), 'records.json');
    writeFileSync(empty, '[]');
    const r = await runCli(['data', 'check', '--records', empty, '--images', path.join(data, 'images'), '--tokenizer', 'byte']);
    expect(r.code).toBe(EXIT.data);
    expect(expectOneLineError(r)).toBe(`mgllava: ${empty}: the records file holds no record`);
  });

  it('SVG is refused (PIL cannot read it; its external images rendered as a silently blank picture)', async () => {
    const dir = await tmp.fresh('svg');
    const svg = path.join(dir, 'pic.svg');
    writeFileSync(svg, '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="30"><rect width="40" height="30" fill="red"/></svg>');
    const disguised = path.join(dir, 'pic.png');
    writeFileSync(disguised, readFileSync(svg));
    for (const f of [svg, disguised]) expect((await failure(readImageHeader(f))).message).toMatch(/SVG is not a photo format the reference \(PIL\) reads/);
    const png = path.join(dir, 'ok.png');
    await sharp({ create: { width: 4, height: 3, channels: 3, background: 'red' } }).png().toFile(png);
    expect((await readImageHeader(png)).width).toBe(4);
  });

  it('data vocab never replaces a tokenizer.json without --overwrite, and refuses an empty record set', async () => {
    const out = await tmp.fresh('vocab');
    const records = path.join(data, 'pretrain.json');
    await writeWordVocab([records], getTemplate('vicuna'), out);
    const before = readFileSync(path.join(out, 'tokenizer.json'), 'utf8');
    const e = await failure(writeWordVocab([path.join(data, 'eval.json')], getTemplate('vicuna'), out));
    expect(e).toBeInstanceOf(UsageError);
    expect(e.message).toMatch(/tokenizer\.json exists \(a run may use it\)/);
    expect(readFileSync(path.join(out, 'tokenizer.json'), 'utf8')).toBe(before);
    const empty = path.join(out, 'none.json');
    writeFileSync(empty, '[]');
    expect((await failure(writeWordVocab([empty], getTemplate('vicuna'), out, { overwrite: true }))).message).toMatch(/no readable record/);
    expect(readFileSync(path.join(out, 'tokenizer.json'), 'utf8')).toBe(before);
  });

  it('data synth --overwrite never deletes a folder of the user\'s own images; sizes and counts are bounded', async () => {
    const own = await tmp.fresh('own');
    mkdirSync(path.join(own, 'images'));
    writeFileSync(path.join(own, 'images', 'holiday.jpg'), 'mine');
    writeFileSync(path.join(own, 'pretrain.json'), '[]');
    await expect(synthDataset({ out: own, train: 1, eval: 0, overwrite: true })).rejects.toThrow(/holds files of its own and no synthetic dataset/);
    expect(readdirSync(path.join(own, 'images'))).toEqual(['holiday.jpg']);
    // A synthetic set with a user's file added: --overwrite replaces synth's files only.
    const synth = await tmp.fresh('synth');
    await synthDataset({ out: synth, train: 1, eval: 0, size: 48 });
    writeFileSync(path.join(synth, 'images', 'holiday.jpg'), 'mine');
    await synthDataset({ out: synth, train: 2, eval: 0, size: 48, overwrite: true });
    expect(readdirSync(path.join(synth, 'images')).sort()).toEqual(['holiday.jpg', 'train-00000.png', 'train-00001.png']);
    await expect(synthDataset({ out: await tmp.fresh('s'), train: 1, size: 100_000 })).rejects.toThrow(/--size must be an integer from 40 to 4096 px/);
    await expect(synthDataset({ out: await tmp.fresh('s'), train: 1e12 })).rejects.toThrow(/at most 1000000 per split/);
    await expect(synthDataset({ out: '/proc/mgllava-synth', train: 1 })).rejects.toThrow(/\/proc is a virtual file system/);
  });
});

describe('output files', () => {
  it('an output is never one of the inputs, a device, a directory, a virtual file system or a wrong extension', async () => {
    const dir = await tmp.fresh('out');
    const records = path.join(dir, 'records.json');
    writeFileSync(records, '[]');
    const link = path.join(dir, 'link.json');
    symlinkSync(records, link);
    const inputs = [{ file: records, what: 'the records file' }];
    const e = await failure(checkOutputFile(link, 'the skip report (--skip-bad)', { inputs }));
    expect(e.message).toBe(`the skip report (--skip-bad) ${link} is the records file (${records}): writing it would destroy that input; choose another name`);
    await expect(checkOutputFile('/proc/x.png', 'the image')).rejects.toThrow(/\/proc is a virtual file system/);
    await expect(checkOutputFile('/dev/null', 'the image')).rejects.toThrow(/\/dev is a virtual file system/);
    await expect(checkOutputFile(dir, 'the image')).rejects.toThrow(/is a directory; give a file name/);
    await expect(checkOutputFile(path.join(dir, 'view.jpg'), 'the image (--save-image)', { ext: '.png' })).rejects.toThrow(/the file written is PNG: give it a \.png name/);
    await checkOutputFile(path.join(dir, 'report.jsonl'), 'the skip report', { inputs });
  });

  it('data check --skip-bad naming the records file leaves it intact (it was overwritten by the report)', async () => {
    const dir = await tmp.fresh('skip');
    const records = path.join(dir, 'records.json');
    const text = JSON.stringify([{ id: 'a', conversations: [{ from: 'human', value: 'q' }, { from: 'gpt', value: 'a' }] }, { id: 'a', conversations: [] }]);
    writeFileSync(records, text);
    const r = await runCli(['data', 'check', '--records', records, '--images', dir, '--tokenizer', 'byte', '--skip-bad', records]);
    expect(r.code).toBe(EXIT.data);
    expect(expectOneLineError(r)).toMatch(/is the records file .*writing it would destroy that input/);
    expect(readFileSync(records, 'utf8')).toBe(text);
  });

  it('a failed write leaves neither a truncated file nor its temporary', async () => {
    const dir = await tmp.fresh('atomic');
    const e = await failure(writeFileAtomic(path.join(dir, 'missing', 'x.json'), 'data', 'the tokenizer'));
    expect(e.message).toMatch(/x\.json: writing the tokenizer: no such file or directory/);
    expect(readdirSync(dir)).toEqual([]);
  });
});

describe('devices and pipes', () => {
  it('small text files: a FIFO or /dev/zero is refused without being opened (a FIFO blocked, /dev/zero never ended)', async () => {
    const fifo = mkfifo(path.join(await tmp.fresh('fifo'), 'tags.txt'));
    expect((await failure(readSmallTextFile(fifo, 'the tag list'))).message).toBe(`${fifo}: the tag list is not a regular file (a device, pipe or socket)`);
    expect((await failure(resolveTags({ tagsFile: '/dev/zero' }))).message).toMatch(/\/dev\/zero: the tag list is not a regular file/);
    expect((await failure(findBoxEntry('/dev/zero', 'x.png', 'x'))).message).toMatch(/\/dev\/zero: the box file is a device or socket/);
  });

  it('weights and checkpoints that are pipes are refused (convert FIFO hung in open)', async () => {
    const dir = await tmp.fresh('pipes');
    const pth = mkfifo(path.join(dir, 'model.pth'));
    expect((await failure(TorchCheckpoint.open(pth))).message).toBe(`${pth}: not a regular file`);
    const st = mkfifo(path.join(dir, 'model.safetensors'));
    expect((await failure(SafetensorsReader.open(st))).message).toBe(`${st}: not a regular file`);
    const missing = path.join(dir, 'gone.safetensors');
    expect((await failure(SafetensorsReader.open(missing))).message).toBe(`${missing}: opening the weights: no such file or directory`);
  });

  it('a run directory whose .lock or state.json is a FIFO: the lock is taken over, the state refused (both hung)', async () => {
    const run = await tmp.fresh('run');
    mkfifo(path.join(run, '.lock'));
    const warnings: string[] = [];
    const lock = await lockRunDir(run, (w) => warnings.push(w));
    expect(warnings.join('\n')).toMatch(/took over the lock .* unreadable lock/);
    await lock.release();
    const step = path.join(run, 'step-00000001');
    mkdirSync(step);
    mkfifo(path.join(step, 'state.json'));
    expect((await failure(readState(step))).message).toMatch(/state\.json: the checkpoint state is not a regular file/);
  });
});

describe('run directories', () => {
  it('a step rotated away while a reader loads it: the newest is taken again (eval/chat crashed with ENOENT)', async () => {
    const run = await tmp.fresh('rotating');
    writeFileSync(path.join(run, 'config.yaml'), 'name: x\n');
    const step = (n: number) => {
      const d = path.join(run, `step-0000000${n}`);
      mkdirSync(d, { recursive: true });
      writeFileSync(path.join(d, 'state.json'), '{}');
      return d;
    };
    step(1);
    const seen: number[] = [];
    const got = await withCheckpoint(run, undefined, async (ck) => {
      seen.push(ck.step);
      if (ck.step === 1) {
        step(2); // the trainer saves step 2 and rotates step 1 away under the reader
        await rm(path.join(run, 'step-00000001'), { recursive: true });
        throw Object.assign(new Error('ENOENT: gone'), { code: 'ENOENT' });
      }
      return ck.step;
    });
    expect([seen, got]).toEqual([[1, 2], 2]);
    // An explicit step is never swapped for another.
    await expect(withCheckpoint(run, 2, async () => Promise.reject(new DataError('broken')))).rejects.toThrow('broken');
  });

  it('a file-system error no caller wrapped is one line naming the file, not "internal error"', () => {
    const raw = Object.assign(new Error("EROFS: read-only file system, open '/ro/run/predictions.jsonl'"), { code: 'EROFS', path: '/ro/run/predictions.jsonl', syscall: 'open' });
    const r = reportError(raw);
    expect(r.text).toBe('mgllava: /ro/run/predictions.jsonl: opening: read-only file system\n');
    expect(r.exitCode).toBe(EXIT.resource);
  });

  it('golden: a missing, malformed or empty manifest is a data error (all were stack traces)', async () => {
    const dir = await tmp.fresh('golden');
    expect((await failure(readManifest(dir))).message).toMatch(/manifest\.json: reading the golden manifest: no such file or directory/);
    writeFileSync(path.join(dir, 'manifest.json'), '{"pieces": null}');
    expect((await failure(readManifest(dir))).message).toMatch(/no "pieces" object/);
    writeFileSync(path.join(dir, 'manifest.json'), '{"pieces": {}}');
    expect((await failure(readManifest(dir))).message).toMatch(/"pieces" is empty: nothing to compare/);
  });
});

describe('signals', () => {
  let setup: TinyTrainSetup;
  beforeAll(async () => {
    setup = await makeTinyTrainSetup(8);
  });

  it.each([
    ['SIGINT', 130],
    ['SIGTERM', 143],
  ] as const)('%s during training saves a checkpoint, exits %i and resumes (SIGINT exited 0; SIGTERM lost the steps since the last save)', async (signal, code) => {
    const listeners = process.listenerCount(signal);
    const sets = [`name=sig-${signal}`, 'train.save_steps=100', 'train.max_steps=6'];
    const o = capturedPretrain(setup, {
      sets,
      onStep: (s) => {
        if (s.step === 2) process.emit(signal, signal);
      },
    });
    const e = await failure(train(o));
    expect(e).toBeInstanceOf(InterruptedError);
    expect(e.exitCode).toBe(code);
    expect(e.message).toMatch(new RegExp(`^pretrain sig-${signal} stopped by ${signal} at step 2 of 6; its checkpoint is saved in `));
    expect(e.hint).toBe('continue it with --resume auto');
    const runDir = path.join(setup.runs, `sig-${signal}`);
    expect(readdirSync(runDir).filter((n) => n.startsWith('step-'))).toEqual(['step-00000002']);
    expect(process.listenerCount(signal)).toBe(listeners);
    const resumed = await train(capturedPretrain(setup, { sets, resume: 'auto' }));
    expect([resumed.step, resumed.stopped]).toEqual([6, 'end']);
    // export --out naming an existing file: one line, the file untouched (was a stack trace from the clean-up)
    const file = path.join(setup.root, `afile-${signal}`);
    writeFileSync(file, 'x');
    expect(expectOneLineError(await runCli(['export', runDir, '--format', 'xtuner', '--out', file]))).toBe(`mgllava: --out ${file} exists and is not a directory`);
    expect(readFileSync(file, 'utf8')).toBe('x');
  });
});
