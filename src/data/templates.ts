/**
 * Prompt templates (xtuner `PROMPT_TEMPLATE` entries used by the MG-LLaVA configs) as data, plus
 * `applyTemplate` = xtuner `template_map_fn`. One table serves training encoding and chat prompts
 * (conversation.ts turns the templated text into ids for both).
 *
 * There is no separate "plain" caption template: MG-LLaVA's pretrain configs run the captions through
 * llava_map_fn + the same chat template as SFT (e.g. vicuna for the Vicuna configs), so pretraining
 * uses exactly these tables.
 */

export interface PromptTemplate {
  name: string;
  /** Prepended to the first turn's input when a system text is given; has `{system}`. */
  SYSTEM: string;
  /** Wraps each user input; has `{input}` (and may use `{round}`, 1-based). */
  INSTRUCTION: string;
  /** Appended to every answer ('' = none); supervised like the answer. */
  SUFFIX: string;
  /** True: SUFFIX replaces the tokenizer's EOS (no EOS after answers, BOS only once). */
  SUFFIX_AS_EOS: boolean;
  /** Unsupervised separator after each turn ('' = none). */
  SEP: string;
  /** Generation stops on these strings (the tokenizer's EOS token stops generation as well). */
  STOP_WORDS: string[];
}

const VICUNA_SYSTEM =
  'A chat between a curious user and an artificial intelligence assistant. ' +
  "The assistant gives helpful, detailed, and polite answers to the user's questions. {system}\n ";

export const TEMPLATES = {
  vicuna: {
    name: 'vicuna',
    SYSTEM: VICUNA_SYSTEM,
    INSTRUCTION: 'USER: {input} ASSISTANT:',
    SUFFIX: '',
    SUFFIX_AS_EOS: false,
    SEP: '\n',
    STOP_WORDS: [],
  },
  llama3_chat: {
    name: 'llama3_chat',
    SYSTEM: '<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>',
    INSTRUCTION:
      '<|start_header_id|>user<|end_header_id|>\n\n{input}<|eot_id|>' +
      '<|start_header_id|>assistant<|end_header_id|>\n\n',
    SUFFIX: '<|eot_id|>',
    SUFFIX_AS_EOS: true,
    SEP: '',
    STOP_WORDS: ['<|eot_id|>'],
  },
  // As in REFERENCE.md (h) and golden/conversation.json. NB: later xtuner releases write
  // '<|system|>\n{system}…' and '<|user|>\n{input}…' (a newline after the role tag).
  phi3_chat: {
    name: 'phi3_chat',
    SYSTEM: '<|system|>{system}<|end|>\n',
    INSTRUCTION: '<|user|>{input}<|end|>\n<|assistant|>\n',
    SUFFIX: '<|end|>',
    SUFFIX_AS_EOS: true,
    SEP: '\n',
    STOP_WORDS: ['<|end|>'],
  },
  // Used by the Yi-34B configs. Strings of the xtuner releases that also have llama3_chat/phi3_chat
  // (the vendored xtuner's own copy is not readable here); xtuner before ~0.1.12 put the newline
  // first instead ('\n<|im_start|>system\n{system}<|im_end|>').
  qwen_chat: {
    name: 'qwen_chat',
    SYSTEM: '<|im_start|>system\n{system}<|im_end|>\n',
    INSTRUCTION: '<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n',
    SUFFIX: '<|im_end|>',
    SUFFIX_AS_EOS: true,
    SEP: '\n',
    STOP_WORDS: ['<|im_end|>', '<|endoftext|>'],
  },
} as const satisfies Record<string, PromptTemplate>;

export type TemplateName = keyof typeof TEMPLATES;

export function isTemplateName(name: string): name is TemplateName {
  return Object.hasOwn(TEMPLATES, name);
}

export function getTemplate(name: string): PromptTemplate {
  if (!isTemplateName(name)) {
    throw new Error(`templates.ts: unknown prompt template '${name}' (known: ${Object.keys(TEMPLATES).join(', ')})`);
  }
  const t = TEMPLATES[name];
  return { ...t, STOP_WORDS: [...t.STOP_WORDS] };
}

/** Accepts a template object or its name. */
export function resolveTemplate(template: PromptTemplate | string): PromptTemplate {
  return typeof template === 'string' ? getTemplate(template) : template;
}

/**
 * The subset of Python `str.format` the templates use: `{name}` fields and `{{` / `}}` escapes. Values are
 * inserted verbatim (braces inside them are not re-read), unknown fields and lone braces throw like Python.
 */
export function formatTemplate(pattern: string, values: Record<string, string | number>): string {
  return pattern.replace(/\{\{|\}\}|\{([^{}]*)\}|[{}]/g, (m, field: string | undefined) => {
    if (m === '{{') return '{';
    if (m === '}}') return '}';
    if (field === undefined) throw new Error(`templates.ts: lone '${m}' in template ${JSON.stringify(pattern)}`);
    if (!Object.hasOwn(values, field)) {
      throw new Error(`templates.ts: template field '{${field}}' has no value in ${JSON.stringify(pattern)}`);
    }
    return String(values[field]);
  });
}

/** One question/answer turn before templating. `output: null` marks the open turn of a chat prompt. */
export interface TextTurn {
  input: string;
  output: string | null;
}

/** A turn after template_map_fn: the text pieces encode_fn tokenizes. */
export interface TemplatedTurn {
  /** SYSTEM (first turn, if any) + INSTRUCTION; may contain `<image>`. Unsupervised. */
  input: string;
  /** Answer + SUFFIX (supervised); null for the open turn of a chat prompt. */
  output: string | null;
  /** Append the tokenizer's EOS after the output (supervised) and start the next turn with BOS. */
  needEosToken: boolean;
  /** Unsupervised separator after the turn ('' = none). */
  sep: string;
}

/**
 * xtuner template_map_fn. `system` applies to the first turn only (llava_map_fn never sets one, so
 * MG-LLaVA trains without a system prompt; chat adds it with --system).
 */
export function applyTemplate(turns: readonly TextTurn[], template: PromptTemplate, system = ''): TemplatedTurn[] {
  return turns.map((t, i) => {
    let input = formatTemplate(template.INSTRUCTION, { input: t.input, round: i + 1 });
    if (i === 0 && system !== '') input = formatTemplate(template.SYSTEM, { system }) + input;
    return {
      input,
      output: t.output === null ? null : t.output + template.SUFFIX,
      needEosToken: !template.SUFFIX_AS_EOS,
      sep: template.SEP,
    };
  });
}

/** Strings that end generation: the template's STOP_WORDS plus the tokenizer's EOS token text, if given. */
export function stopWords(template: PromptTemplate, eosToken?: string | null): string[] {
  const words = [...template.STOP_WORDS];
  if (eosToken && !words.includes(eosToken)) words.push(eosToken);
  return words;
}
