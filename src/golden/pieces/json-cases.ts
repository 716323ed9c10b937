/**
 * Golden runners for the JSON pieces: box preprocessing, conversation encoding and the LR schedule.
 * One check per case; integer/structural results must match exactly.
 */
import { isDeepStrictEqual } from 'node:util';
import { preprocessBoxes } from '../../data/boxes.js';
import { encodeConversation, type ConversationMessage } from '../../data/conversation.js';
import { ByteTokenizer } from '../../data/tokenizers/byte.js';
import { lrAt, warmupIters } from '../../train/schedule.js';
import type { CheckResult } from '../compare.js';
import type { GoldenPiece } from '../manifest.js';

function exact(name: string, pairs: [string, unknown, unknown][]): CheckResult {
  const bad = pairs.filter(([, got, want]) => !isDeepStrictEqual(got, want)).map(([what]) => what);
  return { name, ok: bad.length === 0, maxAbsErr: bad.length ? 1 : 0, maxRelErr: 0, ...(bad.length ? { note: `differs: ${bad.join(', ')}` } : {}) };
}

/** One case of the golden boxes.json (every intermediate stage of the box pipeline). */
export interface BoxCase {
  name: string;
  width: number;
  height: number;
  boxes: number[][];
  labels: string[];
  scores: number[];
  pad_to_square: boolean;
  limit_num: number | null;
  close_to_max_length: boolean;
  image_size_aux: number;
  iou_threshold: number;
  square?: { side: number; dx: number; dy: number };
  padded_boxes?: number[][];
  nms_keep: number[];
  cap_select: number[];
  resized_boxes: number[][];
  resized_hw: [number, number];
  final_boxes: number[][];
  final_labels: string[];
}

export function runBoxes(piece: GoldenPiece): CheckResult[] {
  const { cases } = piece.json as { cases: BoxCase[] };
  return cases.map((c) => {
    const r = preprocessBoxes(
      { boxes: c.boxes, labels: c.labels, scores: c.scores },
      {
        origW: c.width,
        origH: c.height,
        auxSize: c.image_size_aux,
        padToSquare: c.pad_to_square,
        nmsThreshold: c.iou_threshold,
        limitNum: c.limit_num,
        closeToMaxLength: c.close_to_max_length,
      },
    );
    return exact(c.name, [
      ['square', r.stages.square, c.pad_to_square ? c.square : null],
      ...(c.pad_to_square ? [['padded_boxes', r.stages.paddedBoxes, c.padded_boxes] as [string, unknown, unknown]] : []),
      ['nms_keep', r.stages.nmsKeep, c.nms_keep],
      ['cap_select', r.stages.capSelect, c.cap_select],
      ['resized_boxes', r.stages.resizedBoxes, c.resized_boxes],
      ['resized_hw', r.stages.resizedHw, c.resized_hw],
      ['final_boxes', r.boxes, c.final_boxes],
      ['final_labels', r.labels, c.final_labels],
    ]);
  });
}

interface ConversationCase {
  template: string;
  conversation_name: string;
  conversations: ConversationMessage[];
  system: string;
  max_length: number;
  input_ids: number[];
  labels: number[];
}

export function runConversation(piece: GoldenPiece): CheckResult[] {
  const { cases } = piece.json as { cases: ConversationCase[] };
  const tokenizer = new ByteTokenizer(); // the golden's toy tokenizer: id = utf8 byte + 3, BOS 1, EOS 2
  return cases.map((c, i) => {
    const enc = encodeConversation(c.conversations, {
      template: c.template,
      tokenizer,
      maxLength: c.max_length,
      system: c.system,
    });
    return exact(`${i}:${c.template}/${c.conversation_name}/sys=${c.system !== ''}/max=${c.max_length}`, [
      ['input_ids', enc.inputIds, c.input_ids],
      ['labels', enc.labels, c.labels],
    ]);
  });
}

interface ScheduleCase {
  base_lr: number;
  total_iters: number;
  warmup_ratio: number;
  start_factor: number;
  eta_min: number;
  warmup_iters: number;
  lr: number[];
}

export function runSchedule(piece: GoldenPiece): CheckResult[] {
  const { schedules } = piece.json as { schedules: ScheduleCase[] };
  return schedules.map((s) => {
    const cfg = { baseLr: s.base_lr, totalIters: s.total_iters, warmupRatio: s.warmup_ratio, startFactor: s.start_factor, etaMin: s.eta_min };
    let maxAbs = 0;
    let maxRel = 0;
    let ok = warmupIters(cfg) === s.warmup_iters;
    s.lr.forEach((want, i) => {
      const d = Math.abs(lrAt(i, cfg) - want);
      maxAbs = Math.max(maxAbs, d);
      maxRel = Math.max(maxRel, d / Math.max(Math.abs(want), 1e-30));
      if (d > 1e-12 + 1e-9 * Math.abs(want)) ok = false;
    });
    return { name: `lr N=${s.total_iters} base=${s.base_lr}`, ok, maxAbsErr: maxAbs, maxRelErr: maxRel };
  });
}
