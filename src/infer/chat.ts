/**
 * A multi-turn chat about one image (or none): the history is re-encoded with the training template on
 * every turn (buildChatPrompt), so the model always sees exactly the token layout it was trained on.
 *
 * The image placeholder goes at the start of the first user message, as in the training records
 * (`<image>\n` + question); a literal `<image>` typed by the user is removed (the model has one image per
 * conversation). An interrupted answer is not kept in the history.
 */
import { IMAGE_TOKEN } from '../data/constants.js';
import { buildChatPrompt, type ChatExchange } from '../data/conversation.js';
import { stopWords, type PromptTemplate } from '../data/templates.js';
import type { TextTokenizer } from '../data/tokenizer.js';
import type { MGLLaVA } from '../model/mgllava.js';
import { generate, type Generation, type VisualTokens } from './generate.js';
import type { SamplingOptions } from './sampling.js';
import { UsageError } from '../errors.js';

export interface ChatOptions extends SamplingOptions {
  model: MGLLaVA;
  tokenizer: TextTokenizer;
  template: PromptTemplate;
  /** The conversation's image; null for a text-only chat. Owned by the caller. */
  visual: VisualTokens | null;
  /** System text for the first turn (MG-LLaVA trains without one). */
  system?: string;
  /**
   * The answer budget: a number of tokens, or `{ fit: n }`: n tokens, or fewer when the trained context
   * (`maxLength`) has less room left after the prompt.
   */
  maxNewTokens: number | { fit: number };
  /**
   * Positions the model was trained on (the run's data.max_length): a turn whose prompt (image and
   * object tokens included) plus the answer budget would exceed it is refused with a ChatLengthError.
   */
  maxLength?: number;
}

/** A conversation grown past the trained context; the history is unchanged. */
export class ChatLengthError extends UsageError {
  constructor(message: string) {
    super(message);
    this.name = 'ChatLengthError';
  }
}

export interface AskOptions {
  onToken?: (textDelta: string) => void;
  signal?: AbortSignal;
}

export class ChatSession {
  private history: ChatExchange[] = [];

  constructor(private readonly o: ChatOptions) {}

  /** Finished exchanges so far. */
  get turns(): readonly ChatExchange[] {
    return this.history;
  }

  reset(): void {
    this.history = [];
  }

  /** The prompt ids for a new user message after the current history. */
  promptIds(userText: string): number[] {
    const text = userText.split(IMAGE_TOKEN).join('');
    const first = this.history.length === 0;
    const user = first && this.o.visual ? `${IMAGE_TOKEN}\n${text}` : text;
    const history = this.history.map((h, i) => (i === 0 && this.o.visual ? { ...h, user: `${IMAGE_TOKEN}\n${h.user}` } : h));
    return buildChatPrompt(this.o.template, history, user, { tokenizer: this.o.tokenizer, system: this.o.system });
  }

  /** Sequence positions of a prompt: its ids with the image placeholder replaced by the image and object tokens. */
  positions(ids: readonly number[]): number {
    const v = this.o.visual;
    return ids.length + (v ? v.image.shape[0] + (v.objects?.shape[0] ?? 0) - 1 : 0);
  }

  /** The answer budget of a prompt of `positions` positions (throws when nothing fits). */
  private budget(positions: number): number {
    const max = this.o.maxLength;
    const want = this.o.maxNewTokens;
    if (typeof want === 'number') {
      if (max !== undefined && positions + want > max) {
        throw new ChatLengthError(
          `the conversation needs ${positions} prompt positions + ${want} new tokens, ` +
            `more than the ${max} the model was trained on (data.max_length): /reset the history or lower --max-new-tokens`,
        );
      }
      return want;
    }
    const room = max === undefined ? want.fit : Math.min(want.fit, max - positions);
    if (room < 1) {
      throw new ChatLengthError(`the conversation needs ${positions} prompt positions, the model was trained on ${max} (data.max_length): no room for an answer; /reset the history`);
    }
    return room;
  }

  async ask(userText: string, a: AskOptions = {}): Promise<Generation> {
    const ids = this.promptIds(userText);
    const maxNewTokens = this.budget(this.positions(ids));
    const [g] = await generate(this.o.model, [{ ids, visual: this.o.visual }], {
      tokenizer: this.o.tokenizer,
      maxNewTokens,
      stopWords: stopWords(this.o.template, this.o.tokenizer.eosToken),
      temperature: this.o.temperature,
      topP: this.o.topP,
      rng: this.o.rng,
      onToken: a.onToken ? (d) => a.onToken!(d) : undefined,
      signal: a.signal,
    });
    if (g!.finish !== 'aborted') this.history.push({ user: userText.split(IMAGE_TOKEN).join(''), assistant: g!.text });
    return g!;
  }
}
