/**
 * Box pipeline of `MGLLaVADataset.__getitem__` (image branch): detector boxes in original-image pixels ->
 * boxes in pixels of the `auxSize`×`auxSize` aux image that roi_align samples (REFERENCE.md §i).
 *
 *   padShift (expand2square offset) -> batchedNms (per label) -> capPerCategory -> resizeBoxes (shortest side,
 *   round half to even, truncated new size) -> centerCropBoxes (clamp, then keep test; dummy box if empty)
 *
 * Numerics mirror the official code where it matters: boxes and scores are float32 tensors there, so IoU is
 * computed in float32 (every op rounded with Math.fround) and the resize multiplies float32 boxes by the
 * float32-rounded scale (torch casts the Python scalar to the tensor dtype). The new image size uses the
 * Python float64 product truncated by `int()`, which is what produces the 767 case. All coordinates that
 * leave this module are integers stored as float32 values (exact in a JS number).
 */

/** Box as [x1, y1, x2, y2]. */
export type Box = [number, number, number, number];

/** The box an image gets when no detector box survives (labels become empty). */
export const EMPTY_IMAGE_BOX: Readonly<Box> = [0, 0, 0, 0];

/** The box a text-only sample gets (the official dataset's "100 does not matter" placeholder). */
export const TEXT_ONLY_BOX: Readonly<Box> = [0, 0, 100, 100];

/** Boxes + labels of a text-only sample. (The official code stores the label as a tensor `[0]`; labels are
 *  never read by the model, so an empty string list is used here.) */
export function textOnlyBoxes(): { boxes: Box[]; labels: string[] } {
  return { boxes: [[...TEXT_ONLY_BOX]], labels: [] };
}

/** Margin of the "text is close to max_length" rule that drops the cap to 1 box per label. */
export const CLOSE_TO_MAX_LENGTH_MARGIN = 50;

/** `len(input_ids) >= max_length - 50`, evaluated on the ids after truncation to max_length. */
export function isCloseToMaxLength(numInputIds: number, maxLength: number): boolean {
  return numInputIds >= maxLength - CLOSE_TO_MAX_LENGTH_MARGIN;
}

export interface SquareGeometry {
  side: number;
  dx: number;
  dy: number;
}

/** expand2square: the image is pasted at (dx, dy) on a side×side canvas. */
export function squareGeometry(width: number, height: number): SquareGeometry {
  checkSize(width, height, 'squareGeometry');
  if (width === height) return { side: width, dx: 0, dy: 0 };
  if (width > height) return { side: width, dx: 0, dy: Math.floor((width - height) / 2) };
  return { side: height, dx: Math.floor((height - width) / 2), dy: 0 };
}

/** Shift boxes by the expand2square paste offset. The official code adds the Python int offset before the
 *  list becomes a float32 tensor, hence add-then-round. */
export function padShift(boxes: readonly Box[], width: number, height: number): Box[] {
  const { dx, dy } = squareGeometry(width, height);
  return boxes.map((b) => [f32(b[0] + dx), f32(b[1] + dy), f32(b[2] + dx), f32(b[3] + dy)]);
}

/** IoU of two boxes in float32 arithmetic, area without +1 (torchvision's nms kernel). NaN for two empty boxes. */
export function boxIouF32(a: Readonly<Box>, b: Readonly<Box>): number {
  const areaA = f32(f32(a[2] - a[0]) * f32(a[3] - a[1]));
  const areaB = f32(f32(b[2] - b[0]) * f32(b[3] - b[1]));
  const w = Math.max(0, f32(Math.min(a[2], b[2]) - Math.max(a[0], b[0])));
  const h = Math.max(0, f32(Math.min(a[3], b[3]) - Math.max(a[1], b[1])));
  const inter = f32(w * h);
  return f32(inter / f32(f32(areaA + areaB) - inter));
}

/**
 * Greedy NMS within each label (torchvision `batched_nms` semantics): boxes are visited by descending score
 * (stable: equal scores keep input order, as torchvision's stable sort); a box is suppressed by an earlier
 * kept box of the same label when IoU > threshold. The float32 IoU is compared with the threshold as a
 * float64 (the C++ kernel compares `float > double`), so an IoU of exactly 1/5 IS suppressed at 0.2.
 * (torchvision's box-offset trick can leak across labels for coordinates < -1; labels here never interact.)
 * Returns the kept indices in visiting order, i.e. by descending score.
 */
