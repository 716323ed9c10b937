/**
 * A checked dataset that turns record i into a model-ready `Sample`: text encoded once at load time (the
 * check needs it anyway), image and boxes processed on demand (the loader prefetches them).
 *
 * `loadDataset` runs the same checks as `mgllava data check` and refuses a dataset with bad records, listing
 * them, unless skipping is asked for — then the skipped records are written to a JSONL report and counted on
 * the console. Warnings (odd boxes, EXIF orientation, samples over the token budget) are printed too.
 */
import { DataError } from '../errors.js';
import { BOX_DEFAULTS, isCloseToMaxLength, preprocessBoxes, textOnlyBoxes } from './boxes.js';
import {
  checkDataset,
  checkOutputFile,
  formatBadRecord,
  formatWarning,
  summarizeWarnings,
  writeBadReport,
  type CheckedRecord,
  type CheckOptions,
  type CheckReport,
} from './check.js';
import type { Sample } from './collate.js';
import { CLIP_NORM, ImageError, prepareImage, type DecodeOptions, type ImageNorm, type PreparedImage, type PrepareOptions } from './image.js';
import type { SampleSource } from './loader.js';
import type { BadRecord } from './records.js';
import { objectTokenRoom } from './token-budget.js';

export interface SampleOptions {
  auxSize: number;
  lowresSize: number;
  norm?: ImageNorm;
  /** EXIF policy and pixel budget (`imageOptionsOf(config.data)`). */
  image?: DecodeOptions;
  /** NMS IoU threshold (0.2) and the per-category cap trigger (100) of the box pipeline. */
  nmsThreshold?: number;
  limitNum?: number | null;
  /** The model's image tokens when it makes object tokens: object tokens are then capped to the token budget (token-budget.ts). */
  imageTokens?: number | null;
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
    const at = `${it.record.source.file}: record ${JSON.stringify(it.record.id)}`;
    let img: PreparedImage;
    try {
      img = await prepare(it.imagePath, { auxSize: this.o.auxSize, lowresSize: this.o.lowresSize, norm: this.o.norm ?? CLIP_NORM, ...this.o.image });
    } catch (e) {
      if (!(e instanceof ImageError)) throw e;
      // The image passed the check at the start of the run: it changed (moved, deleted, rewritten) since.
      throw new DataError(`${at}: ${e.message}`, { hint: 'the image was readable when the data was checked at the start of the run: was it moved, deleted or rewritten since?', cause: e });
    }
    const entry = it.boxes!;
    const imageTokens = this.o.imageTokens ?? null;
    const b = preprocessBoxes(entry, {
      origW: img.width,
      origH: img.height,
      auxSize: this.o.auxSize,
      nmsThreshold: this.o.nmsThreshold,
      limitNum: this.o.limitNum,
      closeToMaxLength: isCloseToMaxLength(it.inputIds.length, this.maxLength),
      maxBoxes: imageTokens === null ? null : objectTokenRoom(it.inputIds.length, { maxLength: this.maxLength, imageTokens }),
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
  /** Where the skip count and the warnings go (default: stderr, one line each). */
  log?: (line: string) => void;
}

export class BadDatasetError extends DataError {
  constructor(
    readonly bad: readonly BadRecord[],
    file: string,
  ) {
    const shown = bad.slice(0, 20).map((b) => `  ${formatBadRecord(b)}`);
    const more = bad.length > shown.length ? [`  ... and ${bad.length - shown.length} more`] : [];
    super(
      [`${file}: ${bad.length} bad record problem(s); fix them, or skip them explicitly (writing a report):`, ...shown, ...more].join('\n'),
      { hint: "'mgllava data check' lists them all; data.skip_bad: FILE skips them, writing FILE" },
    );
    this.name = 'BadDatasetError';
  }
}

/** Warnings printed one per line before the summary; the rest are counted (`mgllava data check` lists all). */
const WARNINGS_SHOWN = 10;

export async function loadDataset(o: LoadDatasetOptions): Promise<{ dataset: MgDataset; report: CheckReport }> {
  const log = o.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  if (o.skipBadReport) {
    const inputs = [
      { file: o.records, what: 'the records file (data.records)' },
      { file: o.boxes, what: 'the box file (data.boxes)' },
    ];
    await checkOutputFile(o.skipBadReport, 'the skip report (data.skip_bad)', { inputs });
  }
  const imageTokens = o.imageTokens ?? null;
  const objectTokens = o.objectTokens ?? (imageTokens === null ? null : { imageTokens, auxSize: o.auxSize, nmsThreshold: o.nmsThreshold ?? BOX_DEFAULTS.nmsThreshold, limitNum: o.limitNum === undefined ? BOX_DEFAULTS.limitNum : o.limitNum });
  const report = await checkDataset({ ...o, objectTokens });
  if (report.bad.length > 0) {
    if (!o.skipBadReport) throw new BadDatasetError(report.bad, o.records);
    await writeBadReport(o.skipBadReport, report.bad);
    const skipped = report.total - report.valid.length;
    log(`data: skipped ${skipped} of ${report.total} records of ${o.records} (${report.bad.length} problem(s)); report: ${o.skipBadReport}`);
  }
  if (report.warnings.length > 0) {
    for (const w of report.warnings.slice(0, WARNINGS_SHOWN)) log(formatWarning(w));
    const more = report.warnings.length > WARNINGS_SHOWN ? `; ${report.warnings.length - WARNINGS_SHOWN} more not shown ('mgllava data check' lists them)` : '';
    log(`data: warnings: ${summarizeWarnings(report.warnings)}${more}`);
  }
  if (report.total === 0) throw new DataError(`${o.records}: the records file holds no record`);
  if (report.valid.length === 0) throw new DataError(`${o.records}: no usable record (${report.bad.length} problem(s); the skip report ${o.skipBadReport ?? ''} lists them)`);
  return { dataset: new MgDataset(report.valid, o.text.maxLength, { ...o, imageTokens: objectTokens?.imageTokens ?? null }), report };
}
