/**
 * Tags -> OWLv2 text queries, as MG-LLaVA builds them: one query "a photo of {tag}" per tag, tokenised like
 * `Owlv2Processor` does: [BOS, tokens..., EOS] right-padded with the pad id (0, "!") to the model's 16
 * positions, attention mask 1 on real tokens. The processor does not truncate (a longer query would overflow
 * the position embeddings), so a tag too long for 16 tokens is an error naming it.
 */
import { readFile } from 'node:fs/promises';
import { UsageError, fsError } from '../errors.js';
import type { TextTokenizer } from '../data/tokenizer.js';
import type { Owlv2TextConfig } from '../model/detector/config.js';
import type { QueryTokens } from '../model/detector/text-tower.js';
import { COCO_CLASSES } from './vocabulary.js';

export const QUERY_PREFIX = 'a photo of ';

/**
 * A tag list as text: comma- or newline-separated, each tag trimmed (MG-LLaVA strips RAM++'s tags the same
 * way; RAM++'s " | " separators are accepted too); empty entries and repeats dropped, first occurrence kept.
 */
export function parseTags(text: string): string[] {
  const seen = new Set<string>();
  for (const raw of text.split(/[,\n|]/)) {
    const t = raw.trim();
    if (t && !seen.has(t)) seen.add(t);
  }
  return [...seen];
}

/** --tags / --tags-file / the bundled COCO vocabulary (neither given). */
export async function resolveTags(opts: { tags?: string; tagsFile?: string }): Promise<{ tags: string[]; source: string }> {
  if (opts.tags !== undefined && opts.tagsFile !== undefined) throw new UsageError('give --tags or --tags-file, not both');
  if (opts.tagsFile !== undefined) {
    let text: string;
    try {
      text = await readFile(opts.tagsFile, 'utf8');
    } catch (e) {
      throw fsError(e, opts.tagsFile, 'reading the tag list');
    }
    const tags = parseTags(text);
    if (!tags.length) throw new UsageError(`--tags-file ${opts.tagsFile}: no tags in it (one per line or comma-separated)`);
    return { tags, source: opts.tagsFile };
  }
  if (opts.tags !== undefined) {
    const tags = parseTags(opts.tags);
    if (!tags.length) throw new UsageError('--tags: no tags given (e.g. --tags "dog, cat, red ball")');
    return { tags, source: '--tags' };
  }
  return { tags: [...COCO_CLASSES], source: 'the bundled COCO vocabulary (80 classes)' };
}

/** Token ids of the special tokens, from the tokenizer when it names them, else from config.json. */
function specialIds(tok: TextTokenizer, cfg: Owlv2TextConfig): { bos: number; eos: number } {
  return {
    bos: tok.bosId ?? tok.tokenToId('<|startoftext|>') ?? cfg.bosTokenId,
    eos: tok.eosId ?? tok.tokenToId('<|endoftext|>') ?? cfg.eosTokenId,
  };
}

/** One query per text: [BOS, ..., EOS, pad, ...] of length cfg.maxPositions, with its attention mask. */
export function tokenizeQueries(tok: TextTokenizer, texts: readonly string[], cfg: Owlv2TextConfig): QueryTokens {
  const len = cfg.maxPositions;
  const { bos, eos } = specialIds(tok, cfg);
  const ids = new Int32Array(texts.length * len).fill(cfg.padTokenId);
  const mask = new Int32Array(texts.length * len);
  texts.forEach((text, r) => {
    const row = [bos, ...tok.encode(text), eos];
    if (row.length > len) {
      throw new UsageError(`query "${text}" is ${row.length} tokens; OWLv2 takes at most ${len} (BOS and EOS included)`, { hint: 'shorten the tag' });
    }
    const bad = row.find((id) => !(id >= 0 && id < cfg.vocabSize));
    if (bad !== undefined) throw new UsageError(`query "${text}": token id ${bad} is outside the detector's ${cfg.vocabSize}-entry vocabulary (tokenizer.json and config.json disagree)`);
    ids.set(row, r * len);
    mask.fill(1, r * len, r * len + row.length);
  });
  return { ids: { data: ids, shape: [texts.length, len] }, mask: { data: mask, shape: [texts.length, len] } };
}

/** MG-LLaVA's query text of a tag. */
export function queryText(tag: string): string {
  return QUERY_PREFIX + tag;
}
