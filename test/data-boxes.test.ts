import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  batchedNms,
  boxIouF32,
  capPerCategory,
  centerCropBoxes,
  isCloseToMaxLength,
  padShift,
  preprocessBoxes,
  resizeBoxes,
  roundHalfEven,
  squareGeometry,
  textOnlyBoxes,
  type Box,
} from '../src/data/boxes.js';
import type { BoxCase } from '../src/golden/pieces/json-cases.js';

const GOLDEN = path.resolve(import.meta.dirname, '../../shared/golden/public');

type GoldenCase = BoxCase;

const golden = JSON.parse(readFileSync(path.join(GOLDEN, 'boxes.json'), 'utf8')) as {
  sides_where_int_side_times_scale_is_767: number[];
  cases: GoldenCase[];
};

describe('box pipeline vs golden/boxes.json', () => {
  it('has cases', () => expect(golden.cases.length).toBeGreaterThanOrEqual(7));

  for (const c of golden.cases) {
    it(`${c.name}: every intermediate stage matches`, () => {
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
      if (c.pad_to_square) {
        expect(r.stages.square).toEqual(c.square);
        expect(r.stages.paddedBoxes).toEqual(c.padded_boxes);
      } else {
        expect(r.stages.square).toBeNull();
      }
      expect(r.stages.nmsKeep).toEqual(c.nms_keep);
      expect(r.stages.capSelect).toEqual(c.cap_select);
      expect(r.stages.resizedBoxes).toEqual(c.resized_boxes);
      expect(r.stages.resizedHw).toEqual(c.resized_hw);
      expect(r.boxes).toEqual(c.final_boxes);
      expect(r.labels).toEqual(c.final_labels);
    });
  }

  it('reproduces the list of square sides whose resized size truncates to 767', () => {
    const listed = golden.sides_where_int_side_times_scale_is_767;
    const maxSide = Math.max(...listed);
    const found: number[] = [];
    for (let side = 1; side <= maxSide; side++) {
      if (resizeBoxes([], side, side, 768).height === 767) found.push(side);
    }
    expect(found).toEqual(listed);
  });
});

