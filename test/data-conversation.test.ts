import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { IGNORE_INDEX, IMAGE_TOKEN_INDEX } from '../src/data/constants.js';
import {
  buildChatPrompt,
  encodeConversation,
  encodeTemplatedTurns,
  llavaToTurns,
  normalizeImageText,
  pyStrip,
  type ConversationMessage,
} from '../src/data/conversation.js';
import {
  TEMPLATES,
  applyTemplate,
  formatTemplate,
  getTemplate,
  stopWords,
  type PromptTemplate,
  type TemplateName,
} from '../src/data/templates.js';
import type { TextTokenizer } from '../src/data/tokenizer.js';
import { loadTokenizer } from '../src/data/tokenizer.js';
import { ByteTokenizer } from '../src/data/tokenizers/byte.js';

const GOLDEN = path.resolve(import.meta.dirname, '../../shared/golden/public');

interface GoldenTemplate {
  SYSTEM: string;
  INSTRUCTION: string;
  SUFFIX?: string;
  SUFFIX_AS_EOS?: boolean;
  SEP?: string;
  STOP_WORDS?: string[];
}

interface GoldenCase {
  template: string;
  conversation_name: string;
  conversations: ConversationMessage[];
  system: string;
  max_length: number;
  turns: { input: string; output: string }[];
  templated: { input: string; output: string; need_eos_token: boolean; sep: string }[];
  input_ids: number[];
  labels: number[];
}

const golden = JSON.parse(readFileSync(path.join(GOLDEN, 'conversation.json'), 'utf8')) as {
  IMAGE_TOKEN_INDEX: number;
  IGNORE_INDEX: number;
  templates: Record<string, GoldenTemplate>;
  cases: GoldenCase[];
};

const byte = new ByteTokenizer();

describe('conversation encoding vs golden/conversation.json', () => {
  it('uses the same constants', () => {
    expect(IMAGE_TOKEN_INDEX).toBe(golden.IMAGE_TOKEN_INDEX);
    expect(IGNORE_INDEX).toBe(golden.IGNORE_INDEX);
  });

  it('has the same template strings', () => {
    for (const [name, g] of Object.entries(golden.templates)) {
      const t = getTemplate(name);
      expect(t.SYSTEM).toBe(g.SYSTEM);
      expect(t.INSTRUCTION).toBe(g.INSTRUCTION);
      expect(t.SUFFIX).toBe(g.SUFFIX ?? '');
      expect(t.SUFFIX_AS_EOS).toBe(g.SUFFIX_AS_EOS ?? false);
      expect(t.SEP).toBe(g.SEP ?? '');
      expect(t.STOP_WORDS).toEqual(g.STOP_WORDS ?? []);
    }
  });

  it('has 36 cases', () => expect(golden.cases.length).toBe(36));

  for (const [i, c] of golden.cases.entries()) {
    it(`case ${i}: ${c.template} / ${c.conversation_name} / system=${c.system !== ''} / max_length ${c.max_length}`, () => {
      const turns = llavaToTurns(c.conversations);
      expect(turns).toEqual(c.turns);
      const templated = applyTemplate(turns, getTemplate(c.template), c.system);
      expect(
        templated.map((t) => ({ input: t.input, output: t.output, need_eos_token: t.needEosToken, sep: t.sep })),
      ).toEqual(c.templated);
      const enc = encodeConversation(c.conversations, {
        template: c.template,
        tokenizer: byte,
        maxLength: c.max_length,
        system: c.system,
      });
      expect(enc.inputIds).toEqual(c.input_ids);
      expect(enc.labels).toEqual(c.labels);
      expect(enc.allMasked).toBe(c.labels.every((l) => l === IGNORE_INDEX));
      expect(enc.numImageTokens).toBe(c.input_ids.filter((id) => id === IMAGE_TOKEN_INDEX).length);
    });
  }
});

