import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import llamaLib from 'llama-tokenizer-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IMAGE_TOKEN_INDEX } from '../src/data/constants.js';
import { loadTokenizer, type TextTokenizer } from '../src/data/tokenizer.js';
import { ByteTokenizer } from '../src/data/tokenizers/byte.js';

describe('byte tokenizer (golden toy tokenizer)', () => {
  const t = new ByteTokenizer();
  it('id = UTF-8 byte + 3, BOS 1, EOS 2, no special tokens from text', () => {
    expect(t.encode('A\n')).toEqual([68, 13]);
    expect(t.encode('é')).toEqual([0xc3 + 3, 0xa9 + 3]);
    expect(t.encode('<s>')).toEqual([63, 118, 65]);
    expect(t.encode('')).toEqual([]);
    expect([t.bosId, t.eosId, t.vocabSize, t.eosToken]).toEqual([1, 2, 259, '</s>']);
  });

  it('decodes, skipping specials by default', () => {
    expect(t.decode([1, ...t.encode('héllo 🦙'), 2])).toBe('héllo 🦙');
    expect(t.decode([1, ...t.encode('x'), 2], { skipSpecialTokens: false })).toBe('<s>x</s>');
    expect(() => t.decode([IMAGE_TOKEN_INDEX])).toThrow(/cannot decode id -200/);
    expect(t.tokenToId('</s>')).toBe(2);
    expect(t.tokenToId('a')).toBe(100);
    expect(t.tokenToId('ab')).toBeUndefined();
  });
});

describe('llama2 tokenizer (llama-tokenizer-js vocabulary)', () => {
  let t: TextTokenizer;
  beforeAll(async () => {
    t = await loadTokenizer({ type: 'llama2' });
  });

  it('matches HF LlamaTokenizer.encode(add_special_tokens=False) on known vectors', () => {
    // The library's LLaMA test vectors with the BOS removed.
    expect(t.encode('grabbed')).toEqual([2646, 1327, 287]);
    expect(t.encode(' grabbed')).toEqual([29871, 2646, 1327, 287]);
    expect(t.encode('           grabbed')).toEqual([9651, 2646, 1327, 287]);
    expect(t.encode('\n')).toEqual([29871, 13]);
    expect(t.encode(' \n')).toEqual([259, 13]);
    expect(t.encode('🦙')).toEqual([29871, 243, 162, 169, 156]);
    expect(t.encode('Hello world!')).toEqual([15043, 3186, 29991]);
    expect(t.encode('')).toEqual([]);
    // special-token strings become their ids; each segment gets its own '▁' (legacy HF behaviour)
    expect(t.encode('a</s>b')).toEqual([263, 2, 289]);
    expect(t.encode('<s>hi')).toEqual([1, 7251]);
  });

  it('decodes like HF (one leading space stripped, specials skipped)', () => {
    expect(t.decode([1, 15043, 3186, 29991, 2])).toBe('Hello world!');
    expect(t.decode([29871, 13])).toBe('\n');
    expect(t.decode([1, 2646], { skipSpecialTokens: false })).toBe('<s> gra');
    expect(t.decode([])).toBe('');
    expect(() => t.decode([32000])).toThrow(/cannot decode id 32000/);
    expect([t.bosId, t.eosId, t.vocabSize, t.eosToken]).toEqual([1, 2, 32000, '</s>']);
    expect(t.tokenToId('▁the')).toBe(278);
    expect(t.tokenToId('<0x0A>')).toBe(13);
  });
});

