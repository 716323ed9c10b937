/**
 * The LLM positions one sample takes, and the cap that keeps them inside the budget.
 *
 *   positions = text tokens - 1 (the <image> placeholder is replaced) + image tokens + object tokens (one per box)
 *   budget    = data.max_length + image tokens        (2048 = 1472 + 576 at full size: the reference's context)
 *
 * Text is truncated to max_length by the encoder, so text + image always fits; object tokens are what can
 * overflow (10,000 detector boxes of distinct labels survive NMS and the per-category cap as thousands of
 * tokens). Past the budget the lowest-scoring boxes are dropped (boxes.ts `maxBoxes`), and `data check` and
 * training say so per record. Every sample keeps at least one object token (the reference never has none).
 * Within the budget nothing changes: the reference pipeline's boxes are used as they are.
 */

export interface TokenBudget {
  /** data.max_length: the text budget. */
  maxLength: number;
  /** Image tokens of the model ((lowres / patch)²; 576 at full size, 16 in the demo). */
  imageTokens: number;
}

/** The most LLM positions a sample may take. */
export function positionBudget(b: TokenBudget): number {
  return b.maxLength + b.imageTokens;
}

/** Object tokens an image sample with `textTokens` (placeholder included) has room for (>= 1). */
export function objectTokenRoom(textTokens: number, b: TokenBudget): number {
  return Math.max(1, positionBudget(b) - (textTokens - 1) - b.imageTokens);
}

/** LLM positions of an image sample. */
export function samplePositions(textTokens: number, objectTokens: number, b: TokenBudget): number {
  return textTokens - 1 + b.imageTokens + objectTokens;
}

/** Image tokens of a ViT: (image_size / patch_size)². */
export function imageTokensOf(imageSize: number, patchSize: number): number {
  return Math.floor(imageSize / patchSize) ** 2;
}
