/**
 * A word-level tokenizer for a user's own records (`mgllava data vocab`): every word of their conversations
 * plus the prompt template's words, written as an HF `tokenizer.json` + `tokenizer_config.json` (the format
 * `data synth` writes, synth/vocab.ts). For a small dataset trained from scratch this keeps the LLM's
 * vocabulary, and so its embedding and output layers, as small as the data: `model.llm.vocab_size` must be at
 * least the size printed. (A pretrained LLM brings its own tokenizer instead: `{type: hf, path: <its dir>}`.)
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { DataError, UsageError } from '../errors.js';
import { checkOutputFile, writeFileAtomic } from '../io/output-file.js';
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

export async function writeWordVocab(recordFiles: readonly string[], template: PromptTemplate, outDir: string, o: { overwrite?: boolean } = {}): Promise<WordVocabResult> {
  const file = path.join(outDir, 'tokenizer.json');
  const config = path.join(outDir, 'tokenizer_config.json');
  const inputs = recordFiles.map((f) => ({ file: f, what: 'a records file' }));
  for (const out of [file, config]) {
    // Runs name their tokenizer by path: replacing one silently would change what their ids mean.
    if (!o.overwrite && existsSync(out)) throw new UsageError(`${out} exists (a run may use it)`, { hint: 'pass --overwrite to replace it, or choose another --out' });
    await checkOutputFile(out, 'the tokenizer', { inputs });
  }
  const texts: string[] = [];
  const bad: BadRecord[] = [];
  let records = 0;
  for (const f of recordFiles) {
    const r = await loadRecords(f);
    bad.push(...r.bad);
    records += r.records.length;
    for (const rec of r.records) for (const t of rec.conversations) texts.push(t.value.split(IMAGE_TOKEN).join(' '));
  }
  if (records === 0) throw new DataError(`${recordFiles.join(', ')}: no readable record: a vocabulary of the template's words alone would be useless`);
  const vocab = buildVocab([...texts, ...templateText(template)]);
  await writeFileAtomic(file, `${JSON.stringify(tokenizerJson(vocab), null, 1)}\n`, 'the tokenizer');
  await writeFileAtomic(config, `${JSON.stringify(tokenizerConfigJson(4096), null, 1)}\n`, 'the tokenizer config');
  return { file, vocabSize: vocab.length, records, bad };
}
