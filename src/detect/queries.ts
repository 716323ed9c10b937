/**
 * Tags -> OWLv2 text queries, as MG-LLaVA builds them: one query "a photo of {tag}" per tag, tokenised like
 * `Owlv2Processor` does: [BOS, tokens..., EOS] right-padded with the pad id (0, "!") to the model's 16
 * positions, attention mask 1 on real tokens. The processor does not truncate (a longer query would overflow
 * the position embeddings), so a tag too long for 16 tokens is an error naming it.
 */
import { readSmallTextFile } from '../io/small-file.js';
import { DataError, UsageError } from '../errors.js';
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

/** Which tags each image is searched for. */
export interface Tagging {
  /** One list for every image, or null when the tags are per image. */
  shared: string[] | null;
  /** The tags of the image with this box id (record id or relative path); undefined: none given. */
  tagsFor(id: string): string[] | undefined;
  /** Where the tags came from, for messages. */
  source: string;
}

const sharedTagging = (tags: string[], source: string): Tagging => ({ shared: tags, tagsFor: () => tags, source });

/**
 * A JSON tag file maps box ids to their image's tags, e.g. RAM++'s output per image:
 * `{"000123": "dog | frisbee | grass", "000124": ["cat", "sofa"]}`.
 */
function perImageTagging(json: unknown, file: string): Tagging {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new DataError(`${file}: a JSON tag file must be an object {id: "tag1, tag2" or ["tag1", "tag2"]}`);
  }
  const map = new Map<string, string[]>();
  for (const [id, v] of Object.entries(json as Record<string, unknown>)) {
    if (typeof v === 'string') map.set(id, parseTags(v));
    else if (Array.isArray(v) && v.every((t) => typeof t === 'string')) map.set(id, parseTags(v.join(',')));
    else throw new DataError(`${file}: tags of ${JSON.stringify(id)} must be a string or a list of strings`);
  }
  return { shared: null, tagsFor: (id) => map.get(id), source: `${file} (tags per image)` };
}

/** --tags / --tags-file (a list, or a JSON object of per-image lists) / the bundled COCO vocabulary (neither given). */
export async function resolveTags(opts: { tags?: string; tagsFile?: string }): Promise<Tagging> {
  if (opts.tags !== undefined && opts.tagsFile !== undefined) throw new UsageError('give --tags or --tags-file, not both');
  if (opts.tagsFile !== undefined) {
    const text = await readSmallTextFile(opts.tagsFile, 'the tag list'); // /dev/zero or a FIFO: refused, not read forever
    if (text.trimStart().startsWith('{')) {
      let json: unknown;
      try {
        json = JSON.parse(text);
      } catch (e) {
        throw new DataError(`${opts.tagsFile}: not valid JSON (${(e as Error).message})`);
      }
      return perImageTagging(json, opts.tagsFile);
    }
    const tags = parseTags(text);
    if (!tags.length) throw new UsageError(`--tags-file ${opts.tagsFile}: no tags in it (one per line or comma-separated)`);
    return sharedTagging(tags, opts.tagsFile);
  }
  if (opts.tags !== undefined) {
    const tags = parseTags(opts.tags);
    if (!tags.length) throw new UsageError('--tags: no tags given (e.g. --tags "dog, cat, red ball")');
    return sharedTagging(tags, '--tags');
  }
  return sharedTagging([...COCO_CLASSES], 'the bundled COCO vocabulary (80 classes)');
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
