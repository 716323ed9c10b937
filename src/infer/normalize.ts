/**
 * Answer normalisation for exact-match accuracy. Both the prediction and the reference go through
 * `normalizeAnswer`; a prediction is correct when the two results are equal strings.
 *
 *   1. Unicode NFKC, lower case.
 *   2. Punctuation (Unicode category P) becomes a space, except between two letters/digits, where it is part
 *      of the word ("3.5", "don't", "t-shirt" stay as they are; "red ." / "red." / "'red'" become "red").
 *   3. Split on whitespace, drop the articles "a", "an", "the".
 *   4. Join with single spaces (so leading, trailing and repeated whitespace do not matter).
 *
 * So "The red." = "red" = " RED ", but "red square" != "red", "3.5" != "35", "no" != "none".
 */
const ARTICLES = new Set(['a', 'an', 'the']);

export function normalizeAnswer(text: string): string {
  const s = text.normalize('NFKC').toLowerCase();
  const kept = s.replace(/\p{P}/gu, (p, at: number) => (isWordChar(s[at - 1]) && isWordChar(s[at + p.length]) ? p : ' '));
  return kept
    .split(/\s+/u)
    .filter((w) => w !== '' && !ARTICLES.has(w))
    .join(' ');
}

function isWordChar(c: string | undefined): boolean {
  return c !== undefined && /[\p{L}\p{N}]/u.test(c);
}

/** Exact match after normalisation. */
export function answersMatch(prediction: string, reference: string): boolean {
  return normalizeAnswer(prediction) === normalizeAnswer(reference);
}
