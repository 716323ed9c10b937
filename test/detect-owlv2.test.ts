// OWLv2 detection: blocked attention, box bias, preprocessing operators, query tokenisation, config and
// directory loading, and the detection session on generated images (no golden values here: see
// golden-owlv2.test.ts for parity with the PyTorch reference).
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blockedAttention, scaledDotProductAttention } from '../src/nn/attention.js';
import { readSafetensors, writeSafetensors } from '../src/io/safetensors.js';
import { writeTorchPth } from '../src/io/torch-pth.js';
import { loadWeights } from '../src/nn/module.js';
import { toTf } from '../src/io/host-tensor.js';
import { nchwToNhwc } from '../src/nn/conv.js';
import { toIntMatrix } from '../src/model/llm/int-matrix.js';
import { MgllavaError, UsageError } from '../src/errors.js';
import { Rng } from '../src/util/rng.js';
import { OWLV2_HF_DEFAULTS, OWLV2_PRESETS, owlv2ConfigFromHf } from '../src/model/detector/config.js';
import { boxBias } from '../src/model/detector/heads.js';
import { Owlv2Detector } from '../src/model/detector/owlv2.js';
import { F32_MIN, textAttentionBias } from '../src/model/detector/text-tower.js';
import { loadOwlv2 } from '../src/model/detector/load.js';
import {
  antialiasSigma,
  gaussianOperator,
  gaussianWeights,
  mirrorIndex,
  operatorMatrix,
  owlv2Preprocess,
  owlv2Resize,
  padBottomRight,
  rescaleImage,
  zoomOperator,
} from '../src/detect/preprocess.js';
import { mgllavaBoxes } from '../src/detect/postprocess.js';
import { parseTags, queryText, resolveTags, tokenizeQueries } from '../src/detect/queries.js';
import { Owlv2Session, detectBoxes } from '../src/detect/detect.js';
import { TINY_OWLV2, hfConfigJson, writeTestImage, writeTinyOwlv2Dir } from './owlv2-fixture.js';

const GOLDEN = path.resolve(import.meta.dirname, '../../shared/golden/owlv2-public');

function randomTensor(shape: number[], rng: Rng): tf.Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  return tf.tensor(Float32Array.from({ length: n }, () => rng.normal()), shape);
}

describe('blocked attention', () => {
  it('equals the unblocked computation for head blocks, row blocks and broadcast biases', () => {
    const before = tf.memory().numTensors;
    const rng = new Rng(5);
    tf.tidy(() => {
      const [b, h, t, hd] = [2, 4, 37, 8];
      const q = randomTensor([b, h, t, hd], rng) as tf.Tensor4D;
      const k = randomTensor([b, h, t, hd], rng) as tf.Tensor4D;
      const v = randomTensor([b, h, t, hd], rng) as tf.Tensor4D;
      const causal = tf.tensor4d(Float32Array.from({ length: t * t }, (_, i) => (i % t > Math.floor(i / t) ? -1e9 : 0)), [1, 1, t, t]);
      const perRow = tf.mul(randomTensor([b, 1, t, t], rng), 0.5);
      const perHead = randomTensor([1, h, 1, t], rng);
      for (const bias of [null, causal, perRow, perHead]) {
        const full = scaledDotProductAttention(q, k, v, bias, 0.3);
        // whole (budget large enough), 3 heads per block, 1 head per block, 5-row blocks, 1-row blocks
        for (const budget of [b * h * t * t, 3 * b * t * t, b * t * t + 1, 5 * b * t, 1]) {
          const blocked = blockedAttention(q, k, v, bias, 0.3, budget);
          expect(blocked.shape).toEqual(full.shape);
          const diff = tf.max(tf.abs(tf.sub(blocked, full))).dataSync()[0]!;
          expect(diff, `budget ${budget}`).toBeLessThanOrEqual(1e-6);
        }
      }
    });
    expect(tf.memory().numTensors).toBe(before);
  });

  it('the golden detector gives the same outputs with a tiny attention block', async () => {
    const params = await readSafetensors(path.join(GOLDEN, 'detector.params.safetensors'));
    const io = await readSafetensors(path.join(GOLDEN, 'detector.io.safetensors'));
    const model = new Owlv2Detector(TINY_OWLV2, { rng: new Rng(0), skipInit: true });
    try {
      loadWeights(model, params);
      const tokens = { ids: toIntMatrix(io.get('input.input_ids')!, 'ids'), mask: toIntMatrix(io.get('input.attention_mask')!, 'mask') };
      const run = () =>
        tf.tidy(() => {
          const o = model.forward(tokens, nchwToNhwc(toTf(io.get('input.pixel_values')!)));
          return [o.logits, o.predBoxes, o.textEmbeds].map((t) => Array.from(t.dataSync()));
        });
      const whole = run();
      const before = tf.memory().numTensors;
      model.maxAttentionScores = 50; // < one row of 65 keys: every block is one query row of one head
      const blocked = run();
      expect(tf.memory().numTensors).toBe(before);
      for (let i = 0; i < whole.length; i++) {
        const d = Math.max(...whole[i]!.map((x, j) => Math.abs(x - blocked[i]![j]!)));
        expect(d).toBeLessThanOrEqual(1e-6);
      }
    } finally {
      model.dispose();
    }
  });
});

