/**
 * Golden runners for the OWLv2 host-side pieces: `preprocess` (Owlv2ImageProcessor: rescale, pad, anti-aliased
 * resize, normalise, with every intermediate and the per-axis operators), `post_process`
 * (post_process_object_detection, both box scalings) and `mgllava_boxes` (MG-LLaVA's .int() boxes, per-label
 * NMS and cap). Cases come from the piece's config; indices, labels and integer boxes must match exactly.
 */
import { compareExact, compareTensor, Checks, type CheckResult, type Tolerance } from '../compare.js';
import { ioTensor, readManifest, type GoldenPiece } from '../manifest.js';
import type { HostTensor } from '../../io/safetensors.js';
import {
  antialiasSigma,
  gaussianBlur,
  gaussianOperator,
  normalizeChannels,
  operatorMatrix,
  owlv2Resize,
  padBottomRight,
  rescaleImage,
  zoomOperator,
  type FloatImage,
} from '../../detect/preprocess.js';
import { denseDetections, mgllavaBoxes, thresholdDetections, type BoxScaling } from '../../detect/postprocess.js';

type Json = Record<string, unknown>;

function num(piece: GoldenPiece, obj: Json, key: string): number {
  const v = obj[key];
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`golden piece '${piece.name}': config '${key}' must be a number, got ${JSON.stringify(v)}`);
  return v;
}

function cases(piece: GoldenPiece): [string, Json][] {
  const c = piece.config.cases;
  if (!c || typeof c !== 'object') throw new Error(`golden piece '${piece.name}': config has no 'cases'`);
  return Object.entries(c as Record<string, Json>);
}

/** HWC float32 -> CHW (the golden pixel_values layout). */
function toChw(img: FloatImage, data: Float32Array): Float32Array {
  const { height: h, width: w, channels: ch } = img;
  const out = new Float32Array(data.length);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) for (let c = 0; c < ch; c++) out[(c * h + y) * w + x] = data[(y * w + x) * ch + c]!;
  return out;
}

export async function runOwlv2Preprocess(piece: GoldenPiece): Promise<CheckResult[]> {
  const manifest = (await readManifest(piece.dir)) as { tolerance_hint?: { preprocess?: Partial<Tolerance> } };
  const tol: Tolerance = { atol: manifest.tolerance_hint?.preprocess?.atol ?? 1e-6, rtol: manifest.tolerance_hint?.preprocess?.rtol ?? 0 };
  const cfg = piece.config;
  const mean = cfg.mean as number[];
  const std = cfg.std as number[];
  const padValue = num(piece, cfg, 'pad_value');
  const checks = new Checks();
  const has = (k: string) => piece.io.has(k);
  for (const [name, c] of cases(piece)) {
    const size = typeof c.size === 'number' ? c.size : num(piece, cfg, 'size');
    const u8 = ioTensor(piece, `input.image_${name}`);
    const [h, w] = u8.shape as [number, number, number];
    const img = { data: Uint8Array.from(u8.data), width: w, height: h };
    const rescaled = rescaleImage(img);
    const padded = padBottomRight(rescaled, padValue);
    const resized = owlv2Resize(padded, size, size);
    checks.tensor(`intermediate.rescaled_${name}`, rescaled.data, ioTensor(piece, `intermediate.rescaled_${name}`), tol);
    checks.tensor(`intermediate.padded_${name}`, padded.data, ioTensor(piece, `intermediate.padded_${name}`), tol);
    checks.tensor(`intermediate.blurred_${name}`, gaussianBlur(padded, size, size).data, ioTensor(piece, `intermediate.blurred_${name}`), tol);
    checks.tensor(`intermediate.resized_${name}`, resized.data, ioTensor(piece, `intermediate.resized_${name}`), tol);
    const s = padded.height;
    for (const axis of ['h', 'w'] as const) {
      const zk = `intermediate.zoom_matrix_${axis}_${name}`;
      if (has(zk)) checks.tensor(zk, operatorMatrix(zoomOperator(s, size)), ioTensor(piece, zk), tol);
      const gk = `intermediate.gauss_matrix_${axis}_${name}`;
      const sigma = antialiasSigma(s, size);
      if (has(gk)) checks.tensor(gk, operatorMatrix(gaussianOperator(s, sigma)), ioTensor(piece, gk), tol);
    }
    checks.tensor(`output.pixel_values_${name}`, toChw(resized, normalizeChannels(resized, mean, std)), ioTensor(piece, `output.pixel_values_${name}`), tol);
    const pad0Key = `output.pixel_values_${name}_pad0`;
    if (has(pad0Key)) {
      const r0 = owlv2Resize(padBottomRight(rescaled, 0), size, size);
      checks.tensor(pad0Key, toChw(r0, normalizeChannels(r0, mean, std)), ioTensor(piece, pad0Key), tol);
    }
  }
  return checks.results();
}

/** Rows [b] of a [B, ...] host tensor. */
function row(t: HostTensor, b: number): Float32Array | Int32Array {
  const per = t.data.length / t.shape[0]!;
  return t.data.subarray(b * per, (b + 1) * per);
}