describe('box pipeline stages (edge cases)', () => {
  it('squareGeometry / padShift use floor((long - short) / 2)', () => {
    expect(squareGeometry(640, 480)).toEqual({ side: 640, dx: 0, dy: 80 });
    expect(squareGeometry(400, 535)).toEqual({ side: 535, dx: 67, dy: 0 });
    expect(squareGeometry(10, 10)).toEqual({ side: 10, dx: 0, dy: 0 });
    expect(padShift([[-5, -5, 20, 20]], 100, 51)).toEqual([[-5, 19, 20, 44]]);
    expect(() => squareGeometry(0, 10)).toThrow(/positive integers/);
  });

  it('IoU: no +1 in the area, touching boxes have IoU 0, empty pairs are NaN', () => {
    expect(boxIouF32([0, 0, 10, 10], [0, 0, 10, 10])).toBe(1);
    expect(boxIouF32([0, 0, 10, 10], [10, 0, 20, 10])).toBe(0);
    expect(boxIouF32([0, 0, 10, 10], [5, 0, 15, 10])).toBe(Math.fround(50 / 150));
    expect(boxIouF32([3, 3, 3, 3], [3, 3, 3, 3])).toBeNaN();
  });

  it('NMS suppresses strictly above the threshold, compared as torchvision does (float32 IoU vs float64)', () => {
    // IoU exactly 1/5 in float32 = 0.2000000030 > 0.2: torchvision suppresses it.
    const b: Box[] = [
      [0, 0, 10, 10],
      [0, 0, 10, 2],
    ];
    expect(batchedNms(b, [0.9, 0.8], ['a', 'a'], 0.2)).toEqual([0]);
    // Just below: IoU 19/100 is kept.
    expect(batchedNms([[0, 0, 10, 10], [0, 0, 10, 1.9]], [0.9, 0.8], ['a', 'a'], 0.2)).toEqual([0, 1]);
    // Two empty boxes: IoU NaN never suppresses.
    expect(batchedNms([[1, 1, 1, 1], [1, 1, 1, 1]], [0.5, 0.6], ['a', 'a'], 0.2)).toEqual([1, 0]);
  });

  it('NMS is per label, output by descending score, ties in input order', () => {
    const b: Box[] = [
      [0, 0, 10, 10],
      [0, 0, 10, 10],
      [50, 50, 60, 60],
      [1, 1, 10, 10],
      [100, 100, 110, 110],
    ];
    // Same box, different labels: both survive. Box 3 overlaps box 0 (same label 'a') and has the same score: the
    // earlier index wins the tie and suppresses it.
    expect(batchedNms(b, [0.5, 0.5, 0.5, 0.5, 0.7], ['a', 'b', 'a', 'a', 'c'], 0.2)).toEqual([4, 0, 1, 2]);
    // Negative coordinates stay within their label (torchvision's offset trick could leak here).
    const neg: Box[] = [
      [-100, -100, -10, -10],
      [-100, -100, -10, -10],
    ];
    expect(batchedNms(neg, [0.9, 0.8], ['x', 'y'], 0.2)).toEqual([0, 1]);
    expect(() => batchedNms(neg, [0.9], ['x', 'y'], 0.2)).toThrow(/2 boxes but 1 scores/);
  });

  it('per-category cap: trigger rules, 20/5/1, grouping by first appearance, top-k inside a group', () => {
    const labels = ['b', 'a', 'b', 'b', 'a', 'c'];
    const scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4];
    // not triggered (6 <= limit)
    expect(capPerCategory(labels, scores, 100, false)).toEqual([0, 1, 2, 3, 4, 5]);
    expect(capPerCategory(labels, scores, null, false)).toEqual([0, 1, 2, 3, 4, 5]);
    // close to max length: 1 per label, grouped b, a, c
    expect(capPerCategory(labels, scores, 100, true)).toEqual([0, 1, 5]);
    expect(capPerCategory(labels, scores, null, true)).toEqual([0, 1, 5]);
    // count trigger with limit < 50 -> cap 5: regrouping only (no group exceeds 5)
    expect(capPerCategory(labels, scores, 3, false)).toEqual([0, 2, 3, 1, 4, 5]);
    // a group over the cap keeps its best boxes by score, even if the input is not sorted
    const many = Array.from({ length: 8 }, () => 'x');
    const s = [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6];
    expect(capPerCategory(many, s, 3, false)).toEqual([1, 3, 5, 7, 6]);
    // exactly 50 has no cap in the official code
    expect(() => capPerCategory(many, s, 50, false)).not.toThrow(); // 8 <= 50: not triggered
    const sixty = Array.from({ length: 60 }, () => 'x');
    expect(() => capPerCategory(sixty, sixty.map(() => 0.5), 50, false)).toThrow(/limitNum = 50/);
    // > 50 -> 20 per label; equal scores keep their order
    expect(capPerCategory(sixty, sixty.map(() => 0.5), 51, false)).toEqual(Array.from({ length: 20 }, (_, i) => i));
    expect(capPerCategory([], [], 100, true)).toEqual([]);
  });

  it('resize: round half to even on float32 products, new size truncated', () => {
    // side 512 -> scale 1.5: 1.5 -> 2, 4.5 -> 4, 7.5 -> 8, -1.5 -> -2
    const r = resizeBoxes([[1, 3, 5, -1]], 512, 512, 768);
    expect(r.boxes).toEqual([[2, 4, 8, -2]]);
    expect([r.height, r.width]).toEqual([768, 768]);
    expect(resizeBoxes([], 535, 535, 768).height).toBe(767);
    expect(roundHalfEven(-0.4)).toBe(0);
    expect(Object.is(roundHalfEven(-0.4), -0)).toBe(false);
    // non-square (no padding): scale from the short side only
    expect(resizeBoxes([[10, 10, 20, 20]], 1000, 500, 768)).toEqual({
      boxes: [[15, 15, 31, 31]],
      height: 768,
      width: 1536,
    });
  });

  it('centre crop: start may be -1, clamp before the keep test, touching borders survive', () => {
    // 767 case: start = floor(-1/2) = -1 -> every box shifts by +1 and x2 clamps at 768
    expect(centerCropBoxes([[96, 0, 767, 767]], ['a'], 767, 767, 768)).toEqual({ boxes: [[97, 1, 768, 768]], labels: ['a'] });
    const out = centerCropBoxes(
      [
        [0, 0, 100, 100], // left part: x cropped away (start 384) -> x2 = -284 < 0: dropped
        [300, 10, 384, 20], // ends exactly at the crop start: x2 = 0 -> kept as a degenerate box
        [1152, 10, 1200, 20], // starts exactly at the crop end: x1 = 768 -> kept (degenerate)
        [1153, 10, 1200, 20], // x1 = 769 > 768: dropped
        [-50, -50, 2000, 2000], // covers everything: clamped to the crop
      ],
      ['p', 'q', 'r', 's', 't'],
      1536,
      768,
      768,
    );
    expect(out.boxes).toEqual([
      [0, 10, 0, 20],
      [768, 10, 768, 20],
      [0, 0, 768, 768],
    ]);
    expect(out.labels).toEqual(['q', 'r', 't']);
    expect(centerCropBoxes([[5000, 5000, 6000, 6000]], ['z'], 768, 768, 768)).toEqual({ boxes: [[0, 0, 0, 0]], labels: [] });
  });
});