describe('text attention mask', () => {
  it('is causal + key padding and finite where both apply (F32_MIN, not -inf: GPU backends need no infinities)', () => {
    const bias = textAttentionBias({ data: Int32Array.from([1, 1, 0, 0]), shape: [1, 4] }, 4);
    const v = Array.from(bias.dataSync());
    bias.dispose();
    const m = F32_MIN / 2;
    expect(v.every(Number.isFinite)).toBe(true);
    // row i = query, column j = key: keys 2, 3 are padding
    expect(v.slice(0, 4)).toEqual([0, m, 2 * m, 2 * m]);
    expect(v.slice(8, 12)).toEqual([0, 0, m, 2 * m]);
    expect(v[15]).toBe(m);
    expect(Math.fround(2 * m)).toBe(Math.fround(F32_MIN));
  });
});

describe('box bias', () => {
  it('is computed in float32 at the patch corners, (cx, cy, w, h), row-major', () => {
    const g = 72;
    const bias = boxBias(g, g);
    const last = (g * g - 1) * 4;
    // fp32: 1 + 1e-4 and -1 + 1e-4 round (OWLV2.md §6): 9.2102747 (the golden value) against float64's 9.2104404
    expect(bias[last]).toBeCloseTo(9.2102747, 6);
    expect(Math.abs(bias[last]! - (Math.log(1 + 1e-4) - Math.log1p(-1 + 1e-4)))).toBeGreaterThan(1e-4);
    // token 1 = row 0, col 1 of a 3x5 grid: cx = 2/5, cy = 1/3
    const b35 = boxBias(3, 5);
    const logit = (v: number) => Math.log(v + 1e-4) - Math.log1p(-v + 1e-4);
    expect(b35[4]).toBeCloseTo(logit(2 / 5), 5);
    expect(b35[5]).toBeCloseTo(logit(1 / 3), 5);
    expect(b35[6]).toBeCloseTo(logit(1 / 5), 5);
    expect(b35[7]).toBeCloseTo(logit(1 / 3), 5);
  });
});

