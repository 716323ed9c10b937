/**
 * Text tokenizers used by the conversation encoder (conversation.ts) and by chat.
 *
 * `encode` never adds special tokens (xtuner calls `tokenizer.encode(piece, add_special_tokens=False)` on
 * every piece); BOS/EOS are placed by the encoder from `bosId` / `eosId`. Implementations:
 *   - 'hf'     a local HF `tokenizer.json` (+ `tokenizer_config.json` beside it) via @huggingface/tokenizers
 *   - 'llama2' the LLaMA-1/2 / Vicuna SentencePiece vocabulary shipped in llama-tokenizer-js
 *   - 'byte'   the toy byte tokenizer of the conversation golden (id = UTF-8 byte + 3, BOS 1, EOS 2)
 */
export interface DecodeOptions {
  /** Drop special tokens (BOS/EOS/pad/added special tokens) from the text. Default true. */
  skipSpecialTokens?: boolean;
}

export interface TextTokenizer {
  /** Short description for logs and errors, e.g. "hf:/models/vicuna/tokenizer.json". */
  readonly name: string;
  /** Token ids of `text` without any special token added. */
  encode(text: string): number[];
  decode(ids: readonly number[], options?: DecodeOptions): string;
  /** null: the template/tokenizer uses no BOS (e.g. Qwen). */
  readonly bosId: number | null;
  readonly eosId: number | null;
  /** Text of the EOS token (a stop word for generation), null if there is none. */
  readonly eosToken: string | null;
  /** Largest id the tokenizer can produce + 1. */
  readonly vocabSize: number;
  /** Id of a vocabulary entry or added/special token given by its exact text, e.g. '<|eot_id|>'. */
  tokenToId(token: string): number | undefined;
}

export type TokenizerSpec =
  | {
      type: 'hf';
      /** Path of tokenizer.json, or of the folder holding it. */
      path: string;
      /** Override (or supply, without a tokenizer_config.json) the BOS/EOS token texts; null = none. */
      bosToken?: string | null;
      eosToken?: string | null;
    }
  | { type: 'llama2' }
  | { type: 'byte' };

export async function loadTokenizer(spec: TokenizerSpec): Promise<TextTokenizer> {
  switch (spec.type) {
    case 'hf': {
      const { loadHfTokenizer } = await import('./tokenizers/hf.js');
      return loadHfTokenizer(spec.path, { bosToken: spec.bosToken, eosToken: spec.eosToken });
    }
    case 'llama2': {
      const { createLlama2Tokenizer } = await import('./tokenizers/llama2.js');
      return createLlama2Tokenizer();
    }
    case 'byte': {
      const { ByteTokenizer } = await import('./tokenizers/byte.js');
      return new ByteTokenizer();
    }
    default: {
      const bad: never = spec;
      throw new Error(`tokenizer.ts: unknown tokenizer spec ${JSON.stringify(bad)}`);
    }
  }
}

/** Throws unless every id is an integer in [0, vocabSize) — catches -200/-100 handed to a decoder. */
export function checkDecodableIds(ids: readonly number[], vocabSize: number, who: string): void {
  for (const id of ids) {
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize) {
      throw new Error(`${who}: cannot decode id ${id} (vocabulary has ${vocabSize} ids)`);
    }
  }
}
