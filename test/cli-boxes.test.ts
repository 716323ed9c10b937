// `mgllava boxes` end to end: a folder of generated images (one corrupt) and a detector directory with
// golden-sized random weights -> box JSON; resume; --records -> a box JSON that `data check` accepts and a
// training run uses.
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadBoxes } from '../src/data/records.js';
import { journalPath } from '../src/detect/boxes-run.js';
import { runCli } from './cli-harness.js';
import { makeTinyTrainSetup, type TinyTrainSetup } from './train-fixture.js';
import { writeTestImage, writeTinyOwlv2Dir } from './owlv2-fixture.js';

let setup: TinyTrainSetup;
let owl: string;
let images: string;

/** The CLI on the wasm backend. */
const capture = (argv: string[]) => runCli([...argv, '--backend', 'wasm']);

beforeAll(async () => {
  setup = await makeTinyTrainSetup(8);
  owl = path.join(setup.root, 'owlv2');
  await writeTinyOwlv2Dir(owl, 6);
  images = path.join(setup.root, 'photos');
  await mkdir(path.join(images, 'sub'), { recursive: true });
  await writeTestImage(path.join(images, 'a.png'), 40, 30, 1);
  await writeTestImage(path.join(images, 'b.jpg'), 24, 50, 2);
  await writeTestImage(path.join(images, 'sub', 'c.png'), 64, 64, 3);
  await writeFile(path.join(images, 'broken.png'), 'this is not a png');
});
afterAll(async () => {
  await setup?.cleanup();
});

