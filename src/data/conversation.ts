/**
 * LLaVA conversations -> `input_ids` / `labels` (xtuner llava_map_fn -> template_map_fn -> encode_fn,
 * REFERENCE.md §h), and the chat prompt built by the same code so inference sees exactly the token
 * sequence training produced for the prompt part.
 *
 * Per turn: [BOS if first turn or the previous turn ended with EOS] (-100) · input pieces (-100; split at
 * `<image>`, which becomes IMAGE_TOKEN_INDEX) · output (+SUFFIX) tokens (supervised) · [EOS if the template has
 * no SUFFIX_AS_EOS] (supervised) · SEP tokens (-100). Every text piece is tokenized on its own.
 */
import { IGNORE_INDEX, IMAGE_TOKEN, IMAGE_TOKEN_INDEX } from './constants.js';
import { applyTemplate, resolveTemplate, type PromptTemplate, type TemplatedTurn, type TextTurn } from './templates.js';
import type { TextTokenizer } from './tokenizer.js';
import { DataError } from '../errors.js';

/** One message of a LLaVA record (`from` is 'human' or 'gpt'). */
export interface ConversationMessage {
  from: string;
  value: string;
}

/** Python `str.strip()` whitespace (differs from JS `trim()`: adds \x1c-\x1f and \x85, lacks \uFEFF). */
const PY_WS = '\\t\\n\\v\\f\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const PY_STRIP_RE = new RegExp(`^[${PY_WS}]+|[${PY_WS}]+$`, 'g');

export function pyStrip(s: string): string {
  return s.replace(PY_STRIP_RE, '');
}

/** llava_map_fn's rewrite of a human message that contains `<image>`: '<image>\n' + rest.strip(), stripped. */
export function normalizeImageText(value: string): string {
  if (!value.includes(IMAGE_TOKEN)) return value;
  return pyStrip(IMAGE_TOKEN + '\n' + pyStrip(value.split(IMAGE_TOKEN).join('')));
}

/**
 * xtuner llava_map_fn: drop leading 'gpt' messages, concatenate consecutive 'human' messages (no separator;
 * each normalized for `<image>` first), close a turn at every 'gpt' message. A trailing human message without
 * an answer is dropped (as in xtuner).
 */
export function llavaToTurns(conversations: readonly ConversationMessage[]): TextTurn[] {
  let start = 0;
  while (start < conversations.length && conversations[start].from === 'gpt') start++;
  const turns: TextTurn[] = [];
  let input = '';
  for (let i = start; i < conversations.length; i++) {
    const m = conversations[i];
    if (m.from === 'human') input += normalizeImageText(m.value);
    else if (m.from === 'gpt') {
      turns.push({ input, output: m.value });
      input = '';
    } else {
      throw new Error(`conversation.ts: message ${i} has from='${m.from}' (expected 'human' or 'gpt')`);
    }
  }
  return turns;
}

export interface EncodedIds {
  inputIds: number[];
  labels: number[];
}

/**
 * encode_fn on templated turns, without truncation. A turn with `output: null` (the open chat turn) ends the
 * sequence right after its input. With `withImageToken`, `<image>` (at most one per turn) becomes
 * IMAGE_TOKEN_INDEX; without it, it is ordinary text.
 */
export function encodeTemplatedTurns(
  turns: readonly TemplatedTurn[],
  tokenizer: TextTokenizer,
  withImageToken = true,
): EncodedIds {
  const inputIds: number[] = [];
  const labels: number[] = [];
  const push = (ids: readonly number[], supervised: boolean) => {
    for (const id of ids) {
      inputIds.push(id);
      labels.push(supervised ? id : IGNORE_INDEX);
    }
  };
  let needBos = true;
  turns.forEach((turn, i) => {
    if (needBos && tokenizer.bosId !== null) push([tokenizer.bosId], false);
    push(encodeInput(turn.input, tokenizer, withImageToken, i), false);
    if (turn.output === null) {
      if (i !== turns.length - 1) throw new Error(`conversation.ts: only the last turn may be open (turn ${i})`);
      return;
    }
    push(tokenizer.encode(turn.output), true);
    if (turn.needEosToken) {
      if (tokenizer.eosId === null) {
        // A tokenizer.json alone (no tokenizer_config.json beside it) names no EOS: the user's file, not a bug.
        throw new DataError(`tokenizer ${tokenizer.name} has no EOS token, but the prompt template needs an EOS token at the end of every answer`, {
          hint: 'set eos_token in the tokenizer_config.json beside tokenizer.json',
        });
      }
      push([tokenizer.eosId], true);
      needBos = true;
    } else {
      needBos = false;
    }
    if (turn.sep !== '') push(tokenizer.encode(turn.sep), false);
  });
  return { inputIds, labels };
}

