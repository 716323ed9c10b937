/**
 * `chat --detector DIR [--tags ... | --tags-file F] [--threshold T]`: the boxes of the chat image, detected on the
 * fly with OWLv2 (the detector is loaded, used once and freed), printed, and handed to the object tokens as a
 * box JSON entry would be. The chat command only calls `chatDetectorBoxes`.
 */
import type { DecodeOptions } from '../data/image.js';
import type { BoxEntry } from '../data/records.js';
import { UsageError } from '../errors.js';
import { detectBoxes } from './detect.js';
import { resolveTags } from './queries.js';

export interface ChatDetectorOptions {
  detector: string;
  image: string;
  tags?: string;
  tagsFile?: string;
  threshold?: number;
  /** The run's image options (`imageOptionsOf(config.data)`): boxes must be in the frame the model sees. */
  decode?: DecodeOptions;
}

/** One line per box, best first: `  1. dog 0.87 [12, 40, 210, 388]`. */
export function formatBoxes(entry: BoxEntry): string[] {
  return entry.boxes.map((b, i) => `  ${i + 1}. ${entry.labels[i]} ${entry.scores[i]!.toFixed(2)} [${b.join(', ')}]`);
}

/** Detect the chat image's boxes; `log` gets a summary line and the boxes. */
export async function chatDetectorBoxes(o: ChatDetectorOptions, log: (line: string) => void): Promise<BoxEntry> {
  if (o.threshold !== undefined && !(o.threshold >= 0 && o.threshold < 1)) throw new UsageError(`--threshold must be in [0, 1), got ${o.threshold}`);
  const tagging = await resolveTags({ tags: o.tags, tagsFile: o.tagsFile });
  if (!tagging.shared) throw new UsageError(`--tags-file ${o.tagsFile}: a per-image JSON tag file is for 'mgllava boxes'; chat takes one list`);
  const t0 = performance.now();
  const entry = await detectBoxes(o.detector, o.image, tagging.shared, { threshold: o.threshold, image: o.decode });
  const s = ((performance.now() - t0) / 1000).toFixed(1);
  log(`detector: ${entry.boxes.length} boxes for ${o.image} (${tagging.shared.length} tags from ${tagging.source}; ${s} s)`);
  for (const line of formatBoxes(entry)) log(line);
  return entry;
}
