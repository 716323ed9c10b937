/**
 * `mgllava boxes --detector DIR (--images DIR | --records R [--images DIR]) [--tags a,b | --tags-file F]
 *  [--threshold 0.2] --out boxes.json [--resume]`: MG-LLaVA's object boxes for a dataset, with OWLv2.
 * The work is in src/detect/ (loaded when the command runs); this file is the command line.
 */
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { DataError, UsageError } from '../errors.js';
import { backendFromArgs, type GlobalArgs } from './command.js';

interface BoxesArgs extends GlobalArgs {
  detector: string;
  images?: string;
  records?: string;
  tags?: string;
  'tags-file'?: string;
  threshold: number;
  raw: boolean;
  'pad-value': number;
  'exif-orientation': 'ignore' | 'apply';
  out: string;
  resume: boolean;
  overwrite: boolean;
  progress: 'auto' | 'bar' | 'lines' | 'off';
  json: boolean;
}

export const boxesCommand: CommandModule<GlobalArgs, BoxesArgs> = {
  command: 'boxes',
  describe: 'Detect object boxes for a folder of images or a record file with OWLv2 (the box JSON training reads)',
  builder: (y) =>
    y
      .option('detector', { type: 'string', demandOption: true, describe: 'Hugging Face OWLv2 directory: config.json, model.safetensors, tokenizer.json' })
      .option('images', { type: 'string', describe: 'image folder: every image in it (keys = paths relative to it), or the image root of --records' })
      .option('records', { type: 'string', describe: 'LLaVA records (JSON/JSONL): one entry per record with an image, keyed by record id' })
      .option('tags', { type: 'string', describe: 'comma-separated tags to look for, queried as "a photo of {tag}" (default: the 80 COCO classes)' })
      .option('tags-file', {
        type: 'string',
        describe: 'file of tags, one per line or comma-separated; or a JSON object of per-image tags {id: "dog | frisbee"} (e.g. RAM++ output)',
      })
      .option('threshold', { type: 'number', default: 0.2, describe: 'score threshold (sigmoid of the best query logit, strict >)' })
      .option('raw', { type: 'boolean', default: false, describe: "store every detection over the threshold (MG-LLaVA's offline files) instead of the per-label NMS (IoU 0.2) result" })
      .option('pad-value', { type: 'number', default: 0.5, describe: 'padding to a square before resizing: 0.5 (the transformers MG-LLaVA used) or 0 (newer transformers)' })
      .option('exif-orientation', {
        choices: ['ignore', 'apply'] as const,
        default: 'ignore' as const,
        describe: "EXIF orientation when decoding: boxes are in that frame, so use the training config's data.exif_orientation (ignore = PIL, the reference)",
      })
      .option('out', { type: 'string', demandOption: true, describe: 'box JSON to write ({id: {boxes, labels, scores}}, integer boxes in image pixels)' })
      .option('resume', { type: 'boolean', default: false, describe: 'continue an interrupted run (or add new images to an existing --out)' })
      .option('overwrite', { type: 'boolean', default: false, describe: 'replace an existing --out' })
      .option('progress', { choices: ['auto', 'bar', 'lines', 'off'] as const, default: 'auto' as const, describe: 'a bar on a terminal, a line every 5 % otherwise (auto)' })
      .option('json', { type: 'boolean', default: false, describe: 'print a JSON summary as the last line' })
      .example('$0 boxes --detector models/owlv2-base-patch16-ensemble --images my-data/images --out my-data/boxes.json', 'boxes for every image of a folder')
      .example('$0 boxes --detector models/owlv2-base-patch16-ensemble --records my-data/train.json --images my-data/images --tags cat,dog --out my-data/boxes.json', 'per record, for two tags') as Argv<BoxesArgs>,
  handler: async (args) => {
    if (!args.images && !args.records) throw new UsageError('boxes: give --images DIR or --records R', { hint: "'mgllava boxes --help' lists the options" });
    if (!(args.threshold >= 0 && args.threshold < 1)) throw new UsageError(`--threshold must be in [0, 1), got ${args.threshold}`);
    if (!(args['pad-value'] >= 0 && args['pad-value'] <= 1)) throw new UsageError(`--pad-value must be in [0, 1], got ${args['pad-value']}`);
    const { resolveTags } = await import('../detect/queries.js');
    const tagging = await resolveTags({ tags: args.tags, tagsFile: args['tags-file'] });
    const run = await import('../detect/boxes-run.js');
    run.checkOutput({ out: args.out, resume: args.resume, overwrite: args.overwrite });
    let jobs;
    let found: string; // said once --out is known to be writable: a refusal is the only line
    if (args.records) {
      const r = await run.jobsFromRecords(args.records, args.images ?? path.dirname(args.records));
      jobs = r.jobs;
      const extra = [r.textOnly ? `${r.textOnly} text-only` : '', r.unreadable ? `${r.unreadable} unreadable (see mgllava data check)` : ''].filter(Boolean);
      found = `${args.records}: ${jobs.length} records with an image${extra.length ? `; ${extra.join(', ')} records skipped` : ''}`;
    } else {
      jobs = await run.jobsFromImageDir(args.images!);
      // A mistyped or empty folder would otherwise "succeed" with an empty box file.
      if (jobs.length === 0) throw new DataError(`${args.images}: no image file (.jpg, .png, .webp, ...) to detect boxes for`);
      found = `${args.images}: ${jobs.length} images`;
    }
    if (jobs.length === 0) throw new DataError(`${args.records}: no record with an image to detect boxes for`);
    // --out naming an input: --overwrite deleted the records, tag list, detector config or an image before writing.
    const { checkOutputFile } = await import('../io/output-file.js');
    const detectorFiles = statSync(args.detector, { throwIfNoEntry: false })?.isDirectory() ? readdirSync(args.detector).map((f) => path.join(args.detector, f)) : [args.detector];
    const image = jobs.find((j) => j.file !== null && path.resolve(j.file) === path.resolve(args.out));
    await checkOutputFile(args.out, 'the box file (--out)', {
      inputs: [
        { file: args.records, what: 'the records file' },
        { file: args['tags-file'], what: 'the tag list (--tags-file)' },
        { file: image?.file, what: `the image of ${image?.id}` },
        ...detectorFiles.map((file) => ({ file, what: 'a file of the detector' })),
      ],
    });
    process.stderr.write(`${found}\n`);
    await backendFromArgs(args);
    const { Owlv2Session } = await import('../detect/detect.js');
    const session = await Owlv2Session.open(args.detector);
    try {
      if (tagging.shared) session.setTags(tagging.shared); // encoded once, before the first image
      const what = tagging.shared ? `${tagging.shared.length} tags from ${tagging.source}` : `tags from ${tagging.source}`;
      process.stderr.write(`detector ${args.detector} (${session.imageSize} px, ${session.patches} patches); ${what}\n`);
      const progress = args.progress === 'auto' ? (process.stderr.isTTY ? 'bar' : 'lines') : args.progress;
      const s = await run.runBoxesJobs(session, jobs, {
        out: args.out,
        resume: args.resume,
        overwrite: args.overwrite,
        progress,
        tagging,
        detect: { threshold: args.threshold, nms: args.raw ? null : 0.2, padValue: args['pad-value'], image: { exifOrientation: args['exif-orientation'] } },
      });
      const spi = s.secondsPerImage === null ? '' : `, ${s.secondsPerImage.toFixed(2)} s/image`;
      process.stdout.write(
        `wrote ${s.out}: ${s.entries} entries (${s.detected} images detected${s.resumed ? `, ${s.resumed} resumed` : ''}), ${s.boxes} new boxes${spi}` +
          `${s.skipped.length ? `; ${s.skipped.length} skipped: ${s.skipped.slice(0, 10).map((x) => x.id).join(', ')}${s.skipped.length > 10 ? ', ...' : ''}` : ''}\n`,
      );
      if (args.json) process.stdout.write(`${JSON.stringify(s)}\n`);
    } finally {
      session.dispose();
    }
  },
};
