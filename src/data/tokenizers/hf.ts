/**
 * A local Hugging Face `tokenizer.json` through @huggingface/tokenizers (never downloads anything).
 *
 * BOS/EOS come from `tokenizer_config.json` beside the tokenizer (`bos_token` / `eos_token`, either a string
 * or an AddedToken object), or from explicit overrides. Like xtuner's `get_bos_eos_token_ids`, Qwen tokenizer
 * classes get no BOS. A configured token that is not in the vocabulary is an error.
 */
import { existsSync, statSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { DataError, fsError } from '../../errors.js';
import path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { checkDecodableIds, type DecodeOptions, type TextTokenizer } from '../tokenizer.js';

/** `tokenizer_class` values for which xtuner uses no BOS id. Its list is QWenTokenizer / Qwen2TokenizerFast
 *  (and a misspelt 'QWen2Tokenizer'); configs name the slow 'Qwen2Tokenizer', which AutoTokenizer loads as
 *  Qwen2TokenizerFast, so that name counts too. */
const NO_BOS_CLASSES = new Set(['QWenTokenizer', 'Qwen2Tokenizer', 'Qwen2TokenizerFast']);

export interface HfTokenizerOverrides {
  bosToken?: string | null;
  eosToken?: string | null;
}

class HfTokenizer implements TextTokenizer {
  readonly vocabSize: number;
  readonly bosId: number | null;
  readonly eosId: number | null;

  constructor(
    readonly name: string,
    private readonly tok: Tokenizer,
    bosToken: string | null,
    readonly eosToken: string | null,
  ) {
    let maxId = -1;
    for (const id of tok.get_vocab(true).values()) maxId = Math.max(maxId, id);
    this.vocabSize = maxId + 1;
    this.bosId = this.requireId(bosToken, 'bos_token');
    this.eosId = this.requireId(eosToken, 'eos_token');
  }

  private requireId(token: string | null, what: string): number | null {
    if (token === null) return null;
    const id = this.tokenToId(token);
    if (id === undefined) throw new Error(`${this.name}: ${what} '${token}' is not in the vocabulary`);
    return id;
  }

  encode(text: string): number[] {
    if (text.length === 0) return [];
    return this.tok.encode(text, { add_special_tokens: false }).ids;
  }

  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    if (ids.length === 0) return '';
    checkDecodableIds(ids, this.vocabSize, this.name);
    return this.tok.decode([...ids], { skip_special_tokens: options.skipSpecialTokens ?? true });
  }

  tokenToId(token: string): number | undefined {
    return this.tok.token_to_id(token);
  }
}

export async function loadHfTokenizer(p: string, overrides: HfTokenizerOverrides = {}): Promise<TextTokenizer> {
  const file = existsSync(p) && statSync(p).isDirectory() ? path.join(p, 'tokenizer.json') : p;
  const json = await readJson(file, 'tokenizer');
  const configFile = path.join(path.dirname(file), 'tokenizer_config.json');
  const config = existsSync(configFile) ? await readJson(configFile, 'tokenizer config') : {};
  checkVocabIds(json, file);
  let tok: Tokenizer;
  try {
    tok = new Tokenizer(json, config);
  } catch (e) {
    throw new DataError(`hf tokenizer ${file}: unsupported tokenizer.json: ${(e as Error).message}`);
  }
  const cls = typeof config.tokenizer_class === 'string' ? config.tokenizer_class : '';
  const bos =
    overrides.bosToken !== undefined ? overrides.bosToken : NO_BOS_CLASSES.has(cls) ? null : tokenText(config.bos_token);
  const eos = overrides.eosToken !== undefined ? overrides.eosToken : tokenText(config.eos_token);
  return new HfTokenizer(`hf:${file}`, tok, bos, eos);
}

/**
 * The ids of a (hand-edited) `model.vocab` and `added_tokens`: the library drops a negative id, coerces a string
 * and keeps one of two tokens sharing an id, so decoding later crashed or returned the other token.
 */
function checkVocabIds(json: unknown, file: string): void {
  const tokenOf = new Map<number, string>();
  const add = (token: string, id: unknown) => {
    if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0) throw new DataError(`hf tokenizer ${file}: token ${JSON.stringify(token)} has id ${JSON.stringify(id)}: ids must be integers >= 0`);
    const other = tokenOf.get(id);
    if (other !== undefined && other !== token) throw new DataError(`hf tokenizer ${file}: tokens ${JSON.stringify(other)} and ${JSON.stringify(token)} share id ${id}: each id must name one token`);
    tokenOf.set(id, token);
  };
  const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  if (!isObj(json)) return; // the library's own message covers a file that is no tokenizer
  // Unigram's vocab is a list of [piece, score]: its ids are positions, nothing to check.
  if (isObj(json.model) && isObj(json.model.vocab)) for (const [token, id] of Object.entries(json.model.vocab)) add(token, id);
  if (Array.isArray(json.added_tokens)) for (const t of json.added_tokens) if (isObj(t) && typeof t.content === 'string') add(t.content, t.id);
}

/** Largest tokenizer file read (real ones: a few MB; 250k-token vocabularies ~20 MB). */
const MAX_TOKENIZER_BYTES = 512 * 2 ** 20;

async function readJson(file: string, what: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    const s = await stat(file);
    if (!s.isFile()) throw new DataError(`${what} ${file} is not a regular file`);
    if (s.size > MAX_TOKENIZER_BYTES) throw new DataError(`${what} ${file} is ${s.size} bytes, more than a tokenizer file has (${MAX_TOKENIZER_BYTES})`);
    text = await readFile(file, 'utf8');
  } catch (e) {
    throw fsError(e, file, `reading the ${what}`);
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new DataError(`${what} ${file} is not valid JSON: ${(e as Error).message}`);
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new DataError(`${what} ${file}: expected a JSON object`);
  return v as Record<string, unknown>;
}

/** `"</s>"` or `{"content": "</s>", ...}` (AddedToken); null/absent = no such token. */
function tokenText(v: unknown): string | null {
  if (v === undefined || v === null) return null;
  if (typeof v === 'string') return v;
  if (typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') {
    return (v as { content: string }).content;
  }
  throw new Error(`hf tokenizer config: cannot read special token ${JSON.stringify(v)}`);
}
