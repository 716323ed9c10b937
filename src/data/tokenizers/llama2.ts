/**
 * LLaMA-1/2 and Vicuna SentencePiece BPE vocabulary (32000 ids, <unk>=0, <s>=1, </s>=2) shipped in
 * llama-tokenizer-js, wrapped to behave like HF `LlamaTokenizer(Fast).encode(text, add_special_tokens=False)`:
 *   - every piece of text gets SentencePiece's dummy-prefix '▁' (so "\n" -> [29871, 13]), because the
 *     library's `add_preceding_space` is SentencePiece's `add_dummy_prefix`;
 *   - literal special-token strings ('<s>', '</s>', '<unk>') in the text become their ids, and each text segment
 *     between them is encoded on its own with its own '▁' — HF's legacy behaviour (the Llama-2 tokenizer.json).
 *     With `legacy=False` HF omits the '▁' after a special token; only text containing those strings differs.
 * Checked against @huggingface/tokenizers running a tokenizer.json built from the same vocabulary and merges
 * (test/data-tokenizer.test.ts) and against the library's own LLaMA test vectors.
 */
import llamaTokenizer from 'llama-tokenizer-js';
import { checkDecodableIds, type DecodeOptions, type TextTokenizer } from '../tokenizer.js';

const SPECIAL_TOKENS = ['<unk>', '<s>', '</s>'] as const;
const SPECIAL_RE = /<unk>|<s>|<\/s>/g;

class Llama2Tokenizer implements TextTokenizer {
  readonly name = 'llama2';
  readonly bosId = 1;
  readonly eosId = 2;
  readonly eosToken = '</s>';
  readonly vocabSize: number;

  constructor(private readonly lib: typeof llamaTokenizer) {
    this.vocabSize = lib.vocabById.length;
    SPECIAL_TOKENS.forEach((t, id) => {
      if (lib.vocabById[id] !== t) throw new Error(`llama2 tokenizer: id ${id} is '${lib.vocabById[id]}', expected '${t}'`);
    });
  }

  encode(text: string): number[] {
    const ids: number[] = [];
    let last = 0;
    for (const m of text.matchAll(SPECIAL_RE)) {
      this.encodeSegment(text.slice(last, m.index), ids);
      ids.push((SPECIAL_TOKENS as readonly string[]).indexOf(m[0]));
      last = m.index + m[0].length;
    }
    this.encodeSegment(text.slice(last), ids);
    return ids;
  }

  private encodeSegment(segment: string, out: number[]): void {
    if (segment.length === 0) return; // the library returns [] too; SentencePiece adds no '▁' to ''
    for (const id of this.lib.encode(segment, false, true)) out.push(id);
  }

  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    checkDecodableIds(ids, this.vocabSize, 'llama2 tokenizer');
    const skip = options.skipSpecialTokens ?? true;
    const kept = skip ? ids.filter((id) => id >= SPECIAL_TOKENS.length) : [...ids];
    if (kept.length === 0) return '';
    // '▁' -> ' ', byte fallback, then strip ONE leading space (HF's Strip(start=1) decoder).
    return this.lib.decode(kept, false, true);
  }

  tokenToId(token: string): number | undefined {
    return this.lib.vocabByString.get(token);
  }
}

export function createLlama2Tokenizer(): TextTokenizer {
  return new Llama2Tokenizer(llamaTokenizer);
}
