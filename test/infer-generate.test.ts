import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IMAGE_TOKEN_INDEX as IMG } from '../src/data/constants.js';
import { generate, stopPlan, type GenerationPrompt, type VisualTokens } from '../src/infer/generate.js';
import { argmax, chooseToken } from '../src/infer/sampling.js';
import { StopText } from '../src/infer/stop.js';
import { disposeVisual, visualTokensFor } from '../src/infer/visual.js';
import type { MGLLaVA } from '../src/model/mgllava.js';
import { Rng } from '../src/util/rng.js';
import { randomImage, tinyModel, VOCAB, WordTokenizer } from './infer-fixtures.js';

const tok = new WordTokenizer();

/**
 * Uncached greedy decoding: at every step the whole sequence (prompt + generated so far) is spliced by
 * `model.splice` and run through the LLM without a cache; the next token is the argmax of the last row.
 * Also returns the smallest top-1/top-2 logit gap seen (the comparison is only meaningful if it is clear).
 */
function referenceGreedy(model: MGLLaVA, p: GenerationPrompt, maxNew: number): { ids: number[]; minGap: number } {
  const ids: number[] = [];
  let minGap = Infinity;
  while (ids.length < maxNew) {
    const seq = [...p.ids, ...ids];
    const row = tf.tidy(() => {
      const visual = p.visual
        ? { image: p.visual.image.expandDims(0) as tf.Tensor3D, objects: p.visual.objects ? [p.visual.objects] : null }
        : { image: null as unknown as tf.Tensor3D, objects: null };
      const s = model.splice({ inputIds: [seq], attentionMask: [seq.map(() => 1)] }, visual);
      const logits = model.llm.forward({ inputsEmbeds: s.inputsEmbeds, positionIds: s.positionIds }).logits; // [1,T,V]
      return logits.slice([0, s.inputsEmbeds.shape[1] - 1, 0], [1, 1, VOCAB]).dataSync();
    });
    const best = argmax(row);
    const second = Math.max(...Array.from(row).filter((_, i) => i !== best));
    minGap = Math.min(minGap, row[best]! - second);
    if (best === tok.eosId) break;
    ids.push(best);
  }
  return { ids, minGap };
}