describe('llava_map_fn', () => {
  it('drops leading gpt messages, merges consecutive human messages, drops a trailing question', () => {
    const conv: ConversationMessage[] = [
      { from: 'gpt', value: 'hello' },
      { from: 'gpt', value: 'again' },
      { from: 'human', value: 'Look: <image> ' },
      { from: 'human', value: 'and answer.' },
      { from: 'gpt', value: 'OK' },
      { from: 'human', value: 'unanswered' },
    ];
    expect(llavaToTurns(conv)).toEqual([{ input: '<image>\nLook:and answer.', output: 'OK' }]);
    expect(() => llavaToTurns([{ from: 'system', value: 'x' }])).toThrow(/from='system'/);
    expect(llavaToTurns([])).toEqual([]);
  });

  it('normalizes <image> like Python (str.strip whitespace set)', () => {
    expect(normalizeImageText('  <image>\n\nWhat?  ')).toBe('<image>\nWhat?');
    expect(normalizeImageText('What?<image>')).toBe('<image>\nWhat?');
    expect(normalizeImageText('<image>')).toBe('<image>');
    expect(normalizeImageText(' no image ')).toBe(' no image ');
    expect(pyStrip('\x1c a \x85')).toBe('a');
    expect(pyStrip('\uFEFFa\uFEFF')).toBe('\uFEFFa\uFEFF'); // not whitespace for Python
  });
});

describe('encode_fn details', () => {
  it('encodes each piece separately; <image> -> IMAGE_TOKEN_INDEX; one per turn', () => {
    const turns = applyTemplate([{ input: '<image>\nQ', output: 'A' }], getTemplate('vicuna'));
    const { inputIds, labels } = encodeTemplatedTurns(turns, byte);
    const e = (s: string) => byte.encode(s);
    expect(inputIds).toEqual([1, ...e('USER: '), IMAGE_TOKEN_INDEX, ...e('\nQ ASSISTANT:'), ...e('A'), 2, ...e('\n')]);
    const nIn = 1 + e('USER: ').length + 1 + e('\nQ ASSISTANT:').length;
    expect(labels).toEqual([...Array(nIn).fill(IGNORE_INDEX), ...e('A'), 2, IGNORE_INDEX]);
    // without image tokens, '<image>' is plain text
    expect(encodeTemplatedTurns(turns, byte, false).inputIds).not.toContain(IMAGE_TOKEN_INDEX);
    const two = applyTemplate([{ input: '<image> and <image>', output: 'A' }], getTemplate('vicuna'));
    expect(() => encodeTemplatedTurns(two, byte)).toThrow(/2 '<image>' tokens/);
  });

  it('reports allMasked, truncation and the image count after truncation', () => {
    const conv = [
      { from: 'human', value: '<image>\nDescribe.' },
      { from: 'gpt', value: 'A long answer.' },
    ];
    const full = encodeConversation(conv, { template: 'vicuna', tokenizer: byte, maxLength: 1000 });
    expect(full.truncated).toBe(0);
    expect(full.allMasked).toBe(false);
    const cut = encodeConversation(conv, { template: 'vicuna', tokenizer: byte, maxLength: 5 });
    expect(cut.inputIds).toEqual(full.inputIds.slice(0, 5));
    expect(cut.truncated).toBe(full.inputIds.length - 5);
    expect(cut.allMasked).toBe(true);
    expect(cut.numImageTokens).toBe(0);
    expect(() => encodeConversation(conv, { template: 'vicuna', tokenizer: byte, maxLength: 0 })).toThrow(/maxLength/);
    expect(() => encodeConversation(conv, { template: 'nope', tokenizer: byte, maxLength: 9 })).toThrow(/unknown prompt template 'nope'/);
  });

  it('no BOS for tokenizers without one (Qwen); a template needing EOS fails clearly without one', () => {
    const noBos: TextTokenizer = { ...byteLike(), bosId: null, name: 'nobos' };
    const conv = [
      { from: 'human', value: 'Hi' },
      { from: 'gpt', value: 'Yo' },
    ];
    const q = encodeConversation(conv, { template: 'qwen_chat', tokenizer: noBos, maxLength: 999 });
    expect(q.inputIds[0]).toBe(byte.encode('<')[0]);
    expect(q.inputIds).not.toContain(2);
    const noEos: TextTokenizer = { ...byteLike(), eosId: null, name: 'noeos' };
    expect(() => encodeConversation(conv, { template: 'vicuna', tokenizer: noEos, maxLength: 99 })).toThrow(/needs an EOS token/);
  });
});

