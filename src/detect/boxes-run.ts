/**
 * `mgllava boxes`: the box JSON of a whole image folder or record file, written the way the data pipeline reads
 * it (`{id: {boxes, labels, scores}}`, keyed by record id, or by the image's path relative to the folder).
 *
 * Long runs: every finished image is appended to `<out>.partial.jsonl` (one `{"id", "entry"}` line), so an
 * interrupted run loses at most the image in flight; `--resume` reads that journal (and a finished `<out>`) and
 * skips what is done. At the end `<out>` is written to a temporary file and renamed, then the journal is removed.
 * An image that cannot be read (missing, undecodable, outside the folder) is named and skipped, never fatal; it
 * is not journalled, so a resumed run tries it again.
 */
import { createWriteStream, existsSync } from 'node:fs';
import { appendFile, readdir, readFile, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import cliProgress from 'cli-progress';
import { DataError, MgllavaError, UsageError, fsError } from '../errors.js';
import { ImageError, resolveImagePath } from '../data/image.js';
import { loadBoxes, loadRecords, type BoxEntry } from '../data/records.js';
import type { DetectOptions, Owlv2Session } from './detect.js';
import type { Tagging } from './queries.js';

/** One box entry to produce: its id and image file (or why the image cannot be used). */
export interface BoxJob {
  id: string;
  file: string | null;
  problem?: string;
}

/** File extensions `--images DIR` picks up (what sharp decodes). */
const IMAGE_EXT = /\.(jpe?g|png|webp|gif|tiff?|avif|bmp)$/i;

/** Every image file under `dir` (recursively, sorted), keyed by its path relative to `dir` with '/' separators. */
export async function jobsFromImageDir(dir: string): Promise<BoxJob[]> {
  const out: BoxJob[] = [];
  const walk = async (rel: string): Promise<void> => {
    let entries;
    try {
      entries = await readdir(path.join(dir, rel), { withFileTypes: true });
    } catch (e) {
      throw fsError(e, path.join(dir, rel), 'listing the image folder');
    }
    for (const e of entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(r);
      else if (IMAGE_EXT.test(e.name)) out.push({ id: r, file: path.join(dir, r) });
    }
  };
  await walk('');
  return out;
}

/**
 * One job per record with an image (text-only records need no boxes), keyed by record id; images resolve
 * against `imageDir` as in training. Records that cannot be read at all are counted, not fatal here
 * (`mgllava data check` reports them).
 */
export async function jobsFromRecords(recordsFile: string, imageDir: string): Promise<{ jobs: BoxJob[]; textOnly: number; unreadable: number }> {
  const { records, bad } = await loadRecords(recordsFile);
  const jobs: BoxJob[] = [];
  let textOnly = 0;
  for (const r of records) {
    if (r.image === null) {
      textOnly++;
      continue;
    }
    try {
      jobs.push({ id: r.id, file: await resolveImagePath(imageDir, r.image) });
    } catch (e) {
      if (!(e instanceof ImageError)) throw e;
      jobs.push({ id: r.id, file: null, problem: e.message });
    }
  }
  const loaded = new Set(records.map((r) => r.id));
  return { jobs, textOnly, unreadable: bad.filter((b) => b.id === null || !loaded.has(b.id)).length };
}

export type ProgressMode = 'bar' | 'lines' | 'off';

export interface BoxesRunOptions {
  out: string;
  resume: boolean;
  /** Replace an existing `out` (and a stale journal) instead of refusing. */
  overwrite: boolean;
  detect: DetectOptions;
  /** The tags of each image (resolveTags). */
  tagging: Tagging;
  progress: ProgressMode;
  /** Notes (skipped images, resume counts); default stderr. */
  log?: (line: string) => void;
}

export interface BoxesRunSummary {
  out: string;
  /** Entries in the written file. */
  entries: number;
  /** Images run through the detector in this invocation. */
  detected: number;
  /** Ids already done (resume). */
  resumed: number;
  skipped: { id: string; reason: string }[];
  /** Boxes of the images detected in this invocation. */
  boxes: number;
  secondsPerImage: number | null;
}

export function journalPath(out: string): string {
  return `${out}.partial.jsonl`;
}

/** Entries (as JSON text) of a finished `out` and of the journal, in that order (journal wins). */
async function readDone(out: string): Promise<Map<string, string>> {
  const done = new Map<string, string>();
  if (existsSync(out)) {
    const r = await loadBoxes(out);
    if (r.unreadable) throw new MgllavaError(`${out}: cannot resume from it: ${r.unreadable.reason}`, 'data', { hint: 'remove it or use --overwrite' });
    for (const [id, e] of r.entries) done.set(id, JSON.stringify(e));
  }
  const journal = journalPath(out);
  if (existsSync(journal)) {
    const text = await readFile(journal, 'utf8');
    for (const line of text.split('\n')) {
      if (!line.trim()) continue;
      try {
        const { id, entry } = JSON.parse(line) as { id: string; entry: BoxEntry };
        if (typeof id === 'string' && entry && Array.isArray(entry.boxes)) done.set(id, JSON.stringify(entry));
      } catch {
        // a line cut short by an interruption: that image is detected again
      }
    }
  }
  return done;
}

/** Write `{id: entry, ...}` to a temporary file, then rename it over `out`. */
async function writeBoxJson(out: string, entries: Map<string, string>): Promise<void> {
  const tmp = `${out}.tmp-${process.pid}`;
  await new Promise<void>((resolve, reject) => {
    const s = createWriteStream(tmp);
    s.on('error', reject);
    s.write('{');
    let first = true;
    for (const [id, text] of entries) {
      s.write(`${first ? '\n' : ',\n'}  ${JSON.stringify(id)}: ${text}`);
      first = false;
    }
    s.end(first ? '}\n' : '\n}\n', () => resolve());
  }).catch((e) => {
    throw fsError(e, tmp, 'writing the box JSON');
  });
  await rename(tmp, out).catch((e) => {
    throw fsError(e, out, 'writing the box JSON');
  });
}

interface Reporter {
  tick(done: number, skipped: number, secondsPerImage: number | null): void;
  note(line: string): void;
  stop(): void;
}

function reporter(mode: ProgressMode, total: number, log: (line: string) => void): Reporter {
  if (mode === 'bar') {
    const bar = new cliProgress.SingleBar(
      { format: 'boxes {value}/{total} |{bar}| {spi} s/image, {skipped} skipped, eta {eta_formatted}', hideCursor: true, stream: process.stderr, barsize: 24, etaBuffer: 20 },
      cliProgress.Presets.shades_classic,
    );
    bar.start(total, 0, { spi: '-', skipped: 0 });
    return {
      tick: (done, skipped, spi) => bar.update(done, { spi: spi === null ? '-' : spi.toFixed(1), skipped }),
      note: (line) => log(`\n${line}`),
      stop: () => bar.stop(),
    };
  }
  const every = Math.max(1, Math.floor(total / 20));
  return {
    tick: (done, skipped, spi) => {
      if (mode === 'lines' && (done % every === 0 || done === total)) {
        log(`boxes ${done}/${total}  ${spi === null ? '-' : spi.toFixed(2)} s/image  ${skipped} skipped`);
      }
    },
    note: log,
    stop: () => undefined,
  };
}

/** Refuse to start over an earlier run's output unless resuming or overwriting (checked before the model loads). */
export function checkOutput(opts: Pick<BoxesRunOptions, 'out' | 'resume' | 'overwrite'>): void {
  if (opts.resume || opts.overwrite) return;
  const stale = [opts.out, journalPath(opts.out)].filter((f) => existsSync(f));
  if (stale.length) {
    throw new UsageError(`${stale.join(' and ')} already exist${stale.length === 1 ? 's' : ''}`, { hint: '--resume continues that run, --overwrite starts again' });
  }
}

/** Detect every job not done yet, journal each result, write `out`. */
export async function runBoxesJobs(session: Owlv2Session, jobs: readonly BoxJob[], opts: BoxesRunOptions): Promise<BoxesRunSummary> {
  const log = opts.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const journal = journalPath(opts.out);
  const ids = new Set<string>();
  for (const j of jobs) {
    if (ids.has(j.id)) throw new UsageError(`two images map to the box id ${JSON.stringify(j.id)}`);
    ids.add(j.id);
  }
  checkOutput(opts);
  if (!opts.resume) for (const f of [opts.out, journal]) await rm(f, { force: true });
  const done = opts.resume ? await readDone(opts.out) : new Map<string, string>();
  const todo = jobs.filter((j) => !done.has(j.id));
  const resumed = jobs.length - todo.length;
  const bar = reporter(opts.progress, todo.length, log);
  if (resumed) bar.note(`resuming: ${resumed} of ${jobs.length} images already have boxes`);
  const skipped: { id: string; reason: string }[] = [];
  const byFile = new Map<string, string>(); // one detection per image file (and tag list) shared by several records
  let detected = 0;
  let boxes = 0;
  let seconds = 0;
  try {
    for (const [i, job] of todo.entries()) {
      let text: string | undefined;
      try {
        if (!job.file) throw new ImageError('missing', job.id, job.problem ?? 'no image');
        const tags = opts.tagging.tagsFor(job.id);
        if (!tags?.length) throw new DataError(`no tags for ${JSON.stringify(job.id)} in ${opts.tagging.source}`);
        session.setTags(tags); // a no-op when the list is the previous image's
        const key = opts.tagging.shared ? job.file : `${job.file}\n${tags.join('\n')}`;
        text = byFile.get(key);
        if (text === undefined) {
          const t0 = performance.now();
          const entry = await session.detectFile(job.file, opts.detect);
          seconds += (performance.now() - t0) / 1000;
          detected++;
          boxes += entry.boxes.length;
          text = JSON.stringify(entry);
          byFile.set(key, text);
        }
      } catch (e) {
        // Problems of this image (unreadable, no tags, a tag too long for the queries): name it and go on.
        if (!(e instanceof DataError) && !(e instanceof UsageError)) throw e;
        skipped.push({ id: job.id, reason: e.message });
        bar.note(`skipped ${JSON.stringify(job.id)}: ${e.message}`);
      }
      if (text !== undefined) {
        done.set(job.id, text);
        await appendFile(journal, `{"id":${JSON.stringify(job.id)},"entry":${text}}\n`).catch((e) => {
          throw fsError(e, journal, 'appending to the resume journal');
        });
      }
      bar.tick(i + 1, skipped.length, detected ? seconds / detected : null);
    }
  } finally {
    bar.stop();
  }
  await writeBoxJson(opts.out, done);
  await rm(journal, { force: true });
  return { out: opts.out, entries: done.size, detected, resumed, skipped, boxes, secondsPerImage: detected ? seconds / detected : null };
}
