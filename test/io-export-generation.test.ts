// HF exports carry the ids generation needs: BOS, EOS (the template's end-of-answer token first, then the
// tokenizer's EOS), pad and max_position_embeddings in config.json, and a generation_config.json. One tiny
// trained run per chat template, each with a tokenizer laid out like the real model family's (the special
// tokens and tokenizer_config.json entries of Vicuna, Llama-3, Phi-3 and Yi releases), ids chosen here.
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { synthDataset } from '../src/data/synth.js';
import { getTemplate, stopWords } from '../src/data/templates.js';
import { loadTokenizer } from '../src/data/tokenizer.js';
import { stopPlan } from '../src/infer/generate.js';
import { exportRun } from '../src/io/export.js';
import { train } from '../src/train/trainer.js';
import { collector } from './train-fixture.js';

let root: string;
let data: string;
beforeAll(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'mgllava-hfgen-'));
  data = path.join(root, 'data');
  await synthDataset({ out: data, train: 4, eval: 0, seed: 5, size: 48 });
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

/** A word-level tokenizer.json whose first ids are `special` (added, special tokens), then `words`. */
function tokenizerJson(special: readonly string[], words: readonly string[]): object {
  const vocab = [...special, ...words];
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: special.map((content, id) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: null,
    pre_tokenizer: { type: 'Whitespace' },
    post_processor: null,
    decoder: null,
    model: { type: 'WordLevel', vocab: Object.fromEntries(vocab.map((w, i) => [w, i])), unk_token: special[0] },
  };
}

const WORDS = ['a', 'red', 'circle', 'square', 'user', 'assistant', 'system', 'USER', 'ASSISTANT', ':', 'what', 'is', '?'];

interface Family {
  template: string;
  /** Special tokens in id order (id = index). */
  special: string[];
  tokenizerConfig: Record<string, unknown>;
  expected: { bos: number | null; eos: number | number[]; pad: number; stopStrings?: string[] };
}

const FAMILIES: Record<string, Family> = {
  // Llama-3 (base model's tokenizer_config: eos <|end_of_text|>): answers end with <|eot_id|>, which the
  // tokenizer's EOS alone would never stop at.
  llama3: {
    template: 'llama3_chat',
    special: ['<unk>', '<|begin_of_text|>', '<|end_of_text|>', '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>'],
    tokenizerConfig: { bos_token: '<|begin_of_text|>', eos_token: '<|end_of_text|>', tokenizer_class: 'PreTrainedTokenizerFast' },
    expected: { bos: 1, eos: [5, 2], pad: 0 },
  },
  // Phi-3: eos and pad <|endoftext|>, answers end with <|end|>; AddedToken objects in the config.
  phi3: {
    template: 'phi3_chat',
    special: ['<unk>', '<s>', '</s>', '<|endoftext|>', '<|user|>', '<|assistant|>', '<|system|>', '<|end|>'],
    tokenizerConfig: { bos_token: { content: '<s>' }, eos_token: { content: '<|endoftext|>' }, pad_token: { content: '<|endoftext|>' } },
    expected: { bos: 1, eos: [7, 3], pad: 3 },
  },
  // Yi (qwen_chat template): eos <|im_end|> is also the template's first stop word; this vocabulary has no
  // <|endoftext|>, so that stop word can only stop as text.
  yi: {
    template: 'qwen_chat',
    special: ['<unk>', '<|startoftext|>', '<|im_start|>', '<|im_end|>'],
    tokenizerConfig: { bos_token: '<|startoftext|>', eos_token: '<|im_end|>', pad_token: '<unk>' },
    expected: { bos: 1, eos: 3, pad: 0, stopStrings: ['<|endoftext|>'] },
  },
  // Vicuna: the stock LLaMA SentencePiece vocabulary (BOS 1, EOS 2, no pad: 0, as Vicuna's own generation_config).
  vicuna: {
    template: 'vicuna',
    special: [],
    tokenizerConfig: {},
    expected: { bos: 1, eos: 2, pad: 0 },
  },
};

async function exportFamily(name: string, f: Family): Promise<{ out: string; config: Record<string, unknown>; generation: Record<string, unknown> }> {
  let tokenizer: string;
  if (f.special.length) {
    const dir = path.join(root, `tok-${name}`);
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, 'tokenizer.json'), JSON.stringify(tokenizerJson(f.special, WORDS)));
    await writeFile(path.join(dir, 'tokenizer_config.json'), JSON.stringify(f.tokenizerConfig));
    tokenizer = `{ type: hf, path: ${dir} }`;
  } else {
    tokenizer = '{ type: llama2 }';
  }
  const vocab = f.special.length ? f.special.length + WORDS.length : 32000;
  const yaml = path.join(root, `${name}.yaml`);
  await writeFile(
    yaml,
    `name: ${name}
stage: pretrain
seed: 1
output_dir: ${root}/runs
model:
  vision: { image_size: 28, patch_size: 14, hidden_size: 16, intermediate_size: 32, num_layers: 2, num_heads: 2 }
  vision_aux: { dims: [4, 8, 8, 8], depths: [1, 1, 1, 1], image_size: 64 }
  fusion: { variant: 0 }
  objects: { output_size: 7 }
  llm: { vocab_size: ${vocab}, hidden_size: 16, intermediate_size: 24, num_layers: 1, num_heads: 2 }
data:
  records: ${data}/pretrain.json
  boxes: ${data}/boxes.json
  images: ${data}/images
  template: ${f.template}
  tokenizer: ${tokenizer}
  max_length: 96
  image_workers: 0
train: { batch_size: 2, max_steps: 1, save_steps: 1, log_steps: 1 }
`,
  );
  const log = collector();
  const run = await train({ stage: 'pretrain', configFile: yaml, progress: 'lines', out: log.stream, err: log.stream });
  const out = path.join(root, `${name}-hf`);
  const result = await exportRun(run.runDir, { format: 'hf', out });
  expect(result.files).toContain('generation_config.json');
  const read = async (file: string) => JSON.parse(await readFile(path.join(out, file), 'utf8')) as Record<string, unknown>;
  return { out, config: await read('config.json'), generation: await read('generation_config.json') };
}

describe('HF export: generation ids per chat template', () => {
  for (const [name, f] of Object.entries(FAMILIES)) {
    it(`${name} (${f.template})`, async () => {
      const { config, generation } = await exportFamily(name, f);
      const e = f.expected;
      // 96 text positions + (28 / 14)² = 4 image tokens: the most positions a training sample can take.
      expect(config).toMatchObject({ bos_token_id: e.bos, eos_token_id: e.eos, pad_token_id: e.pad, max_position_embeddings: 100 });
      expect(generation).toEqual({ bos_token_id: e.bos, eos_token_id: e.eos, pad_token_id: e.pad, ...(e.stopStrings ? { stop_strings: e.stopStrings } : {}) });

      // The export stops where mgllava's own chat stops: the same ids (the text-only stop words aside).
      const tokenizer = await loadTokenizer(
        f.special.length ? { type: 'hf', path: path.join(root, `tok-${name}`) } : { type: 'llama2' },
      );
      const plan = stopPlan(tokenizer, stopWords(getTemplate(f.template), tokenizer.eosToken));
      expect(new Set([e.eos].flat())).toEqual(plan.ids);
      expect(plan.text).toEqual(e.stopStrings ?? []);
    }, 120_000);
  }
});
