/**
 * Autoregressive generation for MG-LLaVA with the KV cache, for one prompt or a batch.
 *
 *   prompt ids (buildChatPrompt, <image> = -200) + visual tokens
 *     -> splice (model/splice.ts) -> inputs_embeds [B,T,H], right-padded, positions arange per row
 *     -> prefill: llm.forward(embeds, mask, positions, cache, logitRows = each row's last real position)
 *     -> repeat: choose a token per row (sampling.ts) -> llm.forward([B,1] ids, cache)
 *
 * Batching: the splice pads rows on the right, so a shorter row has padding keys in the middle of its
 * cache. The cache keeps every position's mask bit (padding keys stay hidden from later queries) and the
 * next position id per row is its count of real tokens, so each row decodes exactly as it would alone.
 * A finished row keeps stepping with mask 0 (a hidden padding position) until every row is done.
 *
 * Stopping: the tokenizer's EOS id; a stop word that is a special token (e.g. '<|eot_id|>', '<|im_end|>':
 * one id, decoded to nothing) as an id, like EOS; any other stop word on the decoded text (stop.ts); or
 * `maxNewTokens`. Text is decoded with special tokens skipped, as LLaVA decodes answers.
 */
import * as tf from '@tensorflow/tfjs';
import { IMAGE_TOKEN_INDEX } from '../data/constants.js';
import type { TextTokenizer } from '../data/tokenizer.js';
import type { MGLLaVA } from '../model/mgllava.js';
import type { KvCache } from '../model/llm/kv-cache.js';
import { spliceMultimodal } from '../model/splice.js';
import { checkSampling, chooseToken, type SamplingOptions } from './sampling.js';
import { StopText } from './stop.js';

/** The visual tokens of one image (`model.visualTokens` of a batch of 1, see visual.ts). */
export interface VisualTokens {
  /** [N,H] image tokens. */
  image: tf.Tensor2D;
  /** [K,H] object tokens; null for a model without object tokens. */
  objects: tf.Tensor2D | null;
}

export interface GenerationPrompt {
  /** Prompt ids ending where the answer starts; IMAGE_TOKEN_INDEX once when `visual` is given. */
  ids: readonly number[];
  /** The prompt's image; null for a text-only prompt (no placeholder). Not disposed by `generate`. */
  visual: VisualTokens | null;
}

export interface GenerateOptions extends SamplingOptions {
  tokenizer: TextTokenizer;
  /** New tokens per row at most (EOS / stop words end a row earlier). */
  maxNewTokens: number;
  /** `stopWords(template, tokenizer.eosToken)` (templates.ts). */
  stopWords: readonly string[];
  /** Streaming: newly released answer text of a row (see stop.ts for what is held back). */
  onToken?: (textDelta: string, row: number) => void;
  /** Stop every row at the next step (e.g. Ctrl-C in the chat REPL). */
  signal?: AbortSignal;
}

export type FinishReason = 'eos' | 'stop' | 'length' | 'aborted';

export interface Generation {
  /** The answer: decoded text up to the first stop word, trailing whitespace trimmed. */
  text: string;
  /** Generated ids, without a final EOS / special stop token (the ids of a textual stop word are included). */
  ids: number[];
  finish: FinishReason;
}

export async function generate(model: MGLLaVA, prompts: readonly GenerationPrompt[], o: GenerateOptions): Promise<Generation[]> {
  if (prompts.length === 0) return [];
  if (!(Number.isInteger(o.maxNewTokens) && o.maxNewTokens >= 1)) throw new Error(`generate: maxNewTokens must be an integer >= 1, got ${o.maxNewTokens}`);
  checkSampling(o);
  const b = prompts.length;
  const allowed = Math.min(model.config.llm.vocabSize, o.tokenizer.vocabSize);
  const plan = stopPlan(o.tokenizer, o.stopWords);
  const rows = prompts.map(() => ({ ids: [] as number[], stop: new StopText(plan.text), finish: null as FinishReason | null }));

  const cache = model.llm.createCache();
  try {
    let logits = prefill(model, prompts, cache); // [B,V]
    for (;;) {
      const data = await logits.data();
      logits.dispose();
      // Backends resolve reads as microtasks: give events (a Ctrl-C that aborts) a turn of the event loop.
      if (o.signal) await new Promise((resolve) => setImmediate(resolve));
      const next = new Int32Array(b);
      const mask = new Int32Array(b);
      rows.forEach((r, i) => {
        if (r.finish) return;
        if (o.signal?.aborted) {
          r.finish = 'aborted';
          emit(o, i, r.stop.finish(decode(o.tokenizer, r.ids)));
          return;
        }
        const v = data.length / b;
        const id = chooseToken(data.subarray(i * v, (i + 1) * v), allowed, o);
        if (plan.ids.has(id)) {
          r.finish = id === o.tokenizer.eosId ? 'eos' : 'stop';
          emit(o, i, r.stop.finish(decode(o.tokenizer, r.ids)));
          return;
        }
        r.ids.push(id);
        const u = r.stop.update(decode(o.tokenizer, r.ids));
        emit(o, i, u.delta);
        if (u.stop) r.finish = 'stop';
        else if (r.ids.length >= o.maxNewTokens) {
          r.finish = 'length';
          emit(o, i, r.stop.finish(decode(o.tokenizer, r.ids)));
        } else {
          next[i] = id;
          mask[i] = 1;
        }
      });
      if (rows.every((r) => r.finish)) break;
      logits = tf.tidy(() => {
        const out = model.llm.forward({ inputIds: { data: next, shape: [b, 1] }, attentionMask: { data: mask, shape: [b, 1] }, cache }).logits; // [B,1,V]
        return out.reshape([b, out.shape[2]!]);
      });
    }
  } finally {
    cache.dispose();
  }
  return rows.map((r) => ({ text: r.stop.text, ids: r.ids, finish: r.finish! }));
}