describe('preprocessing', () => {
  const rng = new Rng(9);
  const image = (w: number, h: number) => ({ width: w, height: h, data: Uint8Array.from({ length: w * h * 3 }, () => Math.floor(rng.next() * 256)) });

  it('mirrors indices without repeating the edge sample', () => {
    expect([-3, -2, -1, 0, 4, 5, 6, 7, 8].map((i) => mirrorIndex(i, 5))).toEqual([3, 2, 1, 0, 4, 3, 2, 1, 0]);
    expect(mirrorIndex(7, 1)).toBe(0);
  });

  it('builds normalised Gaussian and zoom operators (rows sum to 1), no blur when enlarging', () => {
    const w = gaussianWeights(0.59375);
    expect(w.length).toBe(5); // radius int(4 * 0.594 + 0.5) = 2
    expect(w.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 12);
    for (const op of [gaussianOperator(11, 1.3), zoomOperator(70, 32), zoomOperator(13, 32), zoomOperator(1, 4)]) {
      const m = operatorMatrix(op);
      for (let r = 0; r < op.nOut; r++) expect(m.subarray(r * op.nIn, (r + 1) * op.nIn).reduce((a, b) => a + b, 0)).toBeCloseTo(1, 6);
    }
    expect(antialiasSigma(20, 32)).toBe(0);
    expect(antialiasSigma(70, 32)).toBeCloseTo(0.59375, 12);
    // enlarging: the first output sample is mirrored (c = -0.1875 -> 0.1875), not clamped
    const z = operatorMatrix(zoomOperator(20, 32));
    expect(z[0]).toBeCloseTo(0.8125, 6);
    expect(z[1]).toBeCloseTo(0.1875, 6);
  });

  it('pads bottom/right with the pad value and keeps a same-size image unchanged', () => {
    const img = image(5, 3);
    const padded = padBottomRight(rescaleImage(img), 0.5);
    expect([padded.height, padded.width]).toEqual([5, 5]);
    expect(padded.data[(0 * 5 + 4) * 3]).toBeCloseTo(img.data[4 * 3]! / 255, 6); // top-left stays
    expect(Array.from(padded.data.subarray((4 * 5 + 0) * 3, (4 * 5 + 0) * 3 + 3))).toEqual([0.5, 0.5, 0.5]); // bottom rows padded
    const same = owlv2Resize(padded, 5, 5);
    expect(Array.from(same.data)).toEqual(Array.from(padded.data));
    const p0 = owlv2Preprocess(img, { size: 8, padValue: 0 });
    const p5 = owlv2Preprocess(img, { size: 8 });
    expect(p0.pixels.length).toBe(8 * 8 * 3);
    expect([p5.width, p5.height]).toEqual([5, 3]);
    // the last row is all padding: (0 - mean) / std vs (0.5 - mean) / std
    expect(p0.pixels[(7 * 8) * 3]).toBeCloseTo(-0.48145466 / 0.26862954, 5);
    expect(p5.pixels[(7 * 8) * 3]).toBeCloseTo((0.5 - 0.48145466) / 0.26862954, 5);
  });
});

describe('queries', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'mgllava-owl-q-'));
    await writeTinyOwlv2Dir(dir, 2);
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('parses tag lists (commas, lines, RAM++ bars), trims and drops repeats', async () => {
    expect(parseTags(' dog, cat |red ball\n\ndog ,')).toEqual(['dog', 'cat', 'red ball']);
    expect((await resolveTags({})).shared).toHaveLength(80);
    expect((await resolveTags({ tags: 'a,b' })).shared).toEqual(['a', 'b']);
    const perImage = path.join(dir, 'tags.json');
    await writeFile(perImage, JSON.stringify({ 'a.png': 'dog | frisbee | grass', r2: ['cat', ' sofa '] }));
    const t = await resolveTags({ tagsFile: perImage });
    expect(t.shared).toBeNull();
    expect(t.tagsFor('a.png')).toEqual(['dog', 'frisbee', 'grass']);
    expect(t.tagsFor('r2')).toEqual(['cat', 'sofa']);
    expect(t.tagsFor('r3')).toBeUndefined();
    await writeFile(perImage, JSON.stringify({ x: 3 }));
    await expect(resolveTags({ tagsFile: perImage })).rejects.toThrow(/tags of "x" must be/);
    await expect(resolveTags({ tags: ' , ' })).rejects.toThrow(UsageError);
    await expect(resolveTags({ tags: 'a', tagsFile: 'x' })).rejects.toThrow(/not both/);
    await expect(resolveTags({ tagsFile: path.join(dir, 'nope.txt') })).rejects.toThrow(/nope\.txt/);
  });

  it('tokenises "a photo of {tag}" as [BOS, ..., EOS, 0...] to 16 positions through tokenizer.json', async () => {
    const { tokenizer, model } = await loadOwlv2(dir);
    try {
      const t = tokenizeQueries(tokenizer, [queryText('dog'), queryText('Red Cat')], model.config.text);
      expect(t.ids.shape).toEqual([2, 16]);
      const row0 = Array.from(t.ids.data.subarray(0, 16));
      // a</w> photo</w> of</w> d o g</w>
      expect(row0.slice(0, 8)).toEqual([98, 27, 56, 57, 4, 15, 33, 99]);
      expect(row0.slice(8)).toEqual(new Array(8).fill(0));
      expect(Array.from(t.mask.data.subarray(0, 16))).toEqual([...new Array(8).fill(1), ...new Array(8).fill(0)]);
      expect(Array.from(t.ids.data.subarray(16, 32)).indexOf(99)).toBe(10); // lower-cased: a photo of r e d c a t</w>
      expect(() => tokenizeQueries(tokenizer, [queryText('abcdefghijklmnop')], model.config.text)).toThrow(/at most 16/);
    } finally {
      model.dispose();
    }
  });
});