describe('templates', () => {
  it('formats like Python str.format', () => {
    expect(formatTemplate('a {input} b {round}', { input: '{x}', round: 2 })).toBe('a {x} b 2');
    expect(formatTemplate('{{lit}} {input}', { input: 'v' })).toBe('{lit} v');
    expect(() => formatTemplate('{missing}', { input: 'v' })).toThrow(/'\{missing\}' has no value/);
    expect(() => formatTemplate('a } b', {})).toThrow(/lone '\}'/);
  });

  it('applies SYSTEM to the first turn only', () => {
    const t = applyTemplate(
      [
        { input: 'q1', output: 'a1' },
        { input: 'q2', output: 'a2' },
      ],
      getTemplate('phi3_chat'),
      'S',
    );
    expect(t[0].input).toBe('<|system|>S<|end|>\n<|user|>q1<|end|>\n<|assistant|>\n');
    expect(t[1].input).toBe('<|user|>q2<|end|>\n<|assistant|>\n');
    expect(t[0].output).toBe('a1<|end|>');
  });

  it('stop words = STOP_WORDS + the EOS token', () => {
    expect(stopWords(getTemplate('vicuna'), '</s>')).toEqual(['</s>']);
    expect(stopWords(getTemplate('llama3_chat'), '<|eot_id|>')).toEqual(['<|eot_id|>']);
    expect(stopWords(getTemplate('qwen_chat'), null)).toEqual(['<|im_end|>', '<|endoftext|>']);
  });
});

describe('chat prompt = training encoding of the prompt part', () => {
  const conv: ConversationMessage[] = [
    { from: 'human', value: 'What is this?\n<image>' },
    { from: 'gpt', value: 'A red bus.' },
    { from: 'human', value: 'Where is it going?' },
    { from: 'gpt', value: 'To the station.' },
    { from: 'human', value: 'Why?' },
    { from: 'gpt', value: 'It is late.' },
  ];
  const pairs = [0, 2, 4].map((k) => ({ user: conv[k].value, assistant: conv[k + 1].value }));

  const check = (name: TemplateName, tokenizer: TextTokenizer, system: string) => {
    const template: PromptTemplate = TEMPLATES[name];
    for (let k = 0; k < pairs.length; k++) {
      const prompt = buildChatPrompt(name, pairs.slice(0, k), pairs[k].user, { tokenizer, system });
      const train = encodeConversation(conv.slice(0, 2 * k + 2), { template: name, tokenizer, maxLength: 100000, system });
      const answer = [
        ...tokenizer.encode(pairs[k].assistant + template.SUFFIX),
        ...(template.SUFFIX_AS_EOS ? [] : [tokenizer.eosId as number]),
        ...(template.SEP ? tokenizer.encode(template.SEP) : []),
      ];
      expect(train.inputIds).toEqual([...prompt, ...answer]);
      // the prompt part is exactly the unsupervised prefix of the last turn
      expect(train.labels.slice(prompt.length)).toEqual([
        ...answer.slice(0, answer.length - (template.SEP ? tokenizer.encode(template.SEP).length : 0)),
        ...(template.SEP ? tokenizer.encode(template.SEP).map(() => IGNORE_INDEX) : []),
      ]);
    }
  };

  for (const name of Object.keys(TEMPLATES) as TemplateName[]) {
    it(`${name} (byte tokenizer, with and without system)`, () => {
      check(name, byte, '');
      check(name, byte, 'Be brief.');
    });
  }

  it('vicuna with the LLaMA-2 vocabulary', async () => {
    const llama = await loadTokenizer({ type: 'llama2' });
    check('vicuna', llama, '');
    check('vicuna', llama, 'Be brief.');
    // every piece gets its own leading '▁': the separator "\n" is [29871, 13]
    const enc = encodeConversation(conv.slice(0, 2), { template: 'vicuna', tokenizer: llama, maxLength: 9999 });
    expect(enc.inputIds.slice(-2)).toEqual([29871, 13]);
    expect(enc.inputIds[0]).toBe(1);
  });
});

function byteLike(): TextTokenizer {
  return {
    name: 'byte-like',
    bosId: 1,
    eosId: 2,
    eosToken: '</s>',
    vocabSize: byte.vocabSize,
    encode: (s) => byte.encode(s),
    decode: (ids) => byte.decode(ids),
    tokenToId: (t) => byte.tokenToId(t),
  };
}