export function batchedNms(
  boxes: readonly Box[],
  scores: readonly number[],
  labels: readonly string[],
  iouThreshold: number,
): number[] {
  const n = boxes.length;
  if (scores.length !== n || labels.length !== n) {
    throw new Error(`boxes.ts batchedNms: ${n} boxes but ${scores.length} scores and ${labels.length} labels`);
  }
  const order = stableOrderByScoreDesc(scores);
  const suppressed = new Uint8Array(n);
  const keep: number[] = [];
  for (let oi = 0; oi < n; oi++) {
    const i = order[oi];
    if (suppressed[i]) continue;
    keep.push(i);
    for (let oj = oi + 1; oj < n; oj++) {
      const j = order[oj];
      if (suppressed[j] || labels[j] !== labels[i]) continue;
      if (boxIouF32(boxes[i], boxes[j]) > iouThreshold) suppressed[j] = 1;
    }
  }
  return keep;
}

/** Per-label cap used when the cap is triggered: 20 if limitNum > 50, 5 if < 50, 1 if close to max_length. */
export function perCategoryCap(limitNum: number | null, closeToMaxLength: boolean): number {
  if (closeToMaxLength) return 1;
  if (limitNum === null || limitNum < 50) return 5;
  if (limitNum > 50) return 20;
  // The official code leaves `num_per_category` unbound for exactly 50 and crashes.
  throw new Error('boxes.ts: limitNum = 50 has no per-category cap in the official code (use > 50 or < 50)');
}

/**
 * `limit_mode='per_category'` on the NMS output (already in descending score order). Triggered only if
 * there are more than `limitNum` boxes or the text is close to max_length (limitNum null = never by count).
 * Labels are grouped in order of first appearance; a group over the cap keeps its top-`cap` by score
 * (descending; ties keep their order — torch.topk's tie order is unspecified); output = groups concatenated.
 * Returns indices into the given lists.
 */
export function capPerCategory(
  labels: readonly string[],
  scores: readonly number[],
  limitNum: number | null,
  closeToMaxLength: boolean,
): number[] {
  const n = labels.length;
  if (scores.length !== n) throw new Error(`boxes.ts capPerCategory: ${n} labels but ${scores.length} scores`);
  const all = Array.from({ length: n }, (_, i) => i);
  const triggered = n > 0 && ((limitNum !== null && n > limitNum) || closeToMaxLength);
  if (!triggered) return all;
  return topPerLabel(labels, scores, perCategoryCap(limitNum, closeToMaxLength));
}

/**
 * The grouping of capPerCategory with an explicit cap (OWLv2 box generation states its own 20): labels grouped
 * in order of first appearance, each group over `cap` replaced by its top-`cap` scores, groups concatenated.
 */
export function topPerLabel(labels: readonly string[], scores: readonly number[], cap: number): number[] {
  const n = labels.length;
  const groups = new Map<string, number[]>(); // Map keeps first-appearance order
  for (let i = 0; i < n; i++) {
    const g = groups.get(labels[i]);
    if (g) g.push(i);
    else groups.set(labels[i], [i]);
  }
  const out: number[] = [];
  for (const idx of groups.values()) {
    if (idx.length <= cap) {
      out.push(...idx);
    } else {
      const top = stableOrderByScoreDesc(idx.map((i) => scores[i])).slice(0, cap);
      out.push(...top.map((k) => idx[k]));
    }
  }
  return out;
}

export interface ResizedBoxes {
  /** Integer coordinates on the resized (not yet cropped) image. */
  boxes: Box[];
  /** `int(h * scale)`, `int(w * scale)`: can be auxSize - 1 (the 767 case). */
  height: number;
  width: number;
}

/** Shortest-side resize to `shortSide`: round_half_even(f32(box) * f32(scale)), new size truncated. */
export function resizeBoxes(boxes: readonly Box[], width: number, height: number, shortSide: number): ResizedBoxes {
  checkSize(width, height, 'resizeBoxes');
  const scale = shortSide / Math.min(width, height); // Python float
  const scale32 = f32(scale); // torch casts the scalar to the float32 tensor's dtype
  const resized = boxes.map((b) => b.map((v) => roundHalfEven(f32(f32(v) * scale32))) as Box);
  return { boxes: resized, height: Math.trunc(height * scale), width: Math.trunc(width * scale) };
}

/**
 * Centre crop `crop`×`crop` of a width×height image: start = floor((size - crop) / 2) (can be -1), clamp
 * x1,y1 at 0 and x2,y2 at crop, then drop a box only if x2 < 0, y2 < 0, x1 > crop or y1 > crop (so boxes
 * touching or outside a border survive as degenerate boxes). No survivor: one [0,0,0,0] box, no labels.
 */