function encodeInput(text: string, tokenizer: TextTokenizer, withImageToken: boolean, turn: number): number[] {
  if (!withImageToken || !text.includes(IMAGE_TOKEN)) return tokenizer.encode(text);
  const chunks = text.split(IMAGE_TOKEN);
  if (chunks.length !== 2) {
    throw new Error(`conversation.ts: turn ${turn} has ${chunks.length - 1} '${IMAGE_TOKEN}' tokens (at most 1 per turn)`);
  }
  return [...tokenizer.encode(chunks[0]), IMAGE_TOKEN_INDEX, ...tokenizer.encode(chunks[1])];
}

export interface EncodeOptions {
  template: PromptTemplate | string;
  tokenizer: TextTokenizer;
  /** Both lists are cut to this length (1472 at full size = 2048 - 576). */
  maxLength: number;
  withImageToken?: boolean;
  /** System text for the first turn (MG-LLaVA trains without one). */
  system?: string;
}

export interface EncodedConversation extends EncodedIds {
  /** Every label is IGNORE_INDEX (e.g. the answer was cut off): the official dataset drops such samples. */
  allMasked: boolean;
  /** Ids removed by the max_length cut. */
  truncated: number;
  /** IMAGE_TOKEN_INDEX entries left after truncation (an image sample needs exactly 1). */
  numImageTokens: number;
}

/** llava_map_fn + template_map_fn + encode_fn + truncation for one LLaVA record. */
export function encodeConversation(
  conversations: readonly ConversationMessage[],
  opts: EncodeOptions,
): EncodedConversation {
  if (!Number.isInteger(opts.maxLength) || opts.maxLength <= 0) {
    throw new Error(`conversation.ts: maxLength must be a positive integer, got ${opts.maxLength}`);
  }
  const templated = applyTemplate(llavaToTurns(conversations), resolveTemplate(opts.template), opts.system ?? '');
  const full = encodeTemplatedTurns(templated, opts.tokenizer, opts.withImageToken ?? true);
  const inputIds = full.inputIds.slice(0, opts.maxLength);
  const labels = full.labels.slice(0, opts.maxLength);
  return {
    inputIds,
    labels,
    allMasked: labels.every((l) => l === IGNORE_INDEX),
    truncated: full.inputIds.length - inputIds.length,
    numImageTokens: inputIds.filter((id) => id === IMAGE_TOKEN_INDEX).length,
  };
}

/** A finished chat exchange: the user's text and the model's answer (without SUFFIX / EOS). */
export interface ChatExchange {
  user: string;
  assistant: string;
}

export interface ChatPromptOptions {
  tokenizer: TextTokenizer;
  system?: string;
  withImageToken?: boolean;
}

/**
 * Token ids of a chat prompt: the history encoded exactly as training encodes those turns (answers with
 * SUFFIX/EOS and SEP), then [BOS if due] + the new INSTRUCTION, ending where the answer starts. So
 * `encodeConversation(conv).inputIds` = prompt ids + answer(+SUFFIX) ids + [EOS] + SEP ids for the last
 * turn. User texts get llava_map_fn's `<image>` normalisation. (xtuner's chat CLI instead tokenizes the
 * concatenated prompt string, whose token boundaries can differ from training's per-piece encoding.)
 * No truncation: the caller checks the length against the model's context.
 */
export function buildChatPrompt(
  template: PromptTemplate | string,
  history: readonly ChatExchange[],
  userText: string,
  opts: ChatPromptOptions,
): number[] {
  const turns: TextTurn[] = [
    ...history.map((h) => ({ input: normalizeImageText(h.user), output: h.assistant })),
    { input: normalizeImageText(userText), output: null },
  ];
  const templated = applyTemplate(turns, resolveTemplate(template), opts.system ?? '');
  return encodeTemplatedTurns(templated, opts.tokenizer, opts.withImageToken ?? true).inputIds;
}
