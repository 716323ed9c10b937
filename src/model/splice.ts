/**
 * Splicing visual tokens into the text (MG-LLaVA `prepare_inputs_labels_for_multimodal`, REFERENCE (g)).
 *
 * Per sample, after dropping the positions whose attention mask is 0:
 *   [text before <image>] + [N image tokens] + [K_b object tokens of this sample] + [text after]
 * (every `<image>` placeholder, id -200, is replaced this way; it is never embedded). Visual positions get
 * label IGNORE_INDEX. Image embeddings are consumed in order over the batch; object embeddings belong to
 * their sample. The batch is re-padded on the right: zero embeddings, label -100, mask 0, position 0;
 * `position_ids = arange(len_b)` on real positions.
 *
 * A text-only sample (no placeholder) still consumes one image slot (the dataset gives it a zero image)
 * and gets no visual tokens. The official code additionally appends an empty extra row to the batch right
 * after such a sample (`new_inputs_embeds.append(cur_bbox_feats[0:0])`), so the batch grows by one
 * all-padding row; that is loss-neutral and only reproduced with `phantomRowForTextOnly` (golden
 * `splice_textonly` -> `output_official_phantom.*`).
 *
 * Implementation: the whole splice is planned on the host as one source row per output position, then done
 * with a single `tf.gather` from concat([text embeds; image embeds; object embeds; one zero row]). That is
 * differentiable towards the image/object embeddings and (through `embedTokens`) the embedding table.
 */
import * as tf from '@tensorflow/tfjs';
import { toIntMatrix, type IntMatrix, type IntMatrixLike } from './llm/int-matrix.js';
import { IGNORE_INDEX, IMAGE_TOKEN_INDEX } from '../data/constants.js';

export { IMAGE_TOKEN_INDEX };

export interface SpliceInputs {
  /** [B,L] text ids with IMAGE_TOKEN_INDEX placeholders. */
  inputIds: IntMatrixLike;
  /** [B,L]; default all IGNORE_INDEX. */
  labels?: IntMatrixLike | null;
  /** [B,L] 1 = keep, 0 = drop before splicing; default all 1. */
  attentionMask?: IntMatrixLike | null;
  /** Token ids int32 [M] -> embeddings [M,H] (e.g. `llm.embed`). Called once for all text of the batch. */
  embedTokens: (ids: tf.Tensor) => tf.Tensor;
  /**
   * [numImages, N, H] image tokens, consumed in order: one per placeholder, and one per text-only sample
   * (its zero image). Every one must be consumed. null: a text-only batch (no placeholder allowed).
   */
  imageEmbeds: tf.Tensor3D | null;
  /** Per sample [K_b, H] object tokens, inserted after each of its images; null/undefined/missing: none. */
  objectEmbeds?: (tf.Tensor2D | null | undefined)[] | null;
  /** If given, text ids are checked to lie in [0, vocabSize). */
  vocabSize?: number;
}

export interface SpliceOptions {
  /** Cut every spliced row to at most this many positions (before re-padding). */
  maxLength?: number;
  /** Reproduce the official extra all-padding row after each text-only sample (loss-neutral bug). */
  phantomRowForTextOnly?: boolean;
}

/**
 * The LLM inputs. `inputsEmbeds` is a tensor the caller disposes; labels, mask and position ids are host
 * matrices (the LLM forward and the loss plan on the host), each [B',T] with B' = B (plus phantom rows).
 */
export interface SpliceResult {
  inputsEmbeds: tf.Tensor3D; // [B',T,H]
  labels: IntMatrix;
  attentionMask: IntMatrix;
  positionIds: IntMatrix;
  /** For each output row, the input sample it came from (-1 for a phantom row). */
  rowSample: Int32Array;
}

/** Where an output position takes its embedding from. */
type Source = { kind: 'text'; index: number } | { kind: 'image'; image: number; token: number } | { kind: 'object'; sample: number; token: number };

interface PlannedRow {
  sample: number;
  sources: Source[];
  labels: number[];
}