export function centerCropBoxes(
  boxes: readonly Box[],
  labels: readonly string[],
  width: number,
  height: number,
  crop: number,
): { boxes: Box[]; labels: string[] } {
  const { boxes: out, labels: outLabels } = cropKeeping(boxes, labels, width, height, crop);
  return { boxes: out, labels: outLabels };
}

/** centerCropBoxes, also returning the indices of the input boxes that survived (empty for the dummy box). */
function cropKeeping(
  boxes: readonly Box[],
  labels: readonly string[],
  width: number,
  height: number,
  crop: number,
): { boxes: Box[]; labels: string[]; kept: number[] } {
  if (labels.length !== boxes.length) {
    throw new Error(`boxes.ts centerCropBoxes: ${boxes.length} boxes but ${labels.length} labels`);
  }
  const sx = Math.floor((width - crop) / 2);
  const sy = Math.floor((height - crop) / 2);
  const out: Box[] = [];
  const outLabels: string[] = [];
  const kept: number[] = [];
  boxes.forEach((b, i) => {
    const x1 = Math.max(b[0] - sx, 0);
    const y1 = Math.max(b[1] - sy, 0);
    const x2 = Math.min(b[2] - sx, crop);
    const y2 = Math.min(b[3] - sy, crop);
    if (x2 < 0 || y2 < 0 || x1 > crop || y1 > crop) return;
    out.push([f32(x1), f32(y1), f32(x2), f32(y2)]);
    outLabels.push(labels[i]);
    kept.push(i);
  });
  if (out.length === 0) return { boxes: [[...EMPTY_IMAGE_BOX]], labels: [], kept };
  return { boxes: out, labels: outLabels, kept };
}

/**
 * Keep at most `max` boxes, the highest-scoring (ties: earlier first), in their given order. This is the
 * token-budget cap: each box is one object token, and text + image + object tokens must fit the LLM's
 * positions (tokenBudget.ts). Returns the indices kept.
 */
export function capByScore(scores: readonly number[], max: number): number[] {
  if (scores.length <= max) return scores.map((_, i) => i);
  const top = stableOrderByScoreDesc(scores).slice(0, Math.max(0, max));
  return top.sort((a, b) => a - b);
}

export interface BoxInput {
  /** xyxy in original-image pixels (OWLv2 output truncated to ints; may exceed the image). */
  boxes: readonly (readonly number[])[];
  labels: readonly string[];
  scores: readonly number[];
}

export interface BoxOptions {
  origW: number;
  origH: number;
  /** Side of the aux image (768 at full size). */
  auxSize?: number;
  /** expand2square before resizing (true in every official config). */
  padToSquare?: boolean;
  nmsThreshold?: number;
  /** null disables the count trigger of the cap. */
  limitNum?: number | null;
  /** `isCloseToMaxLength(len(input_ids), max_length)` of the sample's text. */
  closeToMaxLength?: boolean;
  /**
   * Most object tokens the sample's token budget leaves room for (tokenBudget.ts); past it the lowest-scoring
   * surviving boxes are dropped. null/undefined: no limit (the reference has none).
   */
  maxBoxes?: number | null;
}

/** Every intermediate result, named after the golden file's fields. */
export interface BoxStages {
  square: SquareGeometry | null;
  paddedBoxes: Box[];
  nmsKeep: number[];
  capSelect: number[];
  resizedBoxes: Box[];
  resizedHw: [number, number];
  /** Boxes dropped by the token-budget cap (`maxBoxes`), 0 when it did not apply. */
  budgetDropped: number;
}

export interface BoxResult {
  /** In aux-image pixels, integer-valued float32; never empty (dummy [0,0,0,0] box). */
  boxes: Box[];
  /** One per box, except for the dummy box (empty list). */
  labels: string[];
  stages: BoxStages;
}

/** The reference's box pipeline settings (data.nms_threshold, data.limit_num): per-label NMS at IoU 0.2, the per-category cap past 100 boxes. */
export const BOX_DEFAULTS = { nmsThreshold: 0.2, limitNum: 100 } as const;

