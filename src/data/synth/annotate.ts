/**
 * Detector-style box annotations for a synthetic scene, in the reference's box JSON format
 * (`{boxes: [[x1,y1,x2,y2]...], labels, scores}`, integer original-image pixels).
 *
 * Box order — why "smallest first" survives the reference's box pipeline: the NMS step reorders the
 * surviving boxes by descending score (REFERENCE §i.3), so the order is carried by the scores: the real
 * objects get strictly decreasing scores in order of increasing area (smallest object = highest score).
 * The extra boxes (jittered duplicates and partial low-score boxes) all score below every real object and
 * overlap their source object, with the same label, at IoU > 0.2, so NMS removes every one of them and
 * leaves exactly the real objects, smallest first. The per-category cap never triggers (< 100 boxes).
 * In the file the real boxes come first (smallest first), then the extras in descending score.
 *
 * Jitter: every coordinate of a real box moves by up to ±3 % of that box's side (a detector's error scales
 * with the object), then the box is rounded outwards to integers (floor x1/y1, ceil x2/y2) so it still
 * covers a 4-6 px object. Labels are the shape names (an open-vocabulary detector's tags).
 */
import type { BoxEntry } from '../records.js';
import type { Rng } from '../../util/rng.js';
import { intIn } from '../random.js';
import { smallestFirst, type Box, type Scene } from './scene.js';

export interface AnnotateOptions {
  /** Max jitter of real boxes, as a fraction of the box side. */
  jitter: number;
  /** Number of extra (to-be-suppressed) boxes per image, inclusive range. */
  extras: [number, number];
}

export const DEFAULT_ANNOTATE: AnnotateOptions = { jitter: 0.03, extras: [1, 3] };

/** IoU with area (x2-x1)(y2-y1), no +1 — the torchvision convention NMS uses. */
export function iou(a: Box, b: Box): number {
  const iw = Math.min(a[2], b[2]) - Math.max(a[0], b[0]);
  const ih = Math.min(a[3], b[3]) - Math.max(a[1], b[1]);
  if (iw <= 0 || ih <= 0) return 0;
  const inter = iw * ih;
  const area = (r: Box) => (r[2] - r[0]) * (r[3] - r[1]);
  return inter / (area(a) + area(b) - inter);
}

function outward(b: Box, width: number, height: number): Box {
  return [Math.max(0, Math.floor(b[0])), Math.max(0, Math.floor(b[1])), Math.min(width, Math.ceil(b[2])), Math.min(height, Math.ceil(b[3]))];
}

function jittered(rng: Rng, b: Box, frac: number): Box {
  const w = b[2] - b[0];
  const h = b[3] - b[1];
  return [b[0] + rng.uniform(-frac, frac) * w, b[1] + rng.uniform(-frac, frac) * h, b[2] + rng.uniform(-frac, frac) * w, b[3] + rng.uniform(-frac, frac) * h];
}

const round3 = (v: number) => Math.round(v * 1000) / 1000;

export interface Annotation extends BoxEntry {
  /** How many leading entries are real objects (the rest are extras NMS removes). */
  real: number;
}

export function annotateScene(rng: Rng, scene: Scene, o: AnnotateOptions = DEFAULT_ANNOTATE): Annotation {
  const { width, height } = scene;
  const boxes: Box[] = [];
  const labels: string[] = [];
  const scores: number[] = [];
  smallestFirst(scene).forEach((obj, rank) => {
    boxes.push(outward(jittered(rng, obj.box, o.jitter), width, height));
    labels.push(obj.shape);
    // 0.97, 0.92, ... minus < 0.02: strictly decreasing with rank, all ≥ 0.65.
    scores.push(round3(0.97 - 0.05 * rank - rng.uniform(0, 0.02)));
  });
  const real = boxes.length;

  const extras: { box: Box; label: string; score: number }[] = [];
  const nExtra = intIn(rng, o.extras[0], o.extras[1]);
  for (let k = 0; k < nExtra; k++) {
    const src = intIn(rng, 0, real - 1);
    const b = boxes[src]!;
    const w = b[2] - b[0];
    const h = b[3] - b[1];
    let cand: Box;
    let score: number;
    if (rng.next() < 0.5) {
      cand = jittered(rng, b, 0.1); // a duplicate detection of the same object
      score = rng.uniform(0.45, 0.6);
    } else {
      const s = rng.uniform(0.2, 0.35); // a partial detection, shifted along one axis
      const dx = rng.next() < 0.5 ? s * w * (rng.next() < 0.5 ? -1 : 1) : 0;
      const dy = dx === 0 ? s * h * (rng.next() < 0.5 ? -1 : 1) : 0;
      cand = [b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy];
      score = rng.uniform(0.2, 0.4);
    }
    const box = outward(cand, width, height);
    // Only keep extras that NMS is guaranteed to remove (integer rounding can shrink tiny boxes).
    if (iou(box, b) > 0.3 && box[2] > box[0] && box[3] > box[1]) extras.push({ box, label: labels[src]!, score: round3(score) });
  }
  extras.sort((a, b) => b.score - a.score);
  for (const e of extras) {
    boxes.push(e.box);
    labels.push(e.label);
    scores.push(e.score);
  }
  return { boxes, labels, scores, real };
}
