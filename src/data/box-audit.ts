/**
 * Boxes a person or a converter got wrong, found before training: the box pipeline (boxes.ts) follows the
 * reference and never refuses a finite box, so these would otherwise pass silently.
 *
 *   inverted  x2 < x1 or y2 < y1: kept as a degenerate box (RoI of one sample), as in the reference
 *   xywh      inverted, but [x, y, x + w, y + h] would fit the image: probably [x, y, width, height]
 *   outside   reaches past the image (the part outside sees the padding; clipped at the padded square's edge)
 *
 * Coordinates are original-image pixels of the image as loaded (after EXIF rotation when that is applied).
 */

export interface BoxAudit {
  total: number;
  /** Indices of inverted boxes that do not look like xywh. */
  inverted: number[];
  /** Indices of inverted boxes that fit the image when read as [x, y, w, h]. */
  xywh: number[];
  /** Indices of boxes reaching outside [0, width] x [0, height] (partly or wholly). */
  outside: number[];
  /** Of `outside`, the boxes with no overlap with the image at all. */
  whollyOutside: number[];
}

/** Boxes as a box entry has them ([x1, y1, x2, y2] each). */
export interface BoxList {
  boxes: readonly (readonly number[])[];
}

export function auditBoxes(entry: BoxList, width: number, height: number): BoxAudit {
  const a: BoxAudit = { total: entry.boxes.length, inverted: [], xywh: [], outside: [], whollyOutside: [] };
  entry.boxes.forEach((b, i) => {
    const [x1, y1, x2, y2] = b as [number, number, number, number];
    if (x2 < x1 || y2 < y1) {
      const fitsAsXywh = x1 >= 0 && y1 >= 0 && x2 > 0 && y2 > 0 && x1 + x2 <= width && y1 + y2 <= height;
      (fitsAsXywh ? a.xywh : a.inverted).push(i);
      return;
    }
    if (x1 < 0 || y1 < 0 || x2 > width || y2 > height) {
      a.outside.push(i);
      if (x2 <= 0 || y2 <= 0 || x1 >= width || y1 >= height) a.whollyOutside.push(i);
    }
  });
  return a;
}

/** One line per finding of an audit, for `data check` (empty when the boxes look right). */
export function describeAudit(a: BoxAudit, entry: BoxList, width: number, height: number): { kind: 'inverted_boxes' | 'xywh_boxes' | 'boxes_outside_image'; count: number; reason: string }[] {
  const eg = (i: number) => `boxes[${i}] = [${entry.boxes[i]!.join(', ')}]`;
  const out: { kind: 'inverted_boxes' | 'xywh_boxes' | 'boxes_outside_image'; count: number; reason: string }[] = [];
  if (a.xywh.length) {
    out.push({
      kind: 'xywh_boxes',
      count: a.xywh.length,
      reason: `${a.xywh.length} of ${a.total} boxes look like [x, y, width, height] (x2 < x1 or y2 < y1, but x + w and y + h fit the ${width}x${height} image), e.g. ${eg(a.xywh[0]!)}: boxes must be [x1, y1, x2, y2]`,
    });
  }
  if (a.inverted.length) {
    out.push({
      kind: 'inverted_boxes',
      count: a.inverted.length,
      reason: `${a.inverted.length} of ${a.total} boxes are inverted (x2 < x1 or y2 < y1), e.g. ${eg(a.inverted[0]!)}: they become degenerate object tokens`,
    });
  }
  if (a.outside.length) {
    const wholly = a.whollyOutside.length ? ` (${a.whollyOutside.length} entirely outside it: they see only padding, or are dropped)` : '';
    out.push({
      kind: 'boxes_outside_image',
      count: a.outside.length,
      reason: `${a.outside.length} of ${a.total} boxes reach outside the ${width}x${height} image${wholly}, e.g. ${eg(a.outside[0]!)}: the part outside sees the padding, and is clipped at the padded square's edge`,
    });
  }
  return out;
}