/** The whole box pipeline for one image. */
export function preprocessBoxes(input: BoxInput, opts: BoxOptions): BoxResult {
  const auxSize = opts.auxSize ?? 768;
  const padToSquare = opts.padToSquare ?? true;
  const nmsThreshold = opts.nmsThreshold ?? BOX_DEFAULTS.nmsThreshold;
  const limitNum = opts.limitNum === undefined ? BOX_DEFAULTS.limitNum : opts.limitNum;
  const closeToMaxLength = opts.closeToMaxLength ?? false;
  checkSize(opts.origW, opts.origH, 'preprocessBoxes');
  if (!Number.isInteger(auxSize) || auxSize <= 0) throw new Error(`boxes.ts: auxSize must be a positive integer, got ${auxSize}`);
  if (!Number.isFinite(nmsThreshold)) throw new Error(`boxes.ts: nmsThreshold must be finite, got ${nmsThreshold}`);
  if (limitNum !== null && !(Number.isInteger(limitNum) && limitNum >= 0)) {
    throw new Error(`boxes.ts: limitNum must be a non-negative integer or null, got ${limitNum}`);
  }
  const raw = validateInput(input);

  let width = opts.origW;
  let height = opts.origH;
  let square: SquareGeometry | null = null;
  let boxes: Box[];
  if (padToSquare) {
    square = squareGeometry(width, height);
    boxes = padShift(raw, width, height);
    width = height = square.side;
  } else {
    boxes = raw.map((b) => b.map(f32) as Box);
  }
  const scores = input.scores.map(f32); // torch.tensor(scores) is float32: ties are judged after rounding
  const paddedBoxes = boxes;

  const nmsKeep = batchedNms(boxes, scores, input.labels, nmsThreshold);
  const nmsBoxes = nmsKeep.map((i) => boxes[i]);
  const nmsScores = nmsKeep.map((i) => scores[i]);
  const nmsLabels = nmsKeep.map((i) => input.labels[i]);

  const capSelect = capPerCategory(nmsLabels, nmsScores, limitNum, closeToMaxLength);
  const capBoxes = capSelect.map((i) => nmsBoxes[i]);
  const capLabels = capSelect.map((i) => nmsLabels[i]);

  const resized = resizeBoxes(capBoxes, width, height, auxSize);
  let cropped = cropKeeping(resized.boxes, capLabels, resized.width, resized.height, auxSize);
  let budgetDropped = 0;
  const maxBoxes = opts.maxBoxes ?? null;
  if (maxBoxes !== null) {
    if (!(Number.isInteger(maxBoxes) && maxBoxes >= 1)) throw new Error(`boxes.ts: maxBoxes must be an integer >= 1, got ${maxBoxes}`);
    if (cropped.kept.length > maxBoxes) {
      // Scores of the surviving boxes: crop index -> cap index -> NMS order.
      const keep = capByScore(cropped.kept.map((i) => nmsScores[capSelect[i]!]!), maxBoxes);
      budgetDropped = cropped.kept.length - keep.length;
      const c = cropped;
      cropped = { boxes: keep.map((k) => c.boxes[k]!), labels: keep.map((k) => c.labels[k]!), kept: keep.map((k) => c.kept[k]!) };
    }
  }
  return {
    boxes: cropped.boxes,
    labels: cropped.labels,
    stages: {
      square,
      paddedBoxes,
      nmsKeep,
      capSelect,
      resizedBoxes: resized.boxes,
      resizedHw: [resized.height, resized.width],
      budgetDropped,
    },
  };
}

// ---------------------------------------------------------------------------------------------------------

const f32 = Math.fround;

/** torch.round: half to even; integral result (no -0). */
export function roundHalfEven(v: number): number {
  const fl = Math.floor(v);
  const d = v - fl;
  const r = d > 0.5 ? fl + 1 : d < 0.5 ? fl : fl % 2 === 0 ? fl : fl + 1;
  return r === 0 ? 0 : r;
}

/** Indices sorted by descending score, ties in index order (a stable descending sort). */
function stableOrderByScoreDesc(scores: readonly number[]): number[] {
  return Array.from({ length: scores.length }, (_, i) => i).sort((a, b) => scores[b] - scores[a] || a - b);
}

function checkSize(width: number, height: number, where: string): void {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width <= 0 || height <= 0) {
    throw new Error(`boxes.ts ${where}: image size must be positive integers, got ${width}x${height}`);
  }
}

function validateInput(input: BoxInput): Box[] {
  const n = input.boxes.length;
  if (input.labels.length !== n || input.scores.length !== n) {
    throw new Error(`boxes.ts: ${n} boxes but ${input.labels.length} labels and ${input.scores.length} scores`);
  }
  return input.boxes.map((b, i) => {
    if (b.length !== 4 || !b.every(Number.isFinite)) {
      throw new Error(`boxes.ts: box ${i} must be 4 finite numbers [x1,y1,x2,y2], got ${JSON.stringify(b)}`);
    }
    if (!Number.isFinite(input.scores[i])) throw new Error(`boxes.ts: score ${i} is not finite (${input.scores[i]})`);
    return [b[0], b[1], b[2], b[3]];
  });
}
