/**
 * Stop strings on decoded text, and the streaming rule that goes with them.
 *
 * Generation re-decodes a row's generated ids after every token (decoding whole sequences keeps word
 * boundaries and multi-byte characters right) and hands the text to `StopText.update`. A stop word ends
 * the answer there; it and anything after it are trimmed, and so is trailing whitespace. For streaming,
 * text is released only when it can no longer become part of a stop word: a tail that is a proper prefix
 * of some stop word, trailing whitespace and a trailing U+FFFD (an incomplete UTF-8 sequence the next token
 * completes) are held back. So the streamed pieces always concatenate to the final answer, provided the
 * tokenizer's decoding of a prefix is a prefix of the decoding of the whole (true of the byte, word-level
 * and SentencePiece tokenizers here); when it is not, nothing more is streamed and the returned answer is
 * still exact.
 */
export class StopText {
  private emitted = '';
  private final: string | null = null;
  private readonly longest: number;

  constructor(private readonly stopWords: readonly string[]) {
    for (const w of stopWords) if (w === '') throw new Error('stop words must not be empty');
    this.longest = Math.max(0, ...stopWords.map((w) => w.length));
  }

  /** The answer so far (final once `stopped`). */
  get text(): string {
    return this.final ?? this.emitted;
  }

  get stopped(): boolean {
    return this.final !== null;
  }

  /** Feed the full decoded text; returns the newly releasable text and whether a stop word was found. */
  update(decoded: string): { delta: string; stop: boolean } {
    if (this.final !== null) return { delta: '', stop: true };
    const at = this.firstStop(decoded);
    if (at >= 0) return { delta: this.close(decoded.slice(0, at)), stop: true };
    let safe = decoded.replace(/\uFFFD+$/u, '');
    safe = safe.slice(0, safe.length - this.pendingPrefix(safe)).trimEnd();
    return { delta: this.release(safe), stop: false };
  }

  /** End without a stop word (EOS or the token budget): release the rest. */
  finish(decoded: string): string {
    if (this.final !== null) return '';
    return this.close(decoded);
  }

  private close(answer: string): string {
    const text = answer.trimEnd();
    const delta = this.release(text);
    this.final = text;
    return delta;
  }

  private release(safe: string): string {
    if (safe.length <= this.emitted.length || !safe.startsWith(this.emitted)) return '';
    const delta = safe.slice(this.emitted.length);
    this.emitted = safe;
    return delta;
  }

  private firstStop(s: string): number {
    let best = -1;
    // Only the unreleased tail (plus a stop word's length) can hold a new match.
    const from = Math.max(0, this.emitted.length - this.longest);
    for (const w of this.stopWords) {
      const i = s.indexOf(w, from);
      if (i >= 0 && (best < 0 || i < best)) best = i;
    }
    return best;
  }

  /** Length of the longest suffix of `s` that is a proper prefix of a stop word. */
  private pendingPrefix(s: string): number {
    let best = 0;
    for (const w of this.stopWords) {
      for (let n = Math.min(w.length - 1, s.length); n > best; n--) {
        if (s.endsWith(w.slice(0, n))) {
          best = n;
          break;
        }
      }
    }
    return best;
  }
}
