/**
 * A checked dataset that turns record i into a model-ready `Sample`: text encoded once at load time (the
 * check needs it anyway), image and boxes processed on demand (the loader prefetches them).
 *
 * `loadDataset` runs the same checks as `mgllava data check` and refuses a dataset with bad records, listing
 * them, unless skipping is asked for — then the skipped records are written to a JSONL report.
 */
import { isCloseToMaxLength, preprocessBoxes, textOnlyBoxes } from './boxes.js';
import { checkDataset, formatBadRecord, writeBadReport, type CheckedRecord, type CheckOptions, type CheckReport } from './check.js';
import type { Sample } from './collate.js';
import { CLIP_NORM, prepareImage, type ImageNorm, type PreparedImage, type PrepareOptions } from './image.js';
import type { SampleSource } from './loader.js';
import type { BadRecord } from './records.js';

export interface SampleOptions {
  auxSize: number;
  lowresSize: number;
  norm?: ImageNorm;
  autoOrient?: boolean;
  /** NMS IoU threshold (0.2) and the per-category cap trigger (100) of the box pipeline. */
  nmsThreshold?: number;
  limitNum?: number | null;
  /** Image preprocessing: `prepareImage` in this thread (default) or `ImageWorkerPool.prepare` (image-pool.ts). */
  prepare?: (file: string, opts: PrepareOptions) => Promise<PreparedImage>;
}

export class MgDataset implements SampleSource {
  /** `modality_length` per sample: text token count, negative for text-only (LengthGroupedSampler). */
  readonly modalityLengths: number[];

  constructor(
    readonly items: readonly CheckedRecord[],
    readonly maxLength: number,
    readonly o: SampleOptions,
  ) {
    this.modalityLengths = items.map((it) => (it.imagePath === null ? -it.inputIds.length : it.inputIds.length));
  }

  get size(): number {
    return this.items.length;
  }

  async get(index: number): Promise<Sample> {
    const it = this.items[index];
    if (!it) throw new Error(`dataset: index ${index} out of range (size ${this.items.length})`);
    const base = { index, id: it.record.id, inputIds: it.inputIds, labels: it.labels };
    if (it.imagePath === null) {
      const t = textOnlyBoxes();
      return { ...base, hasImage: false, aux: null, lowres: null, boxes: Float32Array.from(t.boxes.flat()), boxLabels: t.labels };
    }
    const prepare = this.o.prepare ?? prepareImage;
    const img = await prepare(it.imagePath, { auxSize: this.o.auxSize, lowresSize: this.o.lowresSize, norm: this.o.norm ?? CLIP_NORM, autoOrient: this.o.autoOrient });
    const entry = it.boxes!;
    const b = preprocessBoxes(entry, {
      origW: img.width,
      origH: img.height,
      auxSize: this.o.auxSize,
      nmsThreshold: this.o.nmsThreshold,
      limitNum: this.o.limitNum,
      closeToMaxLength: isCloseToMaxLength(it.inputIds.length, this.maxLength),
    });
    return { ...base, hasImage: true, aux: img.aux, lowres: img.lowres, boxes: Float32Array.from(b.boxes.flat()), boxLabels: b.labels };
  }
}

export interface LoadDatasetOptions extends CheckOptions, SampleOptions {
  /**
   * Skip bad records and write them to this JSONL report. Without it, any bad record is an error listing
   * them (the same lines `mgllava data check` prints).
   */
  skipBadReport?: string | null;
}

export class BadDatasetError extends Error {
  constructor(
    readonly bad: readonly BadRecord[],
    file: string,
  ) {
    const shown = bad.slice(0, 20).map((b) => `  ${formatBadRecord(b)}`);
    const more = bad.length > shown.length ? [`  ... and ${bad.length - shown.length} more`] : [];
    super(
      [`${file}: ${bad.length} bad record problem(s); fix them, or skip them explicitly (writing a report):`, ...shown, ...more].join('\n'),
    );
    this.name = 'BadDatasetError';
  }
}

export async function loadDataset(o: LoadDatasetOptions): Promise<{ dataset: MgDataset; report: CheckReport }> {
  const report = await checkDataset(o);
  if (report.bad.length > 0) {
    if (!o.skipBadReport) throw new BadDatasetError(report.bad, o.records);
    await writeBadReport(o.skipBadReport, report.bad);
  }
  if (report.valid.length === 0) throw new Error(`${o.records}: no usable record (${report.bad.length} problem(s))`);
  return { dataset: new MgDataset(report.valid, o.text.maxLength, o), report };
}
