import { resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { runGolden } from '../src/golden/run.js';
import { RUNNERS } from '../src/golden/pieces/index.js';
import { roiAlign, roiMean, roiMeanWeights, type RoiAlignOptions } from '../src/model/roi-align.js';
import { boxesWithDummy, EMPTY_IMAGE_BOX, ObjectFeatures, TEXT_ONLY_BOX, type ObjectFeaturesConfig } from '../src/model/objects.js';
import { Rng } from '../src/util/rng.js';

const GOLDEN = resolve(import.meta.dirname, '../../shared/golden/public');
const shapes = (m: ObjectFeatures) => [...m.namedWeights()].map(([n, v]) => [n, v.shape]);
const f32 = Math.fround;

/**
 * roi_align written the direct way, independent of the separable code: per bin, per 2-D sample,
 * four bilinear taps, average over the bin's grid (zero samples still counted). feat [H][W][C] flat.
 */
function bruteRoiAlign(feat: Float32Array, H: number, W: number, C: number, box: number[], o: RoiAlignOptions): Float64Array {
  const P = o.outputSize;
  const s = f32(o.spatialScale);
  const [x1, y1, x2, y2] = box.map(f32) as [number, number, number, number];
  const sx = f32(x1 * s);
  const sy = f32(y1 * s);
  const rw = Math.max(f32(f32(x2 * s) - sx), 1);
  const rh = Math.max(f32(f32(y2 * s) - sy), 1);
  const bw = f32(rw / P);
  const bh = f32(rh / P);
  const sr = o.samplingRatio ?? -1;
  const gw = sr > 0 ? sr : Math.ceil(f32(rw / P));
  const gh = sr > 0 ? sr : Math.ceil(f32(rh / P));
  const out = new Float64Array(P * P * C);
  const tap = (L: number, t: number): [number, number, number] | null => {
    if (t < -1 || t > L) return null;
    if (t <= 0) t = 0;
    let lo = Math.floor(t);
    let hi: number;
    if (lo >= L - 1) {
      lo = hi = L - 1;
      t = lo;
    } else hi = lo + 1;
    const l = f32(t - lo);
    return [lo, hi, l];
  };
  for (let ph = 0; ph < P; ph++) {
    for (let pw = 0; pw < P; pw++) {
      for (let iy = 0; iy < gh; iy++) {
        const y = f32(f32(sy + f32(ph * bh)) + f32(f32((iy + 0.5) * bh) / gh));
        for (let ix = 0; ix < gw; ix++) {
          const x = f32(f32(sx + f32(pw * bw)) + f32(f32((ix + 0.5) * bw) / gw));
          const ty = tap(H, y);
          const tx = tap(W, x);
          if (!ty || !tx) continue;
          const [yl, yh, ly] = ty;
          const [xl, xh, lx] = tx;
          const taps: [number, number, number][] = [
            [yl, xl, (1 - ly) * (1 - lx)],
            [yl, xh, (1 - ly) * lx],
            [yh, xl, ly * (1 - lx)],
            [yh, xh, ly * lx],
          ];
          for (const [r, c, w] of taps) {
            for (let ch = 0; ch < C; ch++) out[(ph * P + pw) * C + ch]! += w * feat[(r * W + c) * C + ch]!;
          }
        }
      }
      for (let ch = 0; ch < C; ch++) out[(ph * P + pw) * C + ch]! /= gh * gw;
    }
  }
  return out;
}

/** Random boxes on an image of `img` px: ordinary, degenerate, inverted, partly and fully outside. */
function randomBoxes(rng: Rng, n: number, img: number): number[][] {
  const boxes: number[][] = [];
  for (let i = 0; i < n; i++) {
    const kind = i % 6;
    const u = () => rng.uniform(-0.4 * img, 1.4 * img);
    if (kind === 0) boxes.push([rng.uniform(0, img / 2), rng.uniform(0, img / 2), rng.uniform(img / 2, img), rng.uniform(img / 2, img)]);
    else if (kind === 1) {
      const x = Math.round(rng.uniform(0, img));
      const y = Math.round(rng.uniform(0, img));
      boxes.push([x, y, x, y]); // zero size
    } else if (kind === 2) boxes.push([u(), u(), u(), u()]); // anything, incl. inverted / outside
    else if (kind === 3) boxes.push([rng.uniform(img, 1.5 * img), 5, rng.uniform(1.5 * img, 2 * img), img]); // fully outside
    else if (kind === 4) boxes.push([0, 0, img, img]);
    else boxes.push([Math.round(rng.uniform(0, img)), Math.round(rng.uniform(0, img)), Math.round(rng.uniform(0, img)), Math.round(rng.uniform(0, img))]);
  }
  return boxes;
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

const smallConfig = (over: Partial<ObjectFeaturesConfig> = {}): ObjectFeaturesConfig => ({
  inChannels: 12,
  hidden: 16,
  imageSizeAux: 64,
  outputSize: 7,
  samplingRatio: -1,
  projectorDepth: 2,
  multiLevel: null,
  ...over,
});

describe('roi_align (separable)', () => {
  it('matches the golden roi_align: pooled maps, bin means, Ay/Ax, grad of the map', async () => {
    const report = await runGolden(GOLDEN, RUNNERS, ['roi_align']);
    const p = report.pieces.roi_align!;
    expect(p.reason ?? '').toBe('');
    expect(p.ok).toBe(true);
    expect(p.checks.map((c) => c.name)).toEqual(
      expect.arrayContaining(['output.pooled_56', 'output.mean_7_sr2', 'intermediate.Ay_7', 'grad_input.feat_7']),
    );
  });

  it('agrees with a brute-force roi_align on random boxes (degenerate, inverted, outside)', () => {
    const rng = new Rng(42);
    const [H, W, C] = [13, 17, 3]; // non-square on purpose
    const img = 52;
    const featData = Float32Array.from({ length: H * W * C }, () => rng.normal());
    const boxes = randomBoxes(rng, 36, img);
    const feat = tf.tensor3d(featData, [H, W, C]);
    for (const opts of [
      { outputSize: 7, spatialScale: H / img },
      { outputSize: 5, spatialScale: 0.3, samplingRatio: 2 },
      { outputSize: 3, spatialScale: 1 / 3 },
    ] as RoiAlignOptions[]) {
      const pooled = tf.tidy(() => roiAlign(feat, boxes, opts).dataSync());
      const means = tf.tidy(() => roiMean(feat, boxes, opts).dataSync());
      const P = opts.outputSize;
      boxes.forEach((box, k) => {
        const ref = bruteRoiAlign(featData, H, W, C, box, opts);
        const got = pooled.subarray(k * P * P * C, (k + 1) * P * P * C);
        expect(maxDiff(got, ref), `box ${k} [${box}]`).toBeLessThan(2e-5);
        const refMean = Array.from({ length: C }, (_, c) => {
          let s = 0;
          for (let b = 0; b < P * P; b++) s += ref[b * C + c]!;
          return s / (P * P);
        });
        expect(maxDiff(means.subarray(k * C, (k + 1) * C), refMean), `mean box ${k} [${box}]`).toBeLessThan(2e-5);
      });
    }
    feat.dispose();
  });

  it('gives zeros for a box fully outside and 1-px extent for degenerate boxes', () => {
    const w = roiMeanWeights([[200, 200, 260, 260], [8, 8, 8, 8]], 16, 16, { outputSize: 7, spatialScale: 0.25 });
    expect(Array.from(w.u.subarray(0, 16)).every((x) => x === 0)).toBe(true);
    // zero-size box at feature px 2: samples in [2, 3), mass split between rows 2 and 3
    const row = Array.from(w.u.subarray(16, 32));
    expect(row.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 6);
    expect(row.findIndex((x) => x > 0)).toBe(2);
    expect(() => roiMeanWeights([[1, 2, 3]], 4, 4, { outputSize: 2, spatialScale: 1 })).toThrow(/3 coordinates/);
    expect(() => roiMeanWeights([[0, 0, 1, 1]], 4, 4, { outputSize: 0, spatialScale: 1 })).toThrow(/outputSize/);
  });
});

describe('ObjectFeatures', () => {
  it('matches the golden object_features and object_features_multilevel', async () => {
    const names = ['object_features', 'object_features_multilevel'];
    const report = await runGolden(GOLDEN, RUNNERS, names);
    for (const n of names) {
      const p = report.pieces[n]!;
      expect(p.reason ?? '', n).toBe('');
      expect(p.ok, n).toBe(true);
    }
    expect(report.pieces.object_features!.checks.map((c) => c.name)).toContain('intermediate.roi_mean_1');
    expect(report.pieces.object_features_multilevel!.checks.map((c) => c.name)).toContain('grad.multi_level_linear.3.weight');
  });

  it('multi-level: Linear(RoI mean) per level equals the per-bin Linear then mean', () => {
    const levels = [2, 4, 6];
    const m = new ObjectFeatures(smallConfig({ multiLevel: { levelChannels: levels, commonDim: 5 } }), { rng: new Rng(5) });
    const rng = new Rng(9);
    const boxes = [randomBoxes(rng, 6, 64), randomBoxes(rng, 3, 64)];
    tf.tidy(() => {
      const concat = tf.randomNormal([2, 16, 16, 12], 0, 1, 'float32', 3) as tf.Tensor4D;
      const got = m.applyFlat(concat, boxes).tokens;
      const opts = m.roiOptions(16);
      const ref = tf.concat(
        boxes.map((bx, b) => {
          const img = concat.slice([b, 0, 0, 0], [1, 16, 16, 12]).squeeze([0]) as tf.Tensor3D;
          let c0 = 0;
          let acc: tf.Tensor | null = null;
          levels.forEach((cl, l) => {
            const pooled = roiAlign(img.slice([0, 0, c0], [16, 16, cl]) as tf.Tensor3D, bx, opts); // [K,P,P,cl]
            c0 += cl;
            const perBin = m.levelLinears[l]!.apply(pooled); // [K,P,P,common]
            acc = acc ? tf.add(acc, perBin) : perBin;
          });
          return m.bboxProjector.apply(tf.mean(acc!, [1, 2]));
        }),
      );
      expect(maxDiff(got.dataSync(), ref.dataSync())).toBeLessThan(1e-5);
    });
    m.dispose();
  });

  it('returns one [K_b, hidden] tensor per image and rejects empty box lists', () => {
    const m = new ObjectFeatures(smallConfig(), { rng: new Rng(1) });
    tf.tidy(() => {
      const concat = tf.randomNormal([3, 8, 8, 12], 0, 1, 'float32', 1) as tf.Tensor4D;
      const boxes = [[[0, 0, 10, 10]], boxesWithDummy([]), boxesWithDummy([], true)];
      const out = m.apply(concat, boxes);
      expect(out.map((t) => t.shape)).toEqual([[1, 16], [1, 16], [1, 16]]);
      // per image = the same as running the image alone
      const alone = m.apply(concat.slice([2, 0, 0, 0], [1, 8, 8, 12]) as tf.Tensor4D, [boxes[2]!]);
      expect(maxDiff(out[2]!.dataSync(), alone[0]!.dataSync())).toBeLessThan(1e-6);
      expect(() => m.apply(concat, [[[0, 0, 1, 1]], [], [[0, 0, 1, 1]]])).toThrow(/image 1 has no box/);
      expect(() => m.apply(concat, [[[0, 0, 1, 1]]])).toThrow(/1 box lists for a batch of 3/);
    });
    expect(boxesWithDummy([])).toEqual([[...EMPTY_IMAGE_BOX]]);
    expect(boxesWithDummy([[1, 2, 3, 4]], true)).toEqual([[...TEXT_ONLY_BOX]]);
    expect(boxesWithDummy([[1, 2, 3, 4]])).toEqual([[1, 2, 3, 4]]);
    expect(TEXT_ONLY_BOX).toEqual([0, 0, 100, 100]);
    m.dispose();
  });

  it('getConfig() rebuilds the same weight names and shapes', () => {
    for (const cfg of [smallConfig(), smallConfig({ multiLevel: { levelChannels: [4, 8], commonDim: 6 }, projectorDepth: 1 })]) {
      const a = new ObjectFeatures(cfg, { rng: new Rng(2) });
      const b = new ObjectFeatures(a.getConfig(), { rng: new Rng(0), skipInit: true });
      expect(shapes(b)).toEqual(shapes(a));
      a.dispose();
      b.dispose();
    }
    const ml = new ObjectFeatures(smallConfig({ multiLevel: { levelChannels: [4, 8], commonDim: 6 } }), { rng: new Rng(2) });
    expect(shapes(ml).map(([n]) => n)).toEqual([
      'multi_level_linear.0.weight', 'multi_level_linear.0.bias', 'multi_level_linear.1.weight', 'multi_level_linear.1.bias',
      'bbox_projector.model.0.weight', 'bbox_projector.model.0.bias', 'bbox_projector.model.2.weight', 'bbox_projector.model.2.bias',
    ]);
    ml.dispose();
    expect(() => new ObjectFeatures(smallConfig({ multiLevel: { levelChannels: [4, 4], commonDim: 6 } }), { rng: new Rng(0) })).toThrow(/sum to 8/);
  });

  it('does not leak tensors in forward + backward', () => {
    for (const cfg of [smallConfig(), smallConfig({ multiLevel: { levelChannels: [4, 8], commonDim: 6 } })]) {
      const m = new ObjectFeatures(cfg, { rng: new Rng(4) });
      const concat = tf.randomNormal([2, 8, 8, 12], 0, 1, 'float32', 2) as tf.Tensor4D;
      const boxes = [[[0, 0, 30, 30], [10, 5, 64, 40]], [[0, 0, 0, 0]]];
      const before = tf.memory().numTensors;
      tf.tidy(() => {
        const { grads } = tf.variableGrads(() => tf.sum(tf.square(m.applyFlat(concat, boxes).tokens)) as tf.Scalar, [...m.weightMap().values()]);
        expect(Object.keys(grads)).toHaveLength(m.weightMap().size);
        const [gc] = tf.grads((c: tf.Tensor) => tf.sum(m.applyFlat(c as tf.Tensor4D, boxes).tokens))([concat]);
        expect(gc!.shape).toEqual(concat.shape);
        m.apply(concat, boxes);
      });
      expect(tf.memory().numTensors).toBe(before);
      concat.dispose();
      m.dispose();
    }
  });

  it('times the object-feature path at the tiny-e2e bench size (concat 240x64x64, 8 boxes x 4 images)', () => {
    const m = new ObjectFeatures(smallConfig({ inChannels: 240, hidden: 256, imageSizeAux: 256, outputSize: 56 }), { rng: new Rng(6) });
    const rng = new Rng(8);
    const boxes = Array.from({ length: 4 }, () => randomBoxes(rng, 8, 256));
    const concat = tf.randomNormal([4, 64, 64, 240], 0, 1, 'float32', 5) as tf.Tensor4D;
    const vars = [...m.weightMap().values()];
    const step = () =>
      tf.tidy(() => {
        const { value, grads } = tf.variableGrads(() => tf.sum(m.applyFlat(concat, boxes).tokens) as tf.Scalar, vars);
        value.dataSync();
        Object.values(grads).forEach((g) => g.dataSync());
      });
    const time = (f: () => void, n: number) => {
      f();
      const ts: number[] = [];
      for (let i = 0; i < n; i++) {
        const t0 = performance.now();
        f();
        ts.push(performance.now() - t0);
      }
      return ts.sort((a, b) => a - b)[Math.floor(n / 2)]!;
    };
    const weightsMs = time(() => boxes.forEach((b) => roiMeanWeights(b, 64, 64, m.roiOptions(64))), 5);
    const meansMs = time(() => tf.tidy(() => m.roiMeans(concat, boxes).means.dataSync()), 5);
    const stepMs = time(step, 5);
    console.log(
      `[object features, ${tf.getBackend()}] 4 images x 8 boxes, concat 64x64x240, P=56: ` +
        `interpolation weights ${weightsMs.toFixed(2)} ms, RoI means ${meansMs.toFixed(1)} ms, ` +
        `forward+backward (bbox_projector grads) ${stepMs.toFixed(1)} ms`,
    );
    expect(stepMs).toBeGreaterThan(0);
    concat.dispose();
    m.dispose();
  });
});
