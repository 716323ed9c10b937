/**
 * What a Hugging Face export needs besides the weights for `generate()` to behave like mgllava's chat:
 * which ids start a sequence, end an answer and pad a batch, and how many positions the model knows.
 *
 * The end of an answer is the template's business, not only the tokenizer's: llama3_chat ends answers with
 * `<|eot_id|>` and never trains the tokenizer's EOS (`<|end_of_text|>`) there, phi3_chat ends them with
 * `<|end|>`, qwen_chat with `<|im_end|>` (SUFFIX_AS_EOS, REFERENCE.md (h)). An export that only names the
 * tokenizer's EOS never stops. So `eos_token_id` lists the template's stop words that are single tokens, in
 * the template's order, then the tokenizer's EOS (as HF's own Llama-3-Instruct / Phi-3 / Qwen2 releases
 * do in generation_config.json): the ids mgllava's own chat stops on (infer/generate.ts `stopPlan`). A
 * stop word that is not one special token of this vocabulary stops chat as text; it goes to
 * `stop_strings` (transformers >= 4.39, with `tokenizer=` passed to `generate`).
 */
import { existsSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { ExperimentConfig } from '../config/schema.js';
import { getTemplate, stopWords } from '../data/templates.js';
import { loadTokenizer } from '../data/tokenizer.js';
import { stopPlan } from '../infer/generate.js';
import type { MGLLaVAConfig } from '../model/mgllava.js';

/** The id training pads input_ids with (train/build-data.ts; masked out, as the reference's pad index 0). */
const TRAINING_PAD_ID = 0;

export interface HfGenerationIds {
  bos: number | null;
  /** Ids that end an answer: the template's single-token stop words, then the tokenizer's EOS. */
  eos: number[];
  pad: number;
  /** Stop words of the template that are not one token of the vocabulary. */
  stopStrings: string[];
  /** Where each came from, for mgllava.json. */
  notes: string[];
}

/** A `tokenizer_config.json` special-token entry: a string or an AddedToken object. */
function tokenText(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return null;
}

/** `pad_token` of the tokenizer_config.json beside an HF tokenizer.json, if it names one. */
async function hfPadToken(tokenizerPath: string): Promise<string | null> {
  const dir = existsSync(tokenizerPath) && statSync(tokenizerPath).isDirectory() ? tokenizerPath : path.dirname(tokenizerPath);
  const file = path.join(dir, 'tokenizer_config.json');
  if (!existsSync(file)) return null;
  return tokenText((JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>).pad_token);
}

/** BOS, EOS list, pad and textual stop words of a run's tokenizer and template. */
export async function hfGenerationIds(config: ExperimentConfig): Promise<HfGenerationIds> {
  const tokenizer = await loadTokenizer(config.data.tokenizer);
  const template = getTemplate(config.data.template);
  // Exactly what mgllava's chat stops on (ids: EOS and special single-token stop words; the rest as text),
  // with the template's end-of-answer tokens listed before the tokenizer's EOS.
  const plan = stopPlan(tokenizer, stopWords(template, tokenizer.eosToken));
  const eosId = tokenizer.eosId;
  const eos = [...[...plan.ids].filter((id) => id !== eosId), ...(eosId !== null && plan.ids.has(eosId) ? [eosId] : [])];
  const notes = [
    `eos: the ${template.name} template's stop words ${JSON.stringify(template.STOP_WORDS)} that are special tokens, then the tokenizer's EOS ${JSON.stringify(tokenizer.eosToken)}`,
  ];
  const stopStrings = plan.text;

  let pad = TRAINING_PAD_ID;
  const spec = config.data.tokenizer;
  const padToken = spec.type === 'hf' ? await hfPadToken(spec.path) : null;
  const padId = padToken === null ? undefined : tokenizer.tokenToId(padToken);
  if (padId !== undefined) {
    pad = padId;
    notes.push(`pad: the tokenizer's pad_token ${JSON.stringify(padToken)}`);
  } else {
    notes.push(`pad: ${TRAINING_PAD_ID}, the id training padded with (the tokenizer names no pad token)`);
  }
  return { bos: tokenizer.bosId, eos, pad, stopStrings, notes };
}

/**
 * Positions the exported LLM knows: a pretrained LLM's own `max_position_embeddings` (training at a shorter
 * length does not shrink what the base model supports); else the most positions a training sample can take,
 * the text budget plus the image tokens (`data.max_length` + (image_size / patch_size)², 1472 + 576 = 2048
 * at full size, the reference's context; object tokens are capped to fit it).
 */
export function maxPositionsOf(config: ExperimentConfig, model: MGLLaVAConfig): number {
  if (model.llm.maxPositionEmbeddings !== undefined) return model.llm.maxPositionEmbeddings;
  const imageTokens = Math.floor(model.vision.imageSize / model.vision.patchSize) ** 2;
  return config.data.max_length + imageTokens;
}

/** One EOS id as a number, several as a list (as HF's own configs write them), none as null. */
const eosField = (eos: readonly number[]) => (eos.length === 0 ? null : eos.length === 1 ? eos[0] : [...eos]);

/** `config.json`'s generation fields. */
export function hfConfigFields(ids: HfGenerationIds, maxPositions: number): Record<string, unknown> {
  return {
    bos_token_id: ids.bos,
    eos_token_id: eosField(ids.eos),
    pad_token_id: ids.pad,
    max_position_embeddings: maxPositions,
  };
}

/** `generation_config.json`: greedy (HF's default, as mgllava chat's), stopping where the template ends an answer. */
export function hfGenerationConfig(ids: HfGenerationIds): Record<string, unknown> {
  return {
    bos_token_id: ids.bos,
    eos_token_id: eosField(ids.eos),
    pad_token_id: ids.pad,
    ...(ids.stopStrings.length ? { stop_strings: ids.stopStrings } : {}),
  };
}
