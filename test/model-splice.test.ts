import { resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { runGolden } from '../src/golden/run.js';
import { RUNNERS } from '../src/golden/pieces/index.js';
import { IMAGE_TOKEN_INDEX, spliceMultimodal, type SpliceInputs } from '../src/model/splice.js';

const GOLDEN = resolve(import.meta.dirname, '../../shared/golden/public');
const IMG = IMAGE_TOKEN_INDEX;
const H = 3;

/** Embedding table whose row i is [i, i + 0.5, -i]: every output row says where it came from. */
const table = () => tf.tensor2d(Array.from({ length: 10 }, (_, i) => [i, i + 0.5, -i]));
/** Image i token n = [100 + 10 i + n, ...]; object k of sample s = [200 + 10 s + k, ...]. */
const images = (n: number, tokens: number) => tf.tensor3d(Array.from({ length: n }, (_, i) => Array.from({ length: tokens }, (_, t) => [100 + 10 * i + t, 0, 0])));
const objects = (s: number, k: number) => tf.tensor2d(Array.from({ length: k }, (_, j) => [200 + 10 * s + j, 0, 0]));

function rows(x: tf.Tensor): number[][][] {
  return x.arraySync() as number[][][];
}

describe('spliceMultimodal', () => {
  it('matches the golden pieces splice and splice_textonly (clean and official phantom row)', async () => {
    const report = await runGolden(GOLDEN, RUNNERS, ['splice', 'splice_textonly']);
    for (const name of ['splice', 'splice_textonly']) {
      const p = report.pieces[name]!;
      expect(p.reason ?? '', name).toBe('');
      expect(p.ok).toBe(true);
    }
    expect(report.pieces.splice_textonly!.checks.map((c) => c.name)).toContain('output_official_phantom.position_ids');
  });

  it('places text, image and object tokens per sample, drops masked positions, pads on the right', () => {
    const emb = table();
    const img = images(2, 2);
    const obj = [objects(0, 1), objects(1, 2)];
    const out = spliceMultimodal({
      inputIds: [
        [1, IMG, 2, 3],
        [4, 5, IMG, 0],
      ],
      labels: [
        [-100, -100, 2, 3],
        [-100, 5, -100, -100],
      ],
      attentionMask: [
        [1, 1, 1, 1],
        [1, 1, 1, 0],
      ],
      embedTokens: (ids) => tf.gather(emb, ids),
      imageEmbeds: img,
      objectEmbeds: obj,
    });
    expect(out.inputsEmbeds.shape).toEqual([2, 6, H]);
    expect(rows(out.inputsEmbeds).map((r) => r.map((v) => v[0]))).toEqual([
      [1, 100, 101, 200, 2, 3],
      [4, 5, 110, 111, 210, 211],
    ]);
    expect(Array.from(out.labels.data)).toEqual([-100, -100, -100, -100, 2, 3, -100, 5, -100, -100, -100, -100]);
    expect(Array.from(out.attentionMask.data)).toEqual([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
    expect(Array.from(out.positionIds.data)).toEqual([0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]);
    expect(Array.from(out.rowSample)).toEqual([0, 1]);
    tf.dispose([emb, img, ...obj, out.inputsEmbeds]);
  });

  it('handles samples without objects, text-only samples, repeated placeholders and truncation', () => {
    const emb = table();
    const img = images(4, 2);
    const obj = [null, undefined, objects(2, 1)];
    const inputs: SpliceInputs = {
      inputIds: [
        [1, IMG, 2], // no objects
        [3, 4, 5], // text-only: consumes image 1, gets no visual token
        [IMG, 6, IMG], // two placeholders: images 2 and 3, each followed by this sample's object
      ],
      embedTokens: (ids) => tf.gather(emb, ids),
      imageEmbeds: img,
      objectEmbeds: obj,
    };
    const out = spliceMultimodal(inputs);
    expect(rows(out.inputsEmbeds).map((r) => r.map((v) => v[0]))).toEqual([
      [1, 100, 101, 2, 0, 0, 0],
      [3, 4, 5, 0, 0, 0, 0],
      [120, 121, 220, 6, 130, 131, 220],
    ]);
    expect(Array.from(out.labels.data).every((l) => l === -100)).toBe(true); // no labels given
    expect(Array.from(out.positionIds.data)).toEqual([0, 1, 2, 3, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6]);
    const cut = spliceMultimodal(inputs, { maxLength: 4 });
    expect(cut.inputsEmbeds.shape).toEqual([3, 4, H]);
    expect(Array.from(cut.attentionMask.data)).toEqual([1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1]);
    const phantom = spliceMultimodal(inputs, { phantomRowForTextOnly: true });
    expect(Array.from(phantom.rowSample)).toEqual([0, 1, -1, 2]);
    expect(Array.from(phantom.attentionMask.data.subarray(2 * 7, 3 * 7))).toEqual([0, 0, 0, 0, 0, 0, 0]);
    // text-only batch without any image
    const text = spliceMultimodal({ inputIds: [[1, 2], [3, 0]], attentionMask: [[1, 1], [1, 0]], embedTokens: (ids) => tf.gather(emb, ids), imageEmbeds: null });
    expect(rows(text.inputsEmbeds).map((r) => r.map((v) => v[0]))).toEqual([[1, 2], [3, 0]]);
    tf.dispose([emb, img, ...obj.filter((o): o is tf.Tensor2D => !!o), out.inputsEmbeds, cut.inputsEmbeds, phantom.inputsEmbeds, text.inputsEmbeds]);
  });

  it('lets gradients flow to the embedding table, the image and the object embeddings', () => {
    const emb = tf.variable(table());
    const img = tf.variable(images(1, 2));
    const obj = tf.variable(objects(0, 2));
    const weight = tf.tensor3d([[[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12], [13, 14, 15], [16, 17, 18], [19, 20, 21]]]); // [1,7,3]
    const { value, grads } = tf.variableGrads(() => {
      const out = spliceMultimodal({ inputIds: [[7, IMG, 7, 2]], embedTokens: (ids) => tf.gather(emb, ids), imageEmbeds: img, objectEmbeds: [obj] });
      return tf.sum(tf.mul(out.inputsEmbeds, weight)) as tf.Scalar;
    }, [emb, img, obj]);
    const g = (v: tf.Variable) => grads[v.name]!.arraySync() as number[][];
    const ge = g(emb);
    expect(ge[7]).toEqual([1 + 16, 2 + 17, 3 + 18]); // token 7 at output positions 0 and 5
    expect(ge[2]).toEqual([19, 20, 21]); // token 2 at position 6
    expect(ge[3]).toEqual([0, 0, 0]); // unused rows get zero
    expect(g(img as tf.Variable)).toEqual([
      [
        [4, 5, 6],
        [7, 8, 9],
      ],
    ]);
    expect(g(obj)).toEqual([
      [10, 11, 12],
      [13, 14, 15],
    ]);
    tf.dispose([value, ...Object.values(grads), emb, img, obj, weight]);
  });

  it('refuses inconsistent inputs with a clear error', () => {
    const emb = table();
    const img = images(1, 2);
    const embedTokens = (ids: tf.Tensor) => tf.gather(emb, ids);
    expect(() => spliceMultimodal({ inputIds: [[1, IMG]], embedTokens, imageEmbeds: null })).toThrow(/imageEmbeds is null/);
    expect(() => spliceMultimodal({ inputIds: [[IMG], [IMG]], embedTokens, imageEmbeds: img })).toThrow(/needs image 1/);
    expect(() => spliceMultimodal({ inputIds: [[1, 2]], embedTokens, imageEmbeds: images(2, 2) })).toThrow(/uses 1 images.*has 2/);
    expect(() => spliceMultimodal({ inputIds: [[1, -5]], embedTokens, imageEmbeds: null })).toThrow(/-5 is neither/);
    expect(() => spliceMultimodal({ inputIds: [[1, 12]], embedTokens, imageEmbeds: null, vocabSize: 10 })).toThrow(/12 is neither/);
    expect(() => spliceMultimodal({ inputIds: [[1]], labels: [[1, 2]], embedTokens, imageEmbeds: null })).toThrow(/labels/);
    expect(() => spliceMultimodal({ inputIds: [[1]], attentionMask: [[0]], embedTokens, imageEmbeds: null })).toThrow(/empty/);
    tf.dispose([emb, img]);
  });

  it('does not leak tensors (forward + backward)', () => {
    const emb = tf.variable(table());
    const img = tf.variable(images(2, 2));
    const obj = tf.variable(objects(0, 2));
    const run = () => {
      const { value, grads } = tf.variableGrads(() => {
        const out = spliceMultimodal({
          inputIds: [[1, IMG, 2], [3, 4, 0]],
          attentionMask: [[1, 1, 1], [1, 1, 0]],
          embedTokens: (ids) => tf.gather(emb, ids),
          imageEmbeds: img,
          objectEmbeds: [obj],
        });
        return tf.sum(tf.square(out.inputsEmbeds)) as tf.Scalar;
      }, [emb, img, obj]);
      tf.dispose([value, ...Object.values(grads)]);
    };
    run();
    const before = tf.memory().numTensors;
    run();
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([emb, img, obj]);
  });
});
