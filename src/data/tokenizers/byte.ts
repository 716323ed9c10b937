/**
 * The toy byte tokenizer of golden/conversation.json: id = UTF-8 byte + 3, with 0 = <pad>, 1 = <s> (BOS),
 * 2 = </s> (EOS). Text is never scanned for special-token strings: '<s>' in text is three bytes.
 */
import { checkDecodableIds, type DecodeOptions, type TextTokenizer } from '../tokenizer.js';

const SPECIALS = ['<pad>', '<s>', '</s>'] as const;
const OFFSET = SPECIALS.length;

export class ByteTokenizer implements TextTokenizer {
  readonly name = 'byte';
  readonly bosId = 1;
  readonly eosId = 2;
  readonly eosToken = '</s>';
  readonly vocabSize = 256 + OFFSET;
  private readonly encoder = new TextEncoder();
  private readonly decoder = new TextDecoder('utf-8');

  encode(text: string): number[] {
    return Array.from(this.encoder.encode(text), (b) => b + OFFSET);
  }

  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    checkDecodableIds(ids, this.vocabSize, 'byte tokenizer');
    const skip = options.skipSpecialTokens ?? true;
    let out = '';
    let bytes: number[] = [];
    const flush = () => {
      out += this.decoder.decode(new Uint8Array(bytes));
      bytes = [];
    };
    for (const id of ids) {
      if (id >= OFFSET) {
        bytes.push(id - OFFSET);
      } else if (!skip) {
        flush();
        out += SPECIALS[id];
      }
    }
    flush();
    return out;
  }

  /** Special token texts, or a single character whose UTF-8 form is one byte. */
  tokenToId(token: string): number | undefined {
    const s = (SPECIALS as readonly string[]).indexOf(token);
    if (s >= 0) return s;
    const bytes = this.encoder.encode(token);
    return bytes.length === 1 ? bytes[0] + OFFSET : undefined;
  }
}