function emit(o: GenerateOptions, row: number, delta: string): void {
  if (delta && o.onToken) o.onToken(delta, row);
}

function decode(tokenizer: TextTokenizer, ids: readonly number[]): string {
  return ids.length ? tokenizer.decode(ids) : '';
}

/** Stop ids (EOS + stop words that are one special token) and the stop words matched on the text. */
export function stopPlan(tokenizer: TextTokenizer, stopWords: readonly string[]): { ids: Set<number>; text: string[] } {
  const ids = new Set<number>();
  if (tokenizer.eosId !== null) ids.add(tokenizer.eosId);
  const text: string[] = [];
  for (const w of stopWords) {
    const id = tokenizer.tokenToId(w);
    // A special token decodes to nothing with specials skipped: it can only be caught as an id.
    if (id !== undefined && id < tokenizer.vocabSize && tokenizer.decode([id]) === '') ids.add(id);
    else text.push(w);
  }
  return { ids, text };
}

/** Splice the batch, run it through the LLM into the cache; logits of each row's last real position [B,V]. */
function prefill(model: MGLLaVA, prompts: readonly GenerationPrompt[], cache: KvCache): tf.Tensor2D {
  const b = prompts.length;
  const width = Math.max(...prompts.map((p) => p.ids.length));
  if (width === 0) throw new Error('generate: every prompt is empty');
  const ids = new Int32Array(b * width);
  const mask = new Int32Array(b * width);
  prompts.forEach((p, r) => {
    const placeholders = p.ids.filter((id) => id === IMAGE_TOKEN_INDEX).length;
    if (p.visual && placeholders !== 1) throw new Error(`generate: prompt ${r} has an image but ${placeholders} <image> placeholders (expected 1)`);
    if (!p.visual && placeholders !== 0) throw new Error(`generate: prompt ${r} has an <image> placeholder but no image`);
    if (p.ids.length === 0) throw new Error(`generate: prompt ${r} is empty`);
    ids.set(p.ids, r * width);
    mask.fill(1, r * width, r * width + p.ids.length);
  });
  return tf.tidy(() => {
    const withImage = prompts.find((p) => p.visual)?.visual ?? null;
    // Once any sample has an image, the splice consumes one image slot per sample: text-only rows get zeros.
    const image = withImage
      ? (tf.stack(prompts.map((p) => p.visual?.image ?? tf.zerosLike(withImage.image))) as tf.Tensor3D) // [B,N,H]
      : null;
    // spliceMultimodal is what model.splice runs; called directly because a text-only batch has no image tensor.
    const s = spliceMultimodal({
      inputIds: { data: ids, shape: [b, width] },
      attentionMask: { data: mask, shape: [b, width] },
      embedTokens: (x) => model.llm.embed(x),
      imageEmbeds: image,
      objectEmbeds: prompts.map((p) => p.visual?.objects ?? null),
      vocabSize: model.config.llm.vocabSize,
    });
    const t = s.attentionMask.shape[1];
    const last = new Int32Array(b);
    for (let r = 0; r < b; r++) {
      let n = 0;
      for (let i = 0; i < t; i++) n += s.attentionMask.data[r * t + i]!;
      last[r] = r * t + n - 1;
    }
    return model.llm.forward({ inputsEmbeds: s.inputsEmbeds, attentionMask: s.attentionMask, positionIds: s.positionIds, cache, logitRows: last }).logits as tf.Tensor2D; // [B,V]
  });
}