describe('hf tokenizer.json loader', () => {
  // A Llama-2 style (legacy SentencePiece-BPE) tokenizer.json built from llama-tokenizer-js's vocabulary and
  // merges: the same data, run by an independent BPE implementation (@huggingface/tokenizers).
  let dir: string;
  let hf: TextTokenizer;
  let llama: TextTokenizer;

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'mgllava-tok-'));
    const vocab: Record<string, number> = {};
    llamaLib.vocabById.forEach((tok, id) => (vocab[tok] = id));
    const special = (id: number, content: string) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    });
    const tokenizerJson = {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>'), special(32000, '<|eot_id|>')],
      normalizer: {
        type: 'Sequence',
        normalizers: [
          { type: 'Prepend', prepend: '▁' },
          { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
        ],
      },
      pre_tokenizer: null,
      post_processor: {
        type: 'TemplateProcessing',
        single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
        pair: [
          { SpecialToken: { id: '<s>', type_id: 0 } },
          { Sequence: { id: 'A', type_id: 0 } },
          { SpecialToken: { id: '<s>', type_id: 1 } },
          { Sequence: { id: 'B', type_id: 1 } },
        ],
        special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
      },
      decoder: {
        type: 'Sequence',
        decoders: [
          { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
          { type: 'ByteFallback' },
          { type: 'Fuse' },
          { type: 'Strip', content: ' ', start: 1, stop: 0 },
        ],
      },
      model: {
        type: 'BPE',
        dropout: null,
        unk_token: '<unk>',
        continuing_subword_prefix: null,
        end_of_word_suffix: null,
        fuse_unk: true,
        byte_fallback: true,
        vocab,
        merges: [...llamaLib.merges.keys()],
      },
    };
    writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tokenizerJson));
    writeFileSync(
      path.join(dir, 'tokenizer_config.json'),
      JSON.stringify({
        bos_token: { content: '<s>', __type: 'AddedToken' },
        eos_token: '</s>',
        clean_up_tokenization_spaces: false,
        tokenizer_class: 'LlamaTokenizer',
      }),
    );
    hf = await loadTokenizer({ type: 'hf', path: dir });
    llama = await loadTokenizer({ type: 'llama2' });
  });

  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('reads BOS/EOS from tokenizer_config.json (string or AddedToken form) and finds added tokens', () => {
    expect([hf.bosId, hf.eosId, hf.eosToken, hf.vocabSize]).toEqual([1, 2, '</s>', 32001]);
    expect(hf.tokenToId('<|eot_id|>')).toBe(32000);
    expect(hf.encode('hi<|eot_id|>')).toEqual([7251, 32000]);
    expect(hf.decode([1, 15043, 3186, 29991, 2])).toBe('Hello world!');
  });

  it('agrees with the llama2 tokenizer on a text corpus and on random strings', () => {
    const corpus = [
      'USER: ',
      '\nWhat is in the picture? ASSISTANT:',
      "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. Be brief.\n ",
      '  two  spaces ',
      '\ttabs\t\t\t\tout here',
      'ax\n####\nboo',
      'naïve café — “quotes” … ™ ©',
      '中文测试，标点符号。日本語のテキスト',
      'Привет мир',
      '🦙Ꙋ',
      '\r\n\r\n',
      '▁already▁underlined',
      'x <unk> y </s> z<s>',
    ];
    for (const s of corpus) expect(hf.encode(s), JSON.stringify(s)).toEqual(llama.encode(s));
    const pool = [...'abcdefgXYZ0123 .,:!?\'"()<>/\\-_=#', ' ', ' ', '\n', '\t', 'é', '中', 'я', '🦙', '\u00a0', '▁'];
    const words = ['the', ' image', 'USER:', ' ASSISTANT:', 'ing', '</s>', '\n\n', '  '];
    let seed = 7;
    const rnd = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
    for (let i = 0; i < 300; i++) {
      let s = '';
      const n = Math.floor(rnd() * 30);
      for (let j = 0; j < n; j++) s += rnd() < 0.3 ? words[Math.floor(rnd() * words.length)] : pool[Math.floor(rnd() * pool.length)];
      expect(hf.encode(s), JSON.stringify(s)).toEqual(llama.encode(s));
      expect(hf.decode(hf.encode(s))).toBe(llama.decode(llama.encode(s)));
    }
  });

  it('accepts the file path, overrides, Qwen classes (no BOS) and reports bad configs', async () => {
    const file = path.join(dir, 'tokenizer.json');
    const direct = await loadTokenizer({ type: 'hf', path: file, eosToken: '<|eot_id|>' });
    expect([direct.bosId, direct.eosId, direct.eosToken]).toEqual([1, 32000, '<|eot_id|>']);
    const none = await loadTokenizer({ type: 'hf', path: file, bosToken: null, eosToken: null });
    expect([none.bosId, none.eosId]).toEqual([null, null]);

    const qdir = mkdtempSync(path.join(tmpdir(), 'mgllava-tokq-'));
    try {
      const tj = path.join(qdir, 'tokenizer.json');
      writeFileSync(tj, JSON.stringify({ x: 0 })); // not a tokenizer.json
      await expect(loadTokenizer({ type: 'hf', path: tj })).rejects.toThrow(/unsupported tokenizer.json/);
      // Qwen: xtuner uses no BOS even if the config names one
      writeFileSync(tj, readFileSync(file));
      writeFileSync(path.join(qdir, 'tokenizer_config.json'), JSON.stringify({ bos_token: '<s>', eos_token: '</s>', tokenizer_class: 'Qwen2Tokenizer' }));
      const q = await loadTokenizer({ type: 'hf', path: qdir });
      expect([q.bosId, q.eosId]).toEqual([null, 2]);
      writeFileSync(path.join(qdir, 'tokenizer_config.json'), JSON.stringify({ eos_token: '<|im_end|>' }));
      await expect(loadTokenizer({ type: 'hf', path: qdir })).rejects.toThrow(/eos_token '<\|im_end\|>' is not in the vocabulary/);
      writeFileSync(path.join(qdir, 'tokenizer_config.json'), '{oops');
      await expect(loadTokenizer({ type: 'hf', path: qdir })).rejects.toThrow(/tokenizer config .* is not valid JSON/);
    } finally {
      rmSync(qdir, { recursive: true, force: true });
    }
    await expect(loadTokenizer({ type: 'hf', path: path.join(dir, 'missing.json') })).rejects.toThrow(/missing\.json: reading the tokenizer: no such file or directory/);
  });
});