describe('config and directory loading', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'mgllava-owl-load-'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('reads HF config.json with HF defaults for absent keys', () => {
    expect(owlv2ConfigFromHf({})).toEqual(OWLV2_HF_DEFAULTS);
    // the large checkpoint's config.json lists only the non-default keys
    const large = owlv2ConfigFromHf({
      model_type: 'owlv2',
      projection_dim: 768,
      text_config: { hidden_size: 768, intermediate_size: 3072, num_attention_heads: 12 },
      vision_config: { hidden_size: 1024, image_size: 1008, intermediate_size: 4096, num_attention_heads: 16, num_hidden_layers: 24, patch_size: 14 },
    });
    expect(large).toEqual(OWLV2_PRESETS.large);
    expect(owlv2ConfigFromHf({ vision_config: { image_size: 960 } })).toEqual(OWLV2_PRESETS.base);
    expect(() => owlv2ConfigFromHf({ model_type: 'clip' })).toThrow(MgllavaError);
    expect(() => owlv2ConfigFromHf({ projection_dim: 256 })).toThrow(/projectionDim 256 must equal text hiddenSize 512/);
    expect(() => owlv2ConfigFromHf({ text_config: { hidden_act: 'gelu' } })).toThrow(/quick_gelu/);
  });

  it('loads every weight by its HF name (the golden detector names), and names what is wrong', async () => {
    const d = path.join(dir, 'ok');
    const weights = await writeTinyOwlv2Dir(d, 3);
    const golden = await readSafetensors(path.join(GOLDEN, 'detector.params.safetensors'));
    expect([...weights.keys()].sort()).toEqual([...golden.keys()].sort());
    const { model } = await loadOwlv2(d);
    try {
      const w = model.weightMap();
      for (const name of ['class_head.dense0.weight', 'owlv2.logit_scale', 'owlv2.vision_model.pre_layernorm.bias']) {
        expect(Array.from(w.get(name)!.dataSync())).toEqual(Array.from(weights.get(name)!.data));
      }
    } finally {
      model.dispose();
    }
    // a missing tensor
    const bad = path.join(dir, 'missing');
    await writeTinyOwlv2Dir(bad, 3);
    const partial = new Map(weights);
    partial.delete('box_head.dense2.bias');
    await writeSafetensors(path.join(bad, 'model.safetensors'), partial);
    await expect(loadOwlv2(bad)).rejects.toThrow(/missing 1: box_head\.dense2\.bias/);
    // config.json says a different size
    const other = path.join(dir, 'other');
    await writeTinyOwlv2Dir(other, 3);
    await writeFile(path.join(other, 'config.json'), JSON.stringify(hfConfigJson({ ...TINY_OWLV2, vision: { ...TINY_OWLV2.vision, imageSize: 40 } })));
    await expect(loadOwlv2(other)).rejects.toThrow(/shape mismatch: owlv2\.vision_model\.embeddings\.position_embedding\.weight/);
    // a PyTorch pytorch_model.bin (through the repo's checkpoint reader) loads the same weights
    const pickle = path.join(dir, 'pickle');
    await writeTinyOwlv2Dir(pickle, 3);
    await rm(path.join(pickle, 'model.safetensors'));
    await writeTorchPth(path.join(pickle, 'pytorch_model.bin'), weights);
    const fromBin = await loadOwlv2(pickle);
    try {
      expect(fromBin.weights).toMatch(/pytorch_model\.bin$/);
      for (const [name, v] of fromBin.model.weightMap()) expect(Array.from(v.dataSync()), name).toEqual(Array.from(weights.get(name)!.data));
    } finally {
      fromBin.model.dispose();
    }
    await writeFile(path.join(pickle, 'pytorch_model.bin'), 'not a checkpoint');
    await expect(loadOwlv2(pickle)).rejects.toThrow(/pytorch_model\.bin/);
    // no tokenizer
    const notok = path.join(dir, 'notok');
    await writeTinyOwlv2Dir(notok, 3);
    await rm(path.join(notok, 'tokenizer.json'));
    await expect(loadOwlv2(notok)).rejects.toThrow(/no tokenizer\.json/);
    await expect(loadOwlv2(path.join(dir, 'nope'))).rejects.toThrow(/no such directory/);
  });
});

