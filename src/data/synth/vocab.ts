/**
 * A word-level tokenizer in Hugging Face `tokenizer.json` format (WordLevel model + Whitespace
 * pre-tokenizer), built from the synthetic corpus. Ids: `<unk>`=0, `<s>`=1, `</s>`=2, `<pad>`=3 (LLaMA's
 * first three plus a pad), then the words in sorted order (deterministic).
 */
import { formatTemplate, type PromptTemplate } from '../templates.js';
import { words } from './text.js';

export const SPECIAL_TOKENS = ['<unk>', '<s>', '</s>', '<pad>'] as const;

export function buildVocab(texts: Iterable<string>): string[] {
  const set = new Set<string>();
  for (const t of texts) for (const w of words(t)) set.add(w);
  for (const s of SPECIAL_TOKENS) set.delete(s);
  return [...SPECIAL_TOKENS, ...[...set].sort()];
}

/** The text a template wraps around turns (no system prompt: training uses none): its words join the vocabulary. */
export function templateText(t: PromptTemplate): string[] {
  return [formatTemplate(t.INSTRUCTION, { input: ' ', round: 1 }), t.SUFFIX, t.SEP];
}

/** `tokenizer.json` content (HF tokenizers serialization, version 1.0). */
export function tokenizerJson(vocab: readonly string[]): object {
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: SPECIAL_TOKENS.map((content, id) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: null,
    pre_tokenizer: { type: 'Whitespace' },
    post_processor: null,
    decoder: null,
    model: { type: 'WordLevel', vocab: Object.fromEntries(vocab.map((w, i) => [w, i])), unk_token: '<unk>' },
  };
}

/** `tokenizer_config.json`: names the special tokens (tokenizers.js and transformers read them from here). */
export function tokenizerConfigJson(maxLength: number): object {
  return {
    tokenizer_class: 'PreTrainedTokenizerFast',
    unk_token: '<unk>',
    bos_token: '<s>',
    eos_token: '</s>',
    pad_token: '<pad>',
    add_bos_token: false,
    add_eos_token: false,
    model_max_length: maxLength,
  };
}