export function spliceMultimodal(inputs: SpliceInputs, options: SpliceOptions = {}): SpliceResult {
  const ids = toIntMatrix(inputs.inputIds, 'splice inputIds');
  const [b, l] = ids.shape;
  const labels = inputs.labels ? toIntMatrix(inputs.labels, 'splice labels') : null;
  const mask = inputs.attentionMask ? toIntMatrix(inputs.attentionMask, 'splice attentionMask') : null;
  for (const [m, what] of [[labels, 'labels'], [mask, 'attentionMask']] as const) {
    if (m && (m.shape[0] !== b || m.shape[1] !== l)) throw new Error(`splice: ${what} [${m.shape}] does not match inputIds [${b},${l}]`);
  }
  const image = inputs.imageEmbeds;
  if (image && image.rank !== 3) throw new Error(`splice: imageEmbeds must be [numImages, N, H], got [${image.shape}]`);
  const numImages = image ? image.shape[0] : 0;
  const imageTokens = image ? image.shape[1] : 0;
  const objects = inputs.objectEmbeds ?? [];
  if (objects.length > b) throw new Error(`splice: ${objects.length} objectEmbeds entries for a batch of ${b}`);
  const objectCount = (s: number) => objects[s]?.shape[0] ?? 0;
  if (options.maxLength !== undefined && !(Number.isInteger(options.maxLength) && options.maxLength > 0)) {
    throw new Error(`splice: maxLength must be a positive integer (got ${options.maxLength})`);
  }

  // ---- plan (host) ----
  const textIds: number[] = [];
  const rows: PlannedRow[] = [];
  let nextImage = 0;
  for (let s = 0; s < b; s++) {
    const row: PlannedRow = { sample: s, sources: [], labels: [] };
    let placeholders = 0;
    for (let i = 0; i < l; i++) {
      const at = s * l + i;
      if (mask && mask.data[at] === 0) continue;
      const id = ids.data[at]!;
      if (id === IMAGE_TOKEN_INDEX) {
        if (!image) throw new Error(`splice: sample ${s} has an <image> placeholder but imageEmbeds is null`);
        if (nextImage >= numImages) throw new Error(`splice: sample ${s} needs image ${nextImage}, imageEmbeds has only ${numImages}`);
        for (let n = 0; n < imageTokens; n++) row.sources.push({ kind: 'image', image: nextImage, token: n });
        for (let k = 0; k < objectCount(s); k++) row.sources.push({ kind: 'object', sample: s, token: k });
        for (let n = 0; n < imageTokens + objectCount(s); n++) row.labels.push(IGNORE_INDEX);
        nextImage++;
        placeholders++;
        continue;
      }
      if (id < 0 || (inputs.vocabSize !== undefined && id >= inputs.vocabSize)) {
        throw new Error(`splice: inputIds[${s},${i}] = ${id} is neither ${IMAGE_TOKEN_INDEX} nor a token id in [0, ${inputs.vocabSize ?? 'V'})`);
      }
      row.sources.push({ kind: 'text', index: textIds.length });
      textIds.push(id);
      row.labels.push(labels ? labels.data[at]! : IGNORE_INDEX);
    }
    if (placeholders === 0 && image) nextImage++; // a text-only sample consumes its (zero) image slot
    if (options.maxLength !== undefined && row.sources.length > options.maxLength) {
      row.sources.length = options.maxLength;
      row.labels.length = options.maxLength;
    }
    rows.push(row);
    if (placeholders === 0 && options.phantomRowForTextOnly) rows.push({ sample: -1, sources: [], labels: [] });
  }
  if (nextImage !== numImages) {
    throw new Error(`splice: the batch uses ${nextImage} images (one per placeholder, one per text-only sample) but imageEmbeds has ${numImages}`);
  }
  const t = Math.max(0, ...rows.map((r) => r.sources.length));
  if (t === 0) throw new Error('splice: every spliced row is empty (attention masks all 0?)');

  // ---- source table: [text (M) | images (numImages*N) | objects of samples with images | zero row] ----
  const hidden = image ? image.shape[2] : null;
  const usedObjects = [...new Set(rows.flatMap((r) => r.sources.filter((x) => x.kind === 'object').map((x) => (x as { sample: number }).sample)))].sort((a, c) => a - c);
  const textBase = 0;
  const imageBase = textBase + textIds.length;
  const objectBase = new Map<number, number>();
  let next = imageBase + numImages * imageTokens;
  for (const s of usedObjects) {
    objectBase.set(s, next);
    next += objectCount(s);
  }
  const zeroRow = next;
  const plan = new Int32Array(rows.length * t).fill(zeroRow);
  rows.forEach((row, r) => {
    row.sources.forEach((src, i) => {
      plan[r * t + i] =
        src.kind === 'text' ? textBase + src.index : src.kind === 'image' ? imageBase + src.image * imageTokens + src.token : objectBase.get(src.sample)! + src.token;
    });
  });

  const inputsEmbeds = tf.tidy(() => {
    const parts: tf.Tensor[] = [];
    if (textIds.length) parts.push(inputs.embedTokens(tf.tensor1d(textIds, 'int32'))); // [M,H]
    if (image) parts.push(image.reshape([numImages * imageTokens, image.shape[2]])); // [numImages*N,H]
    for (const s of usedObjects) parts.push(objects[s]!); // [K_s,H]
    const h = hidden ?? parts[0]!.shape[parts[0]!.rank - 1]!;
    parts.forEach((p, i) => {
      if (p.rank !== 2 || p.shape[1] !== h) throw new Error(`splice: embedding part ${i} has shape [${p.shape}], expected [*, ${h}]`);
    });
    parts.push(tf.zeros([1, h])); // the padding row
    const source = tf.concat(parts, 0); // [rows, H]
    return tf.gather(source, tf.tensor1d(plan, 'int32')).reshape([rows.length, t, h]) as tf.Tensor3D; // [B',T,H]
  });

  // ---- host outputs ----
  const outLabels = new Int32Array(rows.length * t).fill(IGNORE_INDEX);
  const outMask = new Int32Array(rows.length * t);
  const outPos = new Int32Array(rows.length * t);
  rows.forEach((row, r) => {
    for (let i = 0; i < row.sources.length; i++) {
      outLabels[r * t + i] = row.labels[i]!;
      outMask[r * t + i] = 1;
      outPos[r * t + i] = i;
    }
  });
  const shape: [number, number] = [rows.length, t];
  return {
    inputsEmbeds,
    labels: { data: outLabels, shape },
    attentionMask: { data: outMask, shape },
    positionIds: { data: outPos, shape },
    rowSample: Int32Array.from(rows.map((r) => r.sample)),
  };
}