describe('detection session', () => {
  let dir: string;
  let session: Owlv2Session;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'mgllava-owl-det-'));
    await writeTinyOwlv2Dir(path.join(dir, 'owl'), 4);
    await writeTestImage(path.join(dir, 'a.png'), 40, 30, 1);
    await writeTestImage(path.join(dir, 'b.jpg'), 24, 50, 2);
    session = await Owlv2Session.open(path.join(dir, 'owl'));
  });
  afterAll(async () => {
    session.dispose();
    await rm(dir, { recursive: true, force: true });
  });

  it('gives integer boxes in image pixels, tag labels, scores over the threshold by descending score, NMS applied', async () => {
    session.setTags(['dog', 'cat', 'ball']);
    await session.detectFile(path.join(dir, 'b.jpg')); // first call: the box bias is built and kept
    const before = tf.memory().numTensors;
    const entry = await session.detectFile(path.join(dir, 'a.png'));
    await session.detectFile(path.join(dir, 'b.jpg'));
    expect(tf.memory().numTensors).toBe(before);
    expect(entry.boxes.length).toBeGreaterThan(0);
    expect(entry.boxes.length).toBeLessThan(64);
    for (const b of entry.boxes) for (const v of b) expect(Number.isInteger(v)).toBe(true);
    for (const l of entry.labels) expect(['dog', 'cat', 'ball']).toContain(l);
    for (let i = 1; i < entry.scores.length; i++) expect(entry.scores[i]!).toBeLessThanOrEqual(entry.scores[i - 1]!);
    for (const s of entry.scores) expect(s).toBeGreaterThan(0.2);
    // the same as the raw outputs through mgllavaBoxes (no cap: the data pipeline caps later)
    const { decodeImage } = await import('../src/data/image.js');
    const img = await decodeImage(path.join(dir, 'a.png'));
    const raw = await session.rawOutputs(img);
    const ref = mgllavaBoxes(raw.logits, raw.predBoxes, img, session.tags, { threshold: 0.2, iouThreshold: 0.2, limitNum: null, numPerCategory: 20 });
    expect(entry.boxes).toEqual(ref.boxes);
    // raw detections (no NMS) keep every patch over the threshold, in patch order
    const rawEntry = await session.detectFile(path.join(dir, 'a.png'), { nms: null });
    expect(rawEntry.boxes.length).toBe(ref.detections.keepIndex.length);
    expect(rawEntry.boxes.length).toBeGreaterThanOrEqual(entry.boxes.length);
    // a higher threshold keeps fewer boxes
    const strict = await session.detectFile(path.join(dir, 'a.png'), { threshold: 0.6 });
    for (const s of strict.scores) expect(s).toBeGreaterThan(0.6);
  });

  it("caches each tag's embedding: a list assembled from cached tags detects the same as one encoded in a batch", async () => {
    session.setTags(['dog', 'cat', 'ball']);
    const batched = await session.detectFile(path.join(dir, 'a.png'));
    const fresh = await Owlv2Session.open(path.join(dir, 'owl'));
    try {
      fresh.setTags(['ball']);
      fresh.setTags(['cat']);
      const before = tf.memory().numTensors;
      fresh.setTags(['dog', 'cat', 'ball']); // one new embedding (dog); the query tensor is replaced
      expect(tf.memory().numTensors).toBe(before + 1);
      expect(await fresh.detectFile(path.join(dir, 'a.png'))).toEqual(batched);
    } finally {
      fresh.dispose();
    }
  });

  it('encodes tags once per list; detectBoxes reuses an open session', async () => {
    const e1 = await detectBoxes(session, path.join(dir, 'a.png'), ['dog']);
    expect(new Set(e1.labels)).toEqual(new Set(['dog']));
    const before = tf.memory().numTensors;
    const e2 = await detectBoxes(session, path.join(dir, 'a.png'), ['dog']);
    expect(e2).toEqual(e1);
    expect(tf.memory().numTensors).toBe(before);
    await expect(session.detectFile(path.join(dir, 'missing.png'))).rejects.toThrow(/missing\.png/);
  });
});
