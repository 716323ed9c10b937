/**
 * Token-level constants shared by the data pipeline and the model (xtuner / LLaVA conventions), defined here
 * only (model/loss.ts and model/splice.ts re-export them). No imports: anything may depend on this file.
 */

/** Placeholder id for the image in `input_ids`; never embedded, replaced by the visual tokens when splicing. */
export const IMAGE_TOKEN_INDEX = -200;

/** Label value that the loss ignores (PyTorch `CrossEntropyLoss(ignore_index=-100)`). */
export const IGNORE_INDEX = -100;

/** The image placeholder as it appears in conversation text. */
export const IMAGE_TOKEN = '<image>';