export function runOwlv2PostProcess(piece: GoldenPiece): CheckResult[] {
  const threshold = num(piece, piece.config, 'threshold');
  const logits = ioTensor(piece, 'input.logits'); // [B,N,Q]
  const boxes = ioTensor(piece, 'input.pred_boxes'); // [B,N,4]
  const targets = ioTensor(piece, 'input.target_sizes'); // [B,2] (height, width)
  const [b, , q] = logits.shape as [number, number, number];
  const out: CheckResult[] = [];
  const dense = (scaling: BoxScaling) =>
    Array.from({ length: b }, (_, i) => denseDetections(row(logits, i), row(boxes, i), q, { height: targets.data[2 * i]!, width: targets.data[2 * i + 1]! }, scaling));
  const byMax = dense('max');
  const byWh = dense('wh');
  const cat = <T extends Float32Array | Int32Array>(parts: T[], make: (len: number) => T): T => {
    const all = make(parts.reduce((s, p) => s + p.length, 0));
    let o = 0;
    for (const p of parts) {
      all.set(p, o);
      o += p.length;
    }
    return all;
  };
  const f = (len: number) => new Float32Array(len);
  out.push(compareTensor('output.scores_all', cat(byMax.map((d) => d.scores), f), ioTensor(piece, 'output.scores_all'), piece.forward));
  out.push(compareExact('output.labels_all', cat(byMax.map((d) => d.labels), (len) => new Int32Array(len)), ioTensor(piece, 'output.labels_all')));
  out.push(compareTensor('output.boxes_all', cat(byMax.map((d) => d.boxes), f), ioTensor(piece, 'output.boxes_all'), piece.forward));
  out.push(compareTensor('output.boxes_all_wh_scaling', cat(byWh.map((d) => d.boxes), f), ioTensor(piece, 'output.boxes_all_wh_scaling'), piece.forward));
  for (let i = 0; i < b; i++) {
    const kept = thresholdDetections(byMax[i]!, threshold);
    out.push(compareExact(`output.keep_index_${i}`, kept.keepIndex, ioTensor(piece, `output.keep_index_${i}`)));
    out.push(compareExact(`output.labels_${i}`, kept.labels, ioTensor(piece, `output.labels_${i}`)));
    out.push(compareTensor(`output.scores_${i}`, kept.scores, ioTensor(piece, `output.scores_${i}`), piece.forward));
    out.push(compareTensor(`output.boxes_${i}`, kept.boxes.flat(), ioTensor(piece, `output.boxes_${i}`), piece.forward));
  }
  return out;
}

export function runOwlv2MgllavaBoxes(piece: GoldenPiece): CheckResult[] {
  const cfg = piece.config;
  const rule = {
    threshold: num(piece, cfg, 'threshold'),
    iouThreshold: num(piece, cfg, 'iou_threshold'),
    limitNum: num(piece, cfg, 'limit_num'),
    numPerCategory: num(piece, cfg, 'num_per_category'),
  };
  const out: CheckResult[] = [];
  for (const [name, c] of cases(piece)) {
    const tags = c.tags as string[];
    if (!Array.isArray(tags) || !tags.every((t) => typeof t === 'string')) throw new Error(`golden piece '${piece.name}': case ${name} has no tag list`);
    const logits = ioTensor(piece, `input.logits_${name}`); // [1,N,Q]
    const r = mgllavaBoxes(logits.data, ioTensor(piece, `input.pred_boxes_${name}`).data, { width: num(piece, c, 'image_width'), height: num(piece, c, 'image_height') }, tags, rule);
    const io = (k: string) => ioTensor(piece, `output.${k}_${name}`);
    out.push(compareExact(`output.keep_index_${name}`, r.detections.keepIndex, io('keep_index')));
    out.push(compareTensor(`output.scores_${name}`, r.detections.scores, io('scores'), piece.forward));
    out.push(compareTensor(`output.boxes_${name}`, r.detections.boxes.flat(), io('boxes'), piece.forward));
    out.push(compareExact(`output.boxes_int_${name}`, r.boxesInt.flat(), io('boxes_int')));
    out.push(compareExact(`output.labels_${name}`, r.detections.labels, io('labels')));
    out.push(compareExact(`output.nms_keep_${name}`, r.nmsKeep, io('nms_keep')));
    out.push(compareExact(`output.cap_select_${name}`, r.capSelect, io('cap_select')));
    out.push(compareExact(`output.final_boxes_${name}`, r.boxes.flat(), io('final_boxes')));
    out.push(compareTensor(`output.final_scores_${name}`, r.scores, io('final_scores'), piece.forward));
    out.push(compareExact(`output.final_labels_${name}`, r.labelIndex, io('final_labels')));
    const want = c.final_label_strings;
    if (Array.isArray(want)) {
      const same = want.length === r.labels.length && want.every((s, i) => s === r.labels[i]);
      out.push({ name: `final_label_strings_${name}`, ok: same, maxAbsErr: same ? 0 : 1, maxRelErr: 0, ...(same ? {} : { note: 'label strings differ' }) });
    }
  }
  return out;
}
