/**
 * `annotations.json` of the synthetic dataset: the ground truth of every image, for the encoder warm-up
 * (stage 0, src/train/warmup.ts) — not a detector's output.
 *
 *   {format: 'mgllava-annotations', version: 1, box_frame, attributes: {color: [...], shape: [...], size: [...]},
 *    images: {<image id>: {image, split, width, height, objects: [{box, color, shape, size}, ...]}}}
 *
 * Boxes are the drawn shapes' exact extents in original-image pixels, xyxy, at the 2 decimals the SVG is drawn
 * with: before the detector jitter and integer rounding of boxes.json. Objects are listed smallest first,
 * the order of the real boxes in boxes.json. Every image of both splits is listed (`split`: train / eval).
 */
import { COLORS, SHAPES, smallestFirst, type Box, type Scene } from './scene.js';

export const ANNOTATIONS_FORMAT = 'mgllava-annotations';

export interface AnnotatedObjectJson {
  box: Box;
  color: string;
  shape: string;
  size: string;
}

export interface AnnotatedImageJson {
  image: string;
  split: string;
  width: number;
  height: number;
  objects: AnnotatedObjectJson[];
}

/** The SVG's coordinate rounding (render.ts draws with toFixed(2)). */
const drawn = (v: number) => Number(v.toFixed(2));

export function sceneAnnotation(scene: Scene, image: string, split: string): AnnotatedImageJson {
  return {
    image,
    split,
    width: scene.width,
    height: scene.height,
    objects: smallestFirst(scene).map((o) => ({ box: o.box.map(drawn) as Box, color: o.color, shape: o.shape, size: o.size })),
  };
}

/** One image per line (readable, diffable). */
export function annotationsJson(images: [string, AnnotatedImageJson][]): string {
  const head = {
    format: ANNOTATIONS_FORMAT,
    version: 1,
    box_frame: 'original image pixels, xyxy: the exact extent of each drawn shape (boxes.json holds jittered, integer detector-style boxes)',
    attributes: { color: COLORS.map((c) => c.name), shape: [...SHAPES], size: ['small', 'medium', 'large'] },
  };
  const lines = Object.entries(head).map(([k, v]) => `${JSON.stringify(k)}: ${JSON.stringify(v)}`);
  const imgs = images.map(([id, a]) => `  ${JSON.stringify(id)}: ${JSON.stringify(a)}`).join(',\n');
  return `{\n${lines.join(',\n')},\n"images": {\n${imgs}\n}\n}\n`;
}