describe('generate', () => {
  let model: MGLLaVA;
  let visuals: VisualTokens[];
  let prompts: GenerationPrompt[];

  beforeAll(() => {
    model = tinyModel(3);
    visuals = visualTokensFor(model, [randomImage(1), randomImage(2)]);
    prompts = [
      { ids: [1, 5, IMG, 6, 7], visual: visuals[0]! },
      { ids: [1, 8, 9, 10, 11, 12, 13, IMG, 4], visual: visuals[1]! }, // longer: the others are padded
      { ids: [1, 3, 4], visual: null }, // text-only in a batch with images
    ];
  });

  afterAll(() => {
    visuals.forEach(disposeVisual);
    model.dispose();
  });

  it('cached, batched greedy decoding equals uncached recomputation (and each prompt alone)', async () => {
    const maxNew = 10;
    const batched = await generate(model, prompts, { tokenizer: tok, maxNewTokens: maxNew, stopWords: [] });
    for (const [r, p] of prompts.entries()) {
      const ref = referenceGreedy(model, p, maxNew);
      expect(ref.minGap, `row ${r}: greedy choices too close to compare`).toBeGreaterThan(1e-4); // float noise between cached and uncached paths is ~1e-6
      expect(batched[r]!.ids, `row ${r}`).toEqual(ref.ids);
      expect(batched[r]!.finish).toBe(ref.ids.length < maxNew ? 'eos' : 'length');
      expect(batched[r]!.text).toBe(tok.decode(ref.ids));
      const [alone] = await generate(model, [p], { tokenizer: tok, maxNewTokens: maxNew, stopWords: [] });
      expect(alone!.ids, `row ${r} alone`).toEqual(ref.ids);
    }
    // the rows are not trivially equal (the test would hide a mix-up otherwise)
    expect(new Set(batched.map((g) => g.ids.join(','))).size).toBe(3);
    // a row that finishes early keeps stepping as hidden padding: the others are unaffected
    const stop = [tok.decode([batched[0]!.ids[1]!])];
    const early = await generate(model, prompts, { tokenizer: tok, maxNewTokens: maxNew, stopWords: stop });
    expect(early[0]!.ids.length).toBe(2);
    expect(early.some((g) => g.ids.length > 2)).toBe(true);
    for (const [r, p] of prompts.entries()) {
      const [alone] = await generate(model, [p], { tokenizer: tok, maxNewTokens: maxNew, stopWords: stop });
      expect(early[r], `row ${r} with an early stop in the batch`).toEqual(alone);
    }
  });

  it('stops on a stop word found in the decoded text, trims it, and streams exactly the answer', async () => {
    const [full] = await generate(model, [prompts[1]!], { tokenizer: tok, maxNewTokens: 8, stopWords: [] });
    expect(full!.ids.length).toBeGreaterThanOrEqual(4);
    const stop = tok.decode(full!.ids.slice(2, 4)); // a two-token stop string
    const text = tok.decode(full!.ids);
    const expected = text.slice(0, text.indexOf(stop)).trimEnd();
    const deltas: string[] = [];
    const [g] = await generate(model, [prompts[1]!], { tokenizer: tok, maxNewTokens: 8, stopWords: [stop], onToken: (d, row) => (expect(row).toBe(0), deltas.push(d)) });
    expect(g!.finish).toBe('stop');
    expect(g!.text).toBe(expected);
    expect(g!.text.includes(stop)).toBe(false);
    expect(deltas.join('')).toBe(g!.text);
    // EOS text as a stop word: with the EOS id disabled, '</s>' in the decoded text still stops
    const noEos = new WordTokenizer(VOCAB, false);
    const [h] = await generate(model, [prompts[1]!], { tokenizer: noEos, maxNewTokens: 8, stopWords: [tok.decode(full!.ids.slice(0, 1))] });
    expect(h!.finish).toBe('stop');
    expect(h!.text).toBe('');
  });

  it('a stop word that is a special token stops as an id (special tokens never reach the text)', async () => {
    expect(stopPlan(tok, ['</s>', '<s>', 'w5', 'x y'])).toEqual({ ids: new Set([2, 1]), text: ['w5', 'x y'] });
    const greedy = await generate(model, prompts, { tokenizer: tok, maxNewTokens: 10, stopWords: [] });
    const r = greedy.findIndex((g) => g.ids.indexOf(1) > 0); // a row whose greedy answer contains <s> (id 1)
    expect(r).toBeGreaterThanOrEqual(0);
    const full = greedy[r]!;
    const at = full.ids.indexOf(1);
    expect(full.text).not.toContain('<s>');
    const [g] = await generate(model, [prompts[r]!], { tokenizer: tok, maxNewTokens: 10, stopWords: ['<s>'] });
    expect(g).toEqual({ ids: full.ids.slice(0, at), text: tok.decode(full.ids.slice(0, at)), finish: 'stop' });
  });

  it('sampling is deterministic per seed; temperature 0 is greedy; top-p in effect', async () => {
    const run = (o: { temperature: number; topP?: number; seed: number }) =>
      generate(model, prompts, { tokenizer: tok, maxNewTokens: 8, stopWords: [], temperature: o.temperature, topP: o.topP, rng: new Rng(o.seed) });
    const a = await run({ temperature: 1.5, topP: 0.95, seed: 11 });
    const b = await run({ temperature: 1.5, topP: 0.95, seed: 11 });
    expect(a.map((g) => g.ids)).toEqual(b.map((g) => g.ids));
    const others = await Promise.all([12, 13, 14].map((seed) => run({ temperature: 1.5, topP: 0.95, seed })));
    expect(others.some((o) => JSON.stringify(o.map((g) => g.ids)) !== JSON.stringify(a.map((g) => g.ids)))).toBe(true);
    const greedy = await generate(model, prompts, { tokenizer: tok, maxNewTokens: 8, stopWords: [] });
    const t0 = await run({ temperature: 0, seed: 5 });
    expect(t0.map((g) => g.ids)).toEqual(greedy.map((g) => g.ids));
    // a vanishing nucleus keeps only the most likely token: greedy again, whatever the temperature
    const tiny = await run({ temperature: 3, topP: 1e-9, seed: 5 });
    expect(tiny.map((g) => g.ids)).toEqual(greedy.map((g) => g.ids));
  });

  it('honours maxNewTokens and an abort signal; refuses an image placeholder without an image', async () => {
    const [g] = await generate(model, [prompts[0]!], { tokenizer: new WordTokenizer(VOCAB, false), maxNewTokens: 3, stopWords: [] });
    expect(g!.ids.length).toBe(3);
    expect(g!.finish).toBe('length');
    const ac = new AbortController();
    ac.abort();
    const [a] = await generate(model, [prompts[0]!], { tokenizer: tok, maxNewTokens: 5, stopWords: [], signal: ac.signal });
    expect(a).toEqual({ text: '', ids: [], finish: 'aborted' });
    // an abort from an event (a timer here, Ctrl-C in the REPL) is seen while generating
    const live = new AbortController();
    setTimeout(() => live.abort(), 30);
    const [b] = await generate(model, [prompts[2]!], { tokenizer: new WordTokenizer(VOCAB, false), maxNewTokens: 1_000_000, stopWords: [], signal: live.signal });
    expect(b!.finish).toBe('aborted');
    expect(b!.ids.length).toBeGreaterThan(0);
    await expect(generate(model, [{ ids: [1, IMG, 4], visual: null }], { tokenizer: tok, maxNewTokens: 2, stopWords: [] })).rejects.toThrow(/placeholder but no image/);
    await expect(generate(model, [{ ids: [1, 4], visual: visuals[0]! }], { tokenizer: tok, maxNewTokens: 2, stopWords: [] })).rejects.toThrow(/0 <image> placeholders/);
    await expect(generate(model, prompts, { tokenizer: tok, maxNewTokens: 2, stopWords: [], temperature: 1 })).rejects.toThrow(/rng/);
  });

  it('never emits an id the tokenizer cannot decode', async () => {
    const small = new WordTokenizer(12);
    const gens = await generate(model, prompts.map((p) => ({ ...p, ids: p.ids.map((id) => (id >= 12 ? 5 : id)) })), {
      tokenizer: small, maxNewTokens: 6, stopWords: [], temperature: 2, rng: new Rng(1),
    });
    for (const g of gens) for (const id of g.ids) expect(id).toBeLessThan(12);
  });

  it('does not leak tensors (visual tokens, prefill, cached steps, sampling)', async () => {
    const before = tf.memory().numTensors;
    const v = visualTokensFor(model, [randomImage(7)]);
    await generate(model, [...prompts, { ids: [1, IMG, 3], visual: v[0]! }], { tokenizer: tok, maxNewTokens: 6, stopWords: ['w9'], temperature: 0.7, topP: 0.9, rng: new Rng(2) });
    await generate(model, [prompts[2]!], { tokenizer: tok, maxNewTokens: 4, stopWords: [] }); // text-only batch
    v.forEach(disposeVisual);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('works for a low-res-only model (no aux encoder, no object tokens)', async () => {
    const m = tinyModel(4, 'lowres');
    const before = tf.memory().numTensors;
    const [v] = visualTokensFor(m, [randomImage(3, 'lowres')]);
    expect(v!.objects).toBeNull();
    expect(v!.image.shape).toEqual([16, 16]); // (28/7)^2 tokens
    const p = { ids: [1, IMG, 5], visual: v! };
    const [g] = await generate(m, [p], { tokenizer: tok, maxNewTokens: 5, stopWords: [] });
    expect(g!.ids).toEqual(referenceGreedy(m, p, 5).ids);
    disposeVisual(v!);
    expect(tf.memory().numTensors).toBe(before);
    m.dispose();
  });
});

describe('chooseToken', () => {
  it('greedy is the first argmax among the allowed ids', () => {
    const row = Float32Array.from([0.1, 2, 2, 0.5, 9]);
    expect(chooseToken(row, 5, {})).toBe(4);
    expect(chooseToken(row, 4, {})).toBe(1); // id 4 is outside the tokenizer
    expect(chooseToken(row, 4, { temperature: 0, rng: new Rng(1) })).toBe(1);
  });

  it('samples softmax(logits / T) and cuts to the nucleus', () => {
    const rng = new Rng(9);
    const row = Float32Array.from([0, Math.log(3)]); // p = [0.25, 0.75] at T = 1
    let ones = 0;
    const n = 4000;
    for (let i = 0; i < n; i++) ones += chooseToken(row, 2, { temperature: 1, rng });
    expect(ones / n).toBeGreaterThan(0.72);
    expect(ones / n).toBeLessThan(0.78);
    // p = [0.5, 0.3, 0.2]: top-p 0.7 keeps the first two (0.5 < 0.7 <= 0.8)
    const three = Float32Array.from([Math.log(5), Math.log(3), Math.log(2)]);
    const seen = new Set<number>();
    for (let i = 0; i < 500; i++) seen.add(chooseToken(three, 3, { temperature: 1, topP: 0.7, rng }));
    expect([...seen].sort()).toEqual([0, 1]);
    // the same seed draws the same sequence
    const draw = (seed: number) => {
      const r = new Rng(seed);
      return Array.from({ length: 20 }, () => chooseToken(three, 3, { temperature: 1, rng: r }));
    };
    expect(draw(4)).toEqual(draw(4));
  });
});

describe('StopText', () => {
  it('holds back possible stop-word prefixes, trailing whitespace and U+FFFD; trims at the stop word', () => {
    const s = new StopText(['</s>', '###']);
    expect(s.update('hello')).toEqual({ delta: 'hello', stop: false });
    expect(s.update('hello #')).toEqual({ delta: '', stop: false });
    expect(s.update('hello ## x')).toEqual({ delta: ' ## x', stop: false });
    expect(s.update('hello ## x\uFFFD')).toEqual({ delta: '', stop: false });
    expect(s.update('hello ## xé </')).toEqual({ delta: 'é', stop: false });
    expect(s.update('hello ## xé </s> more')).toEqual({ delta: '', stop: true });
    expect(s.text).toBe('hello ## xé');
    expect(s.stopped).toBe(true);
    const t = new StopText([]);
    t.update('a b ');
    expect(t.finish('a b c  ')).toBe(' c');
    expect(t.text).toBe('a b c');
    expect(() => new StopText([''])).toThrow(/empty/);
  });
});