describe('preprocessBoxes', () => {
  it('works for a small aux size and never hard-codes 768', () => {
    const r = preprocessBoxes(
      { boxes: [[0, 0, 32, 16], [8, 4, 24, 12]], labels: ['a', 'b'], scores: [0.5, 0.9] },
      { origW: 32, origH: 16, auxSize: 16 },
    );
    expect(r.stages.square).toEqual({ side: 32, dx: 0, dy: 8 });
    expect(r.stages.resizedHw).toEqual([16, 16]);
    expect(r.boxes).toEqual([
      [4, 6, 12, 10],
      [0, 4, 16, 12],
    ]);
    expect(r.labels).toEqual(['b', 'a']);
  });

  it('no boxes -> one dummy [0,0,0,0] box; text-only samples use [0,0,100,100]', () => {
    const r = preprocessBoxes({ boxes: [], labels: [], scores: [] }, { origW: 20, origH: 10, closeToMaxLength: true });
    expect(r.boxes).toEqual([[0, 0, 0, 0]]);
    expect(r.labels).toEqual([]);
    expect(textOnlyBoxes()).toEqual({ boxes: [[0, 0, 100, 100]], labels: [] });
  });

  it('scores are compared after float32 rounding (ties by input order)', () => {
    // 0.1 + 2^-40 and 0.1 round to the same float32: a tie, so input order decides
    const r = preprocessBoxes(
      { boxes: [[0, 0, 10, 10], [0, 0, 10, 10]], labels: ['a', 'a'], scores: [0.1, 0.1 + 2 ** -40] },
      { origW: 10, origH: 10 },
    );
    expect(r.stages.nmsKeep).toEqual([0]);
  });

  it('rejects malformed input with a clear error', () => {
    const o = { origW: 10, origH: 10 };
    expect(() => preprocessBoxes({ boxes: [[0, 0, 1]], labels: ['a'], scores: [1] }, o)).toThrow(/box 0 must be 4 finite/);
    expect(() => preprocessBoxes({ boxes: [[0, 0, 1, NaN]], labels: ['a'], scores: [1] }, o)).toThrow(/box 0/);
    expect(() => preprocessBoxes({ boxes: [[0, 0, 1, 1]], labels: [], scores: [1] }, o)).toThrow(/1 boxes but 0 labels/);
    expect(() => preprocessBoxes({ boxes: [[0, 0, 1, 1]], labels: ['a'], scores: [Infinity] }, o)).toThrow(/score 0/);
    expect(() => preprocessBoxes({ boxes: [], labels: [], scores: [] }, { ...o, auxSize: 0 })).toThrow(/auxSize/);
    expect(() => preprocessBoxes({ boxes: [], labels: [], scores: [] }, { ...o, limitNum: -1 })).toThrow(/limitNum/);
    expect(() => preprocessBoxes({ boxes: [], labels: [], scores: [] }, { ...o, nmsThreshold: NaN })).toThrow(/nmsThreshold/);
  });

  it('isCloseToMaxLength uses a 50-token margin', () => {
    expect(isCloseToMaxLength(1421, 1472)).toBe(false);
    expect(isCloseToMaxLength(1422, 1472)).toBe(true);
  });
});
