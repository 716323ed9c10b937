/**
 * `mgllava boxes`: the box JSON of a whole image folder or record file, written the way the data pipeline reads
 * it (`{id: {boxes, labels, scores}}`, keyed by record id, or by the image's path relative to the folder).
 *
 * Long runs: every finished image is appended to `<out>.partial.jsonl` (one `{"id", "entry"}` line), so an
 * interrupted run loses at most the image in flight; `--resume` reads that journal (and a finished `<out>`) and
 * skips what is done. At the end `<out>` is streamed from the earlier `<out>` and the journal into a temporary
 * file that is renamed, then the journal is removed: only ids are held in memory, whatever the dataset's size.
 * An image that cannot be read (missing, undecodable, outside the folder) is named and skipped, never fatal; it
 * is not journalled, so a resumed run tries it again.
 */
import { createWriteStream, existsSync } from 'node:fs';
import { appendFile, open, readdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import cliProgress from 'cli-progress';
import { DataError, UsageError, fsError } from '../errors.js';
import { ImageError, resolveImagePath } from '../data/image.js';
import { JsonSyntaxError, jsonItems } from '../data/json.js';
import { loadRecords, type BoxEntry } from '../data/records.js';
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

/** Entries kept for images that several records share (the rest are re-read from nothing: detected again). */
const BY_FILE_CACHE = 4096;

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

/** Journal lines `{"id", "entry"}` (a line cut short by an interruption is skipped: that image is detected again). */
async function* journalEntries(journal: string): AsyncGenerator<[string, BoxEntry]> {
  if (!existsSync(journal)) return;
  for await (const item of jsonItems({ file: journal }, journal, 'lines')) {
    const v = item.value as { id?: unknown; entry?: BoxEntry } | undefined;
    if (!item.error && v && typeof v.id === 'string' && v.entry && Array.isArray(v.entry.boxes)) yield [v.id, v.entry];
  }
}

/** Entries of a finished `out` (streamed). */
async function* outEntries(out: string): AsyncGenerator<[string, unknown]> {
  if (!existsSync(out)) return;
  try {
    for await (const item of jsonItems({ file: out }, out, 'auto')) {
      if (item.key !== null && !item.error) yield [item.key, item.value];
    }
  } catch (e) {
    if (!(e instanceof JsonSyntaxError)) throw e;
    throw new DataError(`${out}: cannot resume from it: ${e.message}`, { hint: 'remove it or use --overwrite' });
  }
}

/** Terminate a journal line cut short by an interruption, so the next entry starts a line of its own. */
async function endJournalLine(journal: string): Promise<void> {
  if (!existsSync(journal)) return;
  const fh = await open(journal, 'r');
  try {
    const { size } = await fh.stat();
    if (size === 0) return;
    const last = Buffer.alloc(1);
    await fh.read(last, 0, 1, size - 1);
    if (last[0] === 0x0a) return;
  } finally {
    await fh.close();
  }
  await appendFile(journal, '\n');
}

/** Ids with boxes in a finished `out` or in the journal (only ids are kept in memory: datasets are large). */
async function readDone(out: string): Promise<Set<string>> {
  const done = new Set<string>();
  for await (const [id] of outEntries(out)) done.add(id);
  for await (const [id] of journalEntries(journalPath(out))) done.add(id);
  return done;
}

/**
 * Write `{id: entry, ...}` — the entries of an earlier `out` that the journal does not redo, then the journal's —
 * streamed to a temporary file that is then renamed over `out`. Returns the number of entries.
 */
async function writeBoxJson(out: string): Promise<number> {
  const journal = journalPath(out);
  const redone = new Set<string>();
  for await (const [id] of journalEntries(journal)) redone.add(id);
  const tmp = `${out}.tmp-${process.pid}`;
  const stream = createWriteStream(tmp);
  const failed = new Promise<never>((_, reject) => stream.on('error', reject));
  const write = (text: string) => (stream.write(text) ? undefined : Promise.race([new Promise<void>((r) => stream.once('drain', () => r())), failed]));
  let n = 0;
  const entry = async (id: string, value: unknown) => {
    await write(`${n === 0 ? '{\n' : ',\n'}  ${JSON.stringify(id)}: ${JSON.stringify(value)}`);
    n++;
  };
  try {
    for await (const [id, value] of outEntries(out)) if (!redone.has(id)) await entry(id, value);
    for await (const [id, value] of journalEntries(journal)) await entry(id, value);
    await write(n === 0 ? '{}\n' : '\n}\n');
    await Promise.race([new Promise<void>((r) => stream.end(r)), failed]);
  } catch (e) {
    stream.destroy();
    await rm(tmp, { force: true });
    throw fsError(e, tmp, 'writing the box JSON');
  }
  await rename(tmp, out).catch((e) => {
    throw fsError(e, out, 'writing the box JSON');
  });
  return n;
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
  const done = opts.resume ? await readDone(opts.out) : new Set<string>();
  if (opts.resume) await endJournalLine(journal);
  const todo = jobs.filter((j) => !done.has(j.id));
  const resumed = jobs.length - todo.length;
  const bar = reporter(opts.progress, todo.length, log);
  if (resumed) bar.note(`resuming: ${resumed} of ${jobs.length} images already have boxes`);
  const skipped: { id: string; reason: string }[] = [];
  // One detection per image file (and tag list) shared by several records; bounded: datasets are large.
  const byFile = new Map<string, string>();
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
          if (byFile.size > BY_FILE_CACHE) byFile.delete(byFile.keys().next().value!);
        }
      } catch (e) {
        // Problems of this image (unreadable, no tags, a tag too long for the queries): name it and go on.
        if (!(e instanceof DataError) && !(e instanceof UsageError)) throw e;
        skipped.push({ id: job.id, reason: e.message });
        bar.note(`skipped ${JSON.stringify(job.id)}: ${e.message}`);
      }
      if (text !== undefined) {
        done.add(job.id);
        await appendFile(journal, `{"id":${JSON.stringify(job.id)},"entry":${text}}\n`).catch((e) => {
          throw fsError(e, journal, 'appending to the resume journal');
        });
      }
      bar.tick(i + 1, skipped.length, detected ? seconds / detected : null);
    }
  } finally {
    bar.stop();
  }
  const entries = await writeBoxJson(opts.out);
  await rm(journal, { force: true });
  return { out: opts.out, entries, detected, resumed, skipped, boxes, secondsPerImage: detected ? seconds / detected : null };
}
