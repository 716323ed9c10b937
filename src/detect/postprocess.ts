/**
 * OWLv2 post-processing (`post_process_object_detection`) and MG-LLaVA's box generation on top of it
 * (OWLV2.md §9-10), for one image, on the host:
 *
 *   score = sigmoid(max over queries of the logit), label = first argmax query
 *   boxes = (cx - w/2, cy - h/2, cx + w/2, cy + h/2) * max(H, W)   (the boxes are relative to the padded square,
 *           whose padding is at the bottom/right, so this is already the original image's pixel frame)
 *   keep  = score > threshold (strict), in patch order, no clipping
 *   MG-LLaVA: boxes.int() (truncation toward zero) -> labels = tags[label] -> per-label NMS (IoU > 0.2)
 *             -> only when more than 100 boxes survive: the top 20 scores of every label, grouped by label
 *
 * Arithmetic is float32 where transformers runs it in float32 (the model outputs are float32): the sigmoid, the
 * corner boxes and their scaling, the threshold comparison.
 */
import { batchedNms, topPerLabel, type Box } from '../data/boxes.js';

const f32 = Math.fround;

export interface DenseDetections {
  /** sigmoid(max logit) per patch [N]. */
  scores: Float32Array;
  /** argmax query per patch [N]. */
  labels: Int32Array;
  /** xyxy in pixels per patch [N*4]. */
  boxes: Float32Array;
}

export interface Detections {
  /** Patch indices with score > threshold, in patch order. */
  keepIndex: number[];
  scores: number[];
  /** Query indices. */
  labels: number[];
  boxes: Box[];
}

/**
 * How the [0,1] boxes become pixels: 'max' (transformers >= 4.41 and MG-LLaVA's call): every coordinate times
 * max(H, W); 'wh' (older releases): (W, H, W, H). They agree for the square target MG-LLaVA passes.
 */
export type BoxScaling = 'max' | 'wh';

/**
 * logits [N*Q] and predBoxes [N*4] (cx, cy, w, h) of one image, row-major -> per-patch scores, labels and
 * pixel boxes for a target of `height` x `width` pixels.
 */
export function denseDetections(
  logits: ArrayLike<number>,
  predBoxes: ArrayLike<number>,
  numQueries: number,
  target: { height: number; width: number },
  scaling: BoxScaling = 'max',
): DenseDetections {
  const q = numQueries;
  const n = logits.length / q;
  if (!Number.isInteger(n) || q < 1) throw new Error(`denseDetections: ${logits.length} logits is not a multiple of ${q} queries`);
  if (predBoxes.length !== n * 4) throw new Error(`denseDetections: ${predBoxes.length / 4} boxes for ${n} patches`);
  const m = f32(Math.max(target.height, target.width));
  const scale = scaling === 'max' ? [m, m, m, m] : [f32(target.width), f32(target.height), f32(target.width), f32(target.height)];
  const scores = new Float32Array(n);
  const labels = new Int32Array(n);
  const boxes = new Float32Array(n * 4);
  for (let p = 0; p < n; p++) {
    let best = 0;
    for (let j = 1; j < q; j++) if (logits[p * q + j]! > logits[p * q + best]!) best = j;
    labels[p] = best;
    scores[p] = 1 / (1 + Math.exp(-logits[p * q + best]!));
    const cx = predBoxes[p * 4]!;
    const cy = predBoxes[p * 4 + 1]!;
    const hw = 0.5 * predBoxes[p * 4 + 2]!; // exact in float32
    const hh = 0.5 * predBoxes[p * 4 + 3]!;
    const corners = [f32(cx - hw), f32(cy - hh), f32(cx + hw), f32(cy + hh)];
    for (let k = 0; k < 4; k++) boxes[p * 4 + k] = corners[k]! * scale[k]!;
  }
  return { scores, labels, boxes };
}

/** The detections with score > threshold (compared in float32, as torch compares a float32 tensor with a scalar). */
export function thresholdDetections(d: DenseDetections, threshold: number): Detections {
  const t = f32(threshold);
  const out: Detections = { keepIndex: [], scores: [], labels: [], boxes: [] };
  for (let p = 0; p < d.scores.length; p++) {
    if (!(d.scores[p]! > t)) continue;
    out.keepIndex.push(p);
    out.scores.push(d.scores[p]!);
    out.labels.push(d.labels[p]!);
    out.boxes.push([d.boxes[p * 4]!, d.boxes[p * 4 + 1]!, d.boxes[p * 4 + 2]!, d.boxes[p * 4 + 3]!]);
  }
  return out;
}

export interface MgllavaBoxRule {
  /** Score threshold (0.2). */
  threshold: number;
  /** Per-label NMS IoU (0.2); null: no NMS (the raw detections, as MG-LLaVA's offline script saves them). */
  iouThreshold: number | null;
  /** The per-label cap applies only when more than this many boxes survive NMS (100); null: never. */
  limitNum: number | null;
  /** Boxes kept per label when the cap applies (20). */
  numPerCategory: number;
}

/** MG-LLaVA's rule: threshold 0.2, NMS 0.2, 20 per label past 100 boxes. */
export const MGLLAVA_BOX_RULE: MgllavaBoxRule = { threshold: 0.2, iouThreshold: 0.2, limitNum: 100, numPerCategory: 20 };

export interface MgllavaBoxes {
  detections: Detections;
  /** detections.boxes truncated toward zero (`.int()`). */
  boxesInt: Box[];
  /** Indices into detections kept by NMS, by descending score. */
  nmsKeep: number[];
  /** Indices into the NMS output kept by the cap. */
  capSelect: number[];
  /** detections[nmsKeep][capSelect]: integer boxes in original-image pixels, tag strings, scores, query indices. */
  boxes: Box[];
  labels: string[];
  scores: number[];
  labelIndex: number[];
}

/**
 * MG-LLaVA's boxes for one image of `width` x `height` pixels from its raw OWLv2 outputs (logits [N*Q] with
 * Q = tags.length, predBoxes [N*4]).
 */
export function mgllavaBoxes(
  logits: ArrayLike<number>,
  predBoxes: ArrayLike<number>,
  size: { width: number; height: number },
  tags: readonly string[],
  rule: MgllavaBoxRule = MGLLAVA_BOX_RULE,
): MgllavaBoxes {
  const m = Math.max(size.width, size.height);
  const detections = thresholdDetections(denseDetections(logits, predBoxes, tags.length, { height: m, width: m }), rule.threshold);
  const boxesInt = detections.boxes.map((b) => b.map(Math.trunc) as Box);
  const labelStrings = detections.labels.map((i) => tags[i]!);
  const nmsKeep =
    rule.iouThreshold === null ? detections.scores.map((_, i) => i) : batchedNms(boxesInt, detections.scores, labelStrings, rule.iouThreshold);
  const nmsLabels = nmsKeep.map((i) => labelStrings[i]!);
  const nmsScores = nmsKeep.map((i) => detections.scores[i]!);
  const capSelect =
    rule.limitNum !== null && nmsKeep.length > rule.limitNum
      ? topPerLabel(nmsLabels, nmsScores, rule.numPerCategory)
      : nmsKeep.map((_, i) => i);
  const final = capSelect.map((i) => nmsKeep[i]!);
  return {
    detections,
    boxesInt,
    nmsKeep,
    capSelect,
    boxes: final.map((i) => boxesInt[i]!),
    labels: final.map((i) => labelStrings[i]!),
    scores: final.map((i) => detections.scores[i]!),
    labelIndex: final.map((i) => detections.labels[i]!),
  };
}
