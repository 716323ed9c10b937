/**
 * A word-level tokenizer for a user's own records (`mgllava data vocab`): every word of their conversations
 * plus the prompt template's words, written as an HF `tokenizer.json` + `tokenizer_config.json` (the format
 * `data synth` writes, synth/vocab.ts). For a small dataset trained from scratch this keeps the LLM's
 * vocabulary, and so its embedding and output layers, as small as the data: `model.llm.vocab_size` must be at
 * least the size printed. (A pretrained LLM brings its own tokenizer instead: `{type: hf, path: <its dir>}`.)
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fsError } from '../errors.js';
import { IMAGE_TOKEN } from './constants.js';
import { loadRecords, type BadRecord } from './records.js';
import { buildVocab, templateText, tokenizerConfigJson, tokenizerJson } from './synth/vocab.js';
import type { PromptTemplate } from './templates.js';

export interface WordVocabResult {
  /** tokenizer.json written. */
  file: string;
  /** Ids in the vocabulary (specials included): the least model.llm.vocab_size. */
  vocabSize: number;
  records: number;
  /** Records that could not be read (their words are missing from the vocabulary). */
  bad: BadRecord[];
}

export async function writeWordVocab(recordFiles: readonly string[], template: PromptTemplate, outDir: string): Promise<WordVocabResult> {
  const texts: string[] = [];
  const bad: BadRecord[] = [];
  let records = 0;
  for (const f of recordFiles) {
    const r = await loadRecords(f);
    bad.push(...r.bad);
    records += r.records.length;
    for (const rec of r.records) for (const t of rec.conversations) texts.push(t.value.split(IMAGE_TOKEN).join(' '));
  }
  const vocab = buildVocab([...texts, ...templateText(template)]);
  const file = path.join(outDir, 'tokenizer.json');
  try {
    await writeFile(file, `${JSON.stringify(tokenizerJson(vocab), null, 1)}\n`);
    await writeFile(path.join(outDir, 'tokenizer_config.json'), `${JSON.stringify(tokenizerConfigJson(4096), null, 1)}\n`);
  } catch (e) {
    throw fsError(e, file, 'writing the tokenizer');
  }
  return { file, vocabSize: vocab.length, records, bad };
}
