/**
 * Synthetic scenes for the demo dataset (DEMO-STUDY.md "Dataset shape that works"): a non-square canvas with
 * low-contrast clutter, and 3-6 objects of which exactly one is small, one is large and the rest are
 * medium distractors. Geometry only; rendering is render.ts, annotations are annotate.ts.
 */
import type { Rng } from '../../util/rng.js';
import { intIn, pick } from '../random.js';

export const COLORS = [
  { name: 'red', rgb: [215, 45, 40] },
  { name: 'green', rgb: [40, 165, 60] },
  { name: 'blue', rgb: [45, 85, 215] },
  { name: 'yellow', rgb: [230, 205, 45] },
  { name: 'purple', rgb: [145, 60, 185] },
  { name: 'cyan', rgb: [40, 195, 205] },
] as const;

export const SHAPES = ['square', 'circle', 'triangle'] as const;

export type ColorName = (typeof COLORS)[number]['name'];
export type ShapeName = (typeof SHAPES)[number];
export type SizeClass = 'small' | 'medium' | 'large';

export type Rgb = [number, number, number];
export type Box = [number, number, number, number]; // xyxy, pixels

export interface SceneOptions {
  /** Longest canvas side; each side is drawn from [minSide, maxSide]. */
  minSide: number;
  maxSide: number;
  minObjects: number;
  maxObjects: number;
  /** Object side as a fraction of the canvas's longest side, per size class. */
  sizes: Record<SizeClass, [number, number]>;
  /** Clutter items per image and their maximal colour deviation from the background (0-255). */
  clutter: [number, number];
  clutterContrast: number;
  /** Per-pixel noise amplitude (0-255, triangular distribution). */
  noise: number;
}

export const DEFAULT_SCENE: SceneOptions = {
  minSide: 120,
  maxSide: 200,
  minObjects: 3,
  maxObjects: 6,
  sizes: { small: [0.04, 0.06], medium: [0.12, 0.16], large: [0.24, 0.32] },
  clutter: [8, 16],
  clutterContrast: 22,
  noise: 10,
};

export interface SceneObject {
  shape: ShapeName;
  color: ColorName;
  /** Rendered colour: the named colour with a small per-object variation. */
  rgb: Rgb;
  size: SizeClass;
  /** Exact extent of the drawn shape (its bounding box). */
  box: Box;
}

export type ClutterItem =
  | { kind: 'line'; x1: number; y1: number; x2: number; y2: number; width: number; rgb: Rgb; opacity: number }
  | { kind: 'ellipse'; cx: number; cy: number; rx: number; ry: number; rgb: Rgb; opacity: number }
  | { kind: 'rect'; x: number; y: number; w: number; h: number; rgb: Rgb; opacity: number };

export interface Scene {
  width: number;
  height: number;
  background: Rgb;
  clutter: ClutterItem[];
  /** In drawing order (largest first, so nothing hides a smaller object — they never overlap anyway). */
  objects: SceneObject[];
}

const clampByte = (v: number) => Math.max(0, Math.min(255, Math.round(v)));

export function makeScene(rng: Rng, o: SceneOptions = DEFAULT_SCENE): Scene {
  const width = intIn(rng, o.minSide, o.maxSide);
  const height = intIn(rng, o.minSide, o.maxSide);
  const longest = Math.max(width, height);
  const tone = intIn(rng, 95, 165);
  const background: Rgb = [clampByte(tone + intIn(rng, -12, 12)), clampByte(tone + intIn(rng, -12, 12)), clampByte(tone + intIn(rng, -12, 12))];
  const near = (): Rgb => background.map((c) => clampByte(c + rng.uniform(-o.clutterContrast, o.clutterContrast))) as Rgb;

  const clutter: ClutterItem[] = [];
  const nClutter = intIn(rng, o.clutter[0], o.clutter[1]);
  for (let i = 0; i < nClutter; i++) {
    const kind = pick(rng, ['line', 'ellipse', 'rect'] as const);
    const opacity = rng.uniform(0.35, 0.8);
    if (kind === 'line') {
      clutter.push({ kind, x1: rng.uniform(0, width), y1: rng.uniform(0, height), x2: rng.uniform(0, width), y2: rng.uniform(0, height), width: rng.uniform(1, 4), rgb: near(), opacity });
    } else if (kind === 'ellipse') {
      clutter.push({ kind, cx: rng.uniform(0, width), cy: rng.uniform(0, height), rx: rng.uniform(4, longest * 0.25), ry: rng.uniform(4, longest * 0.25), rgb: near(), opacity });
    } else {
      clutter.push({ kind, x: rng.uniform(-10, width), y: rng.uniform(-10, height), w: rng.uniform(6, longest * 0.4), h: rng.uniform(6, longest * 0.4), rgb: near(), opacity });
    }
  }

  const n = intIn(rng, o.minObjects, o.maxObjects);
  const classes: SizeClass[] = ['large', ...Array<SizeClass>(n - 2).fill('medium'), 'small'];
  // Rejection sampling with a gap between boxes so that jittered boxes of different objects barely overlap
  // (NMS must never merge two real objects). Restarting the whole layout keeps it simple; it is rare.
  const gap = Math.max(2, 0.03 * longest);
  for (;;) {
    const placed: SceneObject[] = [];
    for (const size of classes) {
      const [lo, hi] = o.sizes[size];
      const side = rng.uniform(lo, hi) * longest;
      let box: Box | null = null;
      for (let attempt = 0; attempt < 200 && !box; attempt++) {
        const x = rng.uniform(2, width - side - 2);
        const y = rng.uniform(2, height - side - 2);
        const cand: Box = [x, y, x + side, y + side];
        if (placed.every((p) => apart(p.box, cand, gap))) box = cand;
      }
      if (!box) break;
      const color = pick(rng, COLORS);
      const rgb = color.rgb.map((c) => clampByte(c + intIn(rng, -12, 12))) as Rgb;
      placed.push({ shape: pick(rng, SHAPES), color: color.name, rgb, size, box });
    }
    if (placed.length === classes.length) return { width, height, background, clutter, objects: placed };
  }
}

function apart(a: Box, b: Box, gap: number): boolean {
  return a[2] + gap <= b[0] || b[2] + gap <= a[0] || a[3] + gap <= b[1] || b[3] + gap <= a[1];
}

export function objectOfSize(scene: Scene, size: 'small' | 'large'): SceneObject {
  const found = scene.objects.find((x) => x.size === size);
  if (!found) throw new Error(`scene has no ${size} object`);
  return found;
}

const boxArea = (b: Box) => (b[2] - b[0]) * (b[3] - b[1]);

/** Objects by increasing box area (ties: drawing order) — the order of the boxes and of the captions. */
export function smallestFirst(scene: Scene): SceneObject[] {
  return scene.objects
    .map((obj, i) => ({ obj, i }))
    .sort((a, b) => boxArea(a.obj.box) - boxArea(b.obj.box) || a.i - b.i)
    .map((x) => x.obj);
}
