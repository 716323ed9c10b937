/**
 * Seconds per image and peak memory of OWLv2 box generation at the real sizes, with random weights:
 *
 *   npx tsx scripts/bench-owlv2.ts [base|large ...] [--tags 80] [--images 1] [--width 640 --height 480] [--json]
 *
 * One detector per size (google/owlv2-base-patch16-ensemble: 960 px, 3600 patches; -large-patch14: 1008 px,
 * 5184 patches) built with seeded random weights (the parameter count is checked against the checkpoints'),
 * `--tags` queries of random CLIP-vocabulary tokens encoded once, then `--images` random images through the
 * same path as `mgllava boxes` (preprocess -> vision tower -> heads -> MG-LLaVA boxes). Reports the phases, the
 * seconds per image, the process's peak RSS and the backend's peak tensor memory (wasm heap).
 * Heavy: the large model is 438 M parameters (1.75 GB) and ~2.9 T multiply-adds per image.
 */
import os from 'node:os';
import * as tf from '@tensorflow/tfjs';
import { selectBackend } from '../src/backend/select.js';
import { wasmPeakBytes, resetWasmPeak } from '../src/backend/memory.js';
import { OWLV2_PRESETS, gridOf } from '../src/model/detector/config.js';
import { Owlv2Detector } from '../src/model/detector/owlv2.js';
import { Owlv2Session } from '../src/detect/detect.js';
import { owlv2Preprocess } from '../src/detect/preprocess.js';
import type { TextTokenizer } from '../src/data/tokenizer.js';
import { Rng } from '../src/util/rng.js';

/** Parameter counts of the public checkpoints (OWLV2.md §1). */
const EXPECTED_PARAMS = { base: 154_966_792, large: 437_610_760 } as const;

const args = process.argv.slice(2);
const flag = (name: string, fallback: number) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};
const sizes = args.filter((a) => a === 'base' || a === 'large') as ('base' | 'large')[];
const numTags = flag('tags', 80);
const numImages = flag('images', 1);
const width = flag('width', 640);
const height = flag('height', 480);
const json = args.includes('--json');

/** Tokens for a query: a few random ids of the 49408-entry vocabulary (the tokenizer itself is not benchmarked). */
function randomTokenizer(rng: Rng): TextTokenizer {
  return {
    name: 'random',
    bosId: 49406,
    eosId: 49407,
    eosToken: '<|endoftext|>',
    vocabSize: 49408,
    encode: (text: string) => text.split(/\s+/).map(() => Math.floor(rng.next() * 49000)),
    decode: () => '',
    tokenToId: () => undefined,
  };
}

const mb = (b: number | null) => (b === null ? null : Math.round(b / 2 ** 20));

async function benchSize(size: 'base' | 'large') {
  const cfg = OWLV2_PRESETS[size];
  const rng = new Rng(1);
  resetWasmPeak();
  const tensorsBefore = tf.memory().numTensors;
  let t = performance.now();
  const model = new Owlv2Detector(cfg, { rng: new Rng(0) });
  const buildS = (performance.now() - t) / 1000;
  const params = model.numParameters();
  if (params !== EXPECTED_PARAMS[size]) throw new Error(`${size}: ${params} parameters, the checkpoint has ${EXPECTED_PARAMS[size]}`);
  const session = new Owlv2Session(model, randomTokenizer(rng), `random ${size}`);
  try {
    t = performance.now();
    session.setTags(Array.from({ length: numTags }, (_, i) => `tag ${i}`));
    const textS = (performance.now() - t) / 1000;
    const perImage: number[] = [];
    const cpuPerImage: number[] = [];
    let preprocessS = 0;
    let boxes = 0;
    for (let i = 0; i < numImages; i++) {
      const img = { width, height, data: Uint8Array.from({ length: width * height * 3 }, () => Math.floor(rng.next() * 256)) };
      t = performance.now();
      owlv2Preprocess(img, { size: cfg.vision.imageSize }); // the host-side part alone (detectImage repeats it)
      preprocessS = (performance.now() - t) / 1000;
      const cpu0 = process.cpuUsage();
      t = performance.now();
      const r = await session.detectImage(img);
      perImage.push((performance.now() - t) / 1000);
      const cpu = process.cpuUsage(cpu0);
      cpuPerImage.push((cpu.user + cpu.system) / 1e6);
      boxes += r.boxes.length;
    }
    return {
      size,
      imageSize: cfg.vision.imageSize,
      patches: gridOf(cfg.vision) ** 2,
      parameters: params,
      tags: numTags,
      image: `${width}x${height}`,
      buildSeconds: +buildS.toFixed(1),
      textSecondsOnce: +textS.toFixed(2),
      secondsPerImage: perImage.map((s) => +s.toFixed(1)),
      /** CPU seconds of the process per image: close to the wall time on an idle machine with one native thread. */
      cpuSecondsPerImage: cpuPerImage.map((s) => +s.toFixed(1)),
      preprocessSeconds: +preprocessS.toFixed(2),
      loadAverage: os.loadavg()[0]!.toFixed(1),
      boxes,
      peakRssMB: mb(process.resourceUsage().maxRSS * 1024),
      peakTensorMB: mb(wasmPeakBytes()),
    };
  } finally {
    session.dispose();
    const left = tf.memory().numTensors - tensorsBefore;
    if (left !== 0) throw new Error(`${size}: ${left} tensors left after dispose`);
  }
}

const choice = await selectBackend(process.env.MGLLAVA_BACKEND ?? 'wasm');
const results = [];
for (const size of sizes.length ? sizes : (['base', 'large'] as const)) {
  const r = await benchSize(size);
  results.push(r);
  if (!json) {
    process.stdout.write(
      `${r.size} (${r.imageSize} px, ${r.patches} patches, ${(r.parameters / 1e6).toFixed(1)} M params) on ${choice.name}: ` +
        `${r.secondsPerImage.join(', ')} s/image (CPU ${r.cpuSecondsPerImage.join(', ')} s; preprocessing ${r.preprocessSeconds} s; ${r.image}, ${r.tags} tags; ` +
        `text ${r.textSecondsOnce} s once; build ${r.buildSeconds} s; load average ${r.loadAverage}), ` +
        `peak RSS ${r.peakRssMB} MB, peak tensors ${r.peakTensorMB ?? '-'} MB\n`,
    );
  }
}
if (json) process.stdout.write(`${JSON.stringify(results)}\n`);