describe('mgllava boxes', () => {
  it('writes the box JSON of a folder; a corrupt image is named and skipped; --resume continues', async () => {
    const out = path.join(setup.root, 'photos.json');
    const r = await capture(['boxes', '--detector', owl, '--images', images, '--tags', 'dog, red ball', '--out', out, '--progress', 'lines', '--json']);
    expect(r.code, r.err).toBe(0);
    expect(r.err).toMatch(/skipped "broken\.png": .*broken\.png/);
    const summary = JSON.parse(r.out.trim().split('\n').pop()!);
    expect(summary).toMatchObject({ entries: 3, detected: 3, resumed: 0 });
    expect(summary.skipped.map((s: { id: string }) => s.id)).toEqual(['broken.png']);
    const boxes = await loadBoxes(out);
    expect(boxes.bad).toEqual([]);
    expect([...boxes.entries.keys()]).toEqual(['a.png', 'b.jpg', 'sub/c.png']);
    for (const e of boxes.entries.values()) {
      expect(e.boxes.length).toBeGreaterThan(0);
      for (const b of e.boxes) for (const v of b) expect(Number.isInteger(v)).toBe(true);
      for (const l of e.labels) expect(['dog', 'red ball']).toContain(l);
      for (const s of e.scores) expect(s).toBeGreaterThan(0.2);
    }
    expect(existsSync(journalPath(out))).toBe(false);

    // Without --resume an existing output is refused before the detector loads.
    const again = await capture(['boxes', '--detector', path.join(setup.root, 'nowhere'), '--images', images, '--out', out, '--tags', 'dog']);
    expect(again.code).toBe(1);
    expect(again.err).toMatch(/already exists.*--resume/);

    // An interrupted run: the journal holds two of the three images; --resume detects only the third.
    const out2 = path.join(setup.root, 'photos2.json');
    const first = boxes.entries.get('a.png')!;
    await writeFile(journalPath(out2), `{"id":"a.png","entry":${JSON.stringify(first)}}\n{"id":"b.jpg","entry":${JSON.stringify(boxes.entries.get('b.jpg'))}}\n{"id":"sub/c.p`);
    const resumed = await capture(['boxes', '--detector', owl, '--images', images, '--tags', 'dog, red ball', '--out', out2, '--resume', '--progress', 'off', '--json']);
    expect(resumed.code, resumed.err).toBe(0);
    expect(JSON.parse(resumed.out.trim().split('\n').pop()!)).toMatchObject({ entries: 3, detected: 1, resumed: 2 });
    const boxes2 = await loadBoxes(out2);
    expect(boxes2.entries.get('sub/c.png')).toEqual(boxes.entries.get('sub/c.png')); // same image, same boxes
    expect(boxes2.entries.get('a.png')).toEqual(first);
    expect(existsSync(journalPath(out2))).toBe(false);

    // --resume after a finished run adds a new image and keeps the earlier entries
    await writeTestImage(path.join(images, 'd.png'), 33, 21, 4);
    try {
      const more = await capture(['boxes', '--detector', owl, '--images', images, '--tags', 'dog, red ball', '--out', out, '--resume', '--progress', 'off', '--json']);
      expect(JSON.parse(more.out.trim().split('\n').pop()!)).toMatchObject({ entries: 4, detected: 1, resumed: 3 });
      const boxes3 = await loadBoxes(out);
      expect([...boxes3.entries.keys()]).toEqual(['a.png', 'b.jpg', 'sub/c.png', 'd.png']);
      expect(boxes3.entries.get('b.jpg')).toEqual(boxes.entries.get('b.jpg'));
    } finally {
      await rm(path.join(images, 'd.png'));
    }
  });

  it('takes per-image tags from a JSON tag file; an image without tags is named and skipped', async () => {
    const tagsFile = path.join(setup.root, 'ram-tags.json');
    await writeFile(tagsFile, JSON.stringify({ 'a.png': 'dog | ball', 'sub/c.png': ['cat'], 'broken.png': 'dog' }));
    const out = path.join(setup.root, 'per-image.json');
    const r = await capture(['boxes', '--detector', owl, '--images', images, '--tags-file', tagsFile, '--out', out, '--progress', 'off', '--json']);
    expect(r.code, r.err).toBe(0);
    expect(r.err).toMatch(/skipped "b\.jpg": no tags for "b\.jpg"/);
    expect(r.err).toMatch(/skipped "broken\.png"/);
    const boxes = await loadBoxes(out);
    expect([...boxes.entries.keys()]).toEqual(['a.png', 'sub/c.png']);
    for (const l of boxes.entries.get('a.png')!.labels) expect(['dog', 'ball']).toContain(l);
    expect(new Set(boxes.entries.get('sub/c.png')!.labels)).toEqual(new Set(['cat']));
  });

  it('names bad options', async () => {
    const out = path.join(setup.root, 'x.json');
    expect((await capture(['boxes', '--detector', owl, '--out', out])).err).toMatch(/--images DIR or --records R/);
    expect((await capture(['boxes', '--detector', owl, '--images', images, '--out', out, '--threshold', '1.5'])).err).toMatch(/--threshold/);
    expect((await capture(['boxes', '--detector', owl, '--images', images, '--out', out, '--tags', 'a', '--tags-file', 'f'])).err).toMatch(/not both/);
    const r = await capture(['boxes', '--detector', path.join(setup.root, 'nowhere'), '--images', images, '--out', out]);
    expect(r.code).not.toBe(0);
    expect(r.err).toMatch(/nowhere: no such directory/);
  });

  it('--records: keyed by record id; data check accepts the file and a training run uses it', async () => {
    const out = path.join(setup.root, 'owl-boxes.json');
    const records = path.join(setup.data, 'pretrain.json');
    const imgs = path.join(setup.data, 'images');
    const tagsFile = path.join(setup.root, 'tags.txt');
    await writeFile(tagsFile, 'square\ncircle\ntriangle\n');
    const r = await capture(['boxes', '--detector', owl, '--records', records, '--images', imgs, '--tags-file', tagsFile, '--out', out, '--progress', 'off', '--json']);
    expect(r.code, r.err).toBe(0);
    const recs = JSON.parse(await readFile(records, 'utf8')) as { id: string; image?: string }[];
    const boxes = await loadBoxes(out);
    expect([...boxes.entries.keys()].sort()).toEqual(recs.filter((x) => x.image).map((x) => x.id).sort());
    for (const e of boxes.entries.values()) for (const l of e.labels) expect(['square', 'circle', 'triangle']).toContain(l);

    const check = await capture(['data', 'check', '--records', records, '--boxes', out, '--images', imgs, '--tokenizer', path.join(setup.data, 'tokenizer.json'), '--json']);
    expect(check.code, check.out + check.err).toBe(0);

    const train = await capture(['pretrain', '--config', setup.pretrainYaml, '--set', `data.boxes=${out}`, '--set', `output_dir=${path.join(setup.root, 'runs-owl')}`, '--max-steps', '2', '--progress', 'lines']);
    expect(train.code, train.err).toBe(0);
    expect(train.out).toMatch(/step 2\/\d+ +loss \d/);
    expect(train.out).toMatch(/saved .*step-00000002/);

    // chat --detector: the image's boxes are detected now, printed, and give the same answer as the same entry via --boxes
    const run = path.join(setup.root, 'runs-owl', 'tiny-pretrain');
    const image = path.join(imgs, `${recs[0]!.image}`);
    const ask = ['--image', image, '--max-new-tokens', '4', 'what color is the square ?'];
    const det = await capture(['chat', run, ...ask, '--detector', owl, '--tags-file', tagsFile]);
    expect(det.code, det.err).toBe(0);
    const m = /detector: (\d+) boxes for .*\(3 tags from .*tags\.txt/.exec(det.err);
    expect(m, det.err).not.toBeNull();
    const entry = boxes.entries.get(recs[0]!.id)!;
    expect(Number(m![1])).toBe(entry.boxes.length); // the same boxes as `mgllava boxes` wrote for this image
    expect(det.err).toContain(`  1. ${entry.labels[0]} ${entry.scores[0]!.toFixed(2)} [${entry.boxes[0]!.join(', ')}]`);
    const single = path.join(setup.root, 'one-entry.json');
    await writeFile(single, JSON.stringify(entry));
    const viaFile = await capture(['chat', run, ...ask, '--boxes', single]);
    expect(viaFile.code, viaFile.err).toBe(0);
    expect(det.out).toBe(viaFile.out);
    expect((await capture(['chat', run, ...ask, '--detector', owl, '--boxes', single])).err).toMatch(/not both/);
    expect((await capture(['chat', run, '--detector', owl, 'hi'])).err).toMatch(/--detector needs --image/);
  });
});
