/**
 * Stage 0 (encoder warm-up): checkpoint contents, resume = uninterrupted, init.encoders_from into pretrain
 * (and through init.from into finetune), rejection of foreign checkpoints, a weak learning check, no leaks,
 * and the annotation boxes landing on their objects in the aux image.
 */
import { spawn } from 'node:child_process';
import { cpSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config/load.js';
import { preprocessBoxes } from '../src/data/boxes.js';
import { CLIP_NORM, prepareImage } from '../src/data/image.js';
import { synthDataset } from '../src/data/synth.js';
import { COLORS } from '../src/data/synth/scene.js';
import { readSafetensors, writeSafetensors } from '../src/io/safetensors.js';
import { disposeFrozen, MGLLaVA } from '../src/model/mgllava.js';
import { readMetrics } from '../src/run/metrics.js';
import { listCheckpoints } from '../src/run/layout.js';
import { buildModel, loadRunModel, modelConfigOf } from '../src/model/factory.js';
import { train } from '../src/train/trainer.js';
import { boxesToAux, headSpec, presenceTargets, readAnnotations, type HeadSpec, type WarmupBatch } from '../src/train/warmup-data.js';
import { WarmupModel } from '../src/train/warmup-heads.js';
import { HEADS_FILE, warmup, type WarmupOptions } from '../src/train/warmup.js';
import { Rng } from '../src/util/rng.js';
import { collector } from './train-fixture.js';

const REPO = path.resolve(import.meta.dirname, '..');
let root: string;
let data: string;
let runs: string;
let warmYaml: string;
let pretrainYaml: string;
let finetuneYaml: string;

beforeAll(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'mgllava-warmup-'));
  data = path.join(root, 'data');
  await synthDataset({ out: data, train: 24, eval: 8, seed: 3, size: 64 });
  runs = path.join(root, 'runs');
  await writeFile(
    path.join(root, 'base.yaml'),
    `seed: 7
output_dir: ${runs}
model:
  vision: { image_size: 28, patch_size: 14, hidden_size: 16, intermediate_size: 32, num_layers: 2, num_heads: 2 }
  vision_aux: { dims: [4, 8, 8, 8], depths: [1, 1, 1, 1], image_size: 64 }
  fusion: { variant: 0 }
  objects: { output_size: 7 }
  llm: { vocab_size: 64, hidden_size: 16, intermediate_size: 24, num_layers: 1, num_heads: 2, rms_norm_eps: 1.0e-6 }
data:
  records: ${data}/pretrain.json
  boxes: ${data}/boxes.json
  images: ${data}/images
  tokenizer: { type: hf, path: ${data}/tokenizer.json }
  max_length: 128
  prefetch: 1
  image_workers: 0
train: { batch_size: 4, lr: 1.0e-3, warmup_ratio: 0.2, max_steps: 4, save_steps: 2, save_total_limit: 2, log_steps: 1 }
`,
  );
  warmYaml = path.join(root, 'warmup.yaml');
  await writeFile(
    warmYaml,
    `extends: base.yaml\nname: tiny-warmup\nstage: warmup\nwarmup: { annotations: ${data}/annotations.json, eval_images: 8 }\ntrain: { batch_size: 8, lr: 2.0e-3, max_steps: 6, save_steps: 3 }\n`,
  );
  pretrainYaml = path.join(root, 'pretrain.yaml');
  await writeFile(pretrainYaml, `extends: base.yaml\nname: tiny-pretrain\nstage: pretrain\ninit: { encoders_from: ${runs}/tiny-warmup }\n`);
  finetuneYaml = path.join(root, 'finetune.yaml');
  await writeFile(finetuneYaml, `extends: base.yaml\nname: tiny-finetune\nstage: finetune\ninit: { from: ${runs}/tiny-pretrain }\ndata: { records: ${data}/finetune.json }\n`);
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [path.join(REPO, 'bin/mgllava.js'), ...args, '--backend', tf.getBackend()], { cwd: REPO });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

function opts(extra: Partial<WarmupOptions>): WarmupOptions & { log: () => string } {
  const out = collector();
  return { configFile: warmYaml, progress: 'lines', out: out.stream, err: collector().stream, log: out.text, ...extra };
}

/** Encoder weight names of the MG-LLaVA the base config builds. */
async function encoderNames(): Promise<string[]> {
  const m = new MGLLaVA(await modelConfigOf(loadConfig(pretrainYaml).config), { rng: new Rng(0), skipInit: true });
  const names = [...m.weightMap().keys()].filter((n) => /^visual_encoder(_aux)?\./.test(n));
  m.dispose();
  return names;
}

describe('encoder warm-up (stage 0)', () => {
  it('writes checkpoints holding exactly the encoder weights (heads apart), metrics with head losses and accuracies; leak-free', async () => {
    const counts: number[] = [];
    const before = tf.memory().numTensors;
    const o = opts({ onStep: (s) => counts.push(s.numTensors) });
    const r = await warmup(o);
    expect(tf.memory().numTensors).toBe(before);
    expect(new Set(counts).size).toBe(1); // flat across steps
    expect(r.stopped).toBe('end');
    expect(r.losses.map((l) => l.step)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(r.losses.every((l) => l.applied && Number.isFinite(l.loss))).toBe(true);
    expect((await listCheckpoints(r.runDir)).map((c) => c.step)).toEqual([3, 6]);

    const step = path.join(r.runDir, 'step-00000006');
    const model = await readSafetensors(path.join(step, 'model.safetensors'));
    expect([...model.keys()].sort()).toEqual((await encoderNames()).sort());
    const heads = await readSafetensors(path.join(step, HEADS_FILE));
    expect([...heads.keys()].every((k) => k.startsWith('warmup_heads.'))).toBe(true);
    expect([...heads.keys()].sort()).toEqual(
      ['box.color', 'box.shape', 'box.size', 'presence_aux', 'presence_vit'].flatMap((h) => [`warmup_heads.${h}.bias`, `warmup_heads.${h}.weight`]).sort(),
    );
    const opt = await readSafetensors(path.join(step, 'optimizer.safetensors'));
    // Moments of the heads and of every encoder weight the losses reach (not the ViT's last layer and post LN).
    expect([...opt.keys()].filter((k) => k.startsWith('warmup_heads.'))).toHaveLength(2 * heads.size);
    const unreached = [...model.keys()].filter((k) => /encoder\.layers\.1\.|post_layernorm/.test(k));
    expect(unreached.length).toBeGreaterThan(0);
    expect(opt.size).toBe(2 * (heads.size + model.size - unreached.length));

    const lines = readMetrics(path.join(r.runDir, 'metrics.jsonl'));
    expect(lines.slice(0, 6).map((l) => Object.keys(l.parts ?? {}).sort())).toEqual(Array(6).fill(['box_color', 'box_shape', 'box_size', 'present_aux', 'present_vit']));
    const evalLine = JSON.parse(readFileSync(path.join(r.runDir, 'metrics.jsonl'), 'utf8').trim().split('\n').at(-1)!) as { step: number; eval: { images: number; accuracy: Record<string, number> } };
    expect(evalLine.step).toBe(6);
    expect(evalLine.eval.images).toBe(8);
    expect(evalLine.eval.accuracy).toEqual(r.evaluation!.accuracy);
    for (const k of ['box_color', 'box_shape', 'box_size', 'box_color@small', 'box_shape@large', 'present_aux_color', 'present_vit_shape']) {
      expect(r.evaluation!.accuracy[k], k).toBeGreaterThanOrEqual(0);
    }
    expect(o.log()).toMatch(/warm-up accuracy on 8 held-out 'eval' images/);
  });

  it('resumed = uninterrupted: same losses (1e-6), same encoders and heads', async () => {
    const set = (d: string) => [`output_dir=${path.join(root, d)}`];
    const a = await warmup(opts({ sets: set('straight'), evaluate: false }));
    const b1 = await warmup(opts({ sets: set('resumed'), maxSteps: 2, evaluate: false }));
    expect(b1.stopped).toBe('max-steps');
    await expect(warmup(opts({ sets: set('resumed') }))).rejects.toThrow(/already holds checkpoints.*--resume auto/);
    const b2 = await warmup(opts({ sets: set('resumed'), resume: 'auto', evaluate: false }));
    const losses = [...b1.losses, ...b2.losses];
    expect(losses.map((l) => l.step)).toEqual([1, 2, 3, 4, 5, 6]);
    losses.forEach((l, i) => expect(Math.abs(l.loss - a.losses[i]!.loss), `step ${l.step}`).toBeLessThanOrEqual(1e-6));
    for (const f of ['model.safetensors', HEADS_FILE, 'optimizer.safetensors']) {
      const [x, y] = await Promise.all([a, b2].map((r) => readSafetensors(path.join(r.runDir, 'step-00000006', f))));
      expect([...y!.keys()]).toEqual([...x!.keys()]);
      for (const [k, t] of x!) {
        const u = y!.get(k)!.data;
        let worst = 0;
        t.data.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - u[i]!) / Math.max(Math.abs(v), 1e-3))));
        expect(worst, `${f} ${k}`).toBeLessThanOrEqual(1e-5);
      }
    }
  });

  it('grad_accum: 2 micro-batches of 4 make the same steps as one batch of 8', async () => {
    const run = (d: string, extra: string[]) => warmup(opts({ sets: [`output_dir=${path.join(root, d)}`, 'train.max_steps=3', ...extra], evaluate: false }));
    const big = await run('accum-1', ['train.batch_size=8']);
    const split = await run('accum-2', ['train.batch_size=4', 'train.grad_accum=2']);
    split.losses.forEach((l, i) => expect(Math.abs(l.loss - big.losses[i]!.loss) / big.losses[i]!.loss, `step ${l.step}`).toBeLessThan(1e-5));
  });

  it('init.encoders_from loads the encoders into pretrain (base.safetensors) and finetune inherits them through init.from', async () => {
    // The first test's run (runs/tiny-warmup) is the warm-up the pretrain config points at.
    const warm = await readSafetensors(path.join(runs, 'tiny-warmup', 'step-00000006', 'model.safetensors'));
    const expectEncoders = (weights: Map<string, tf.Variable> | Map<string, { data: Float32Array | Int32Array }>, what: string) => {
      for (const [k, t] of warm) {
        const got = weights.get(k);
        expect(got, `${what} ${k}`).toBeDefined();
        const data = got instanceof tf.Variable ? got.dataSync() : (got as { data: Float32Array }).data;
        expect(Array.from(data), `${what} ${k}`).toEqual(Array.from(t.data));
      }
    };
    const model = await buildModel(loadConfig(pretrainYaml).config);
    expectEncoders(model.weightMap(), 'buildModel');
    model.dispose();

    const out = collector();
    const pre = await train({ configFile: pretrainYaml, stage: 'pretrain', maxSteps: 1, progress: 'lines', out: out.stream, err: collector().stream });
    expect(out.text()).toMatch(/init\.encoders_from: \d+ encoder weights from .*tiny-warmup.step-00000006/);
    expectEncoders(await readSafetensors(path.join(pre.runDir, 'base.safetensors')), 'pretrain base');
    const state = JSON.parse(readFileSync(path.join(pre.runDir, 'step-00000001', 'state.json'), 'utf8')) as { encodersFrom: { step: number } };
    expect(state.encodersFrom.step).toBe(6);
    const ft = await buildModel(loadConfig(finetuneYaml).config);
    expectEncoders(ft.weightMap(), 'finetune (init.from the pretrain run)');
    ft.dispose();
  });

  it('init.encoders_from rejects checkpoints with other keys, other shapes, other stages and clashing sources', async () => {
    const before = tf.memory().numTensors;
    const src = path.join(runs, 'tiny-warmup');
    const withSet = (...sets: string[]) => buildModel(loadConfig(pretrainYaml, sets).config);
    // A warm-up checkpoint whose model.safetensors also holds a projector weight.
    const forged = path.join(root, 'forged');
    cpSync(path.join(src, 'step-00000006'), path.join(forged, 'step-00000006'), { recursive: true });
    const file = path.join(forged, 'step-00000006', 'model.safetensors');
    const tensors = await readSafetensors(file);
    tensors.set('projector.model.0.weight', { dtype: 'float32', shape: [2, 2], data: new Float32Array(4) });
    await writeSafetensors(file, tensors);
    await expect(withSet(`init.encoders_from=${forged}/step-00000006`)).rejects.toThrow(/1 weights that are not encoder weights.*projector\.model\.0\.weight/);
    await expect(withSet('model.vision.hidden_size=32')).rejects.toThrow(/shape mismatch: visual_encoder\.vision_model/);
    await expect(withSet(`init.encoders_from=${runs}/tiny-pretrain`)).rejects.toThrow(/is a pretrain checkpoint, not a stage-0 warm-up one/);
    await expect(withSet(`init.from=${runs}/tiny-pretrain`)).rejects.toThrow(/init\.encoders_from .* and init\.from would both set the encoder weights/);
    await expect(loadRunModel(src)).rejects.toThrow(/is a stage-0 warm-up run: it holds encoder weights only; use it through init\.encoders_from/);
    expect(tf.memory().numTensors).toBe(before);
    // A low-res-only model takes the ViT and leaves the ConvNeXt weights unused (said in the log).
    const notes: string[] = [];
    const lowres = await buildModel(loadConfig(pretrainYaml, ['model.vision_aux=null', 'model.fusion=null', 'model.objects=null']).config, { log: (m) => notes.push(m) });
    lowres.dispose();
    expect(notes.join('\n')).toMatch(/visual_encoder_aux\.\* weights unused: this model has no high-resolution encoder/);
  });

  it('refuses configs of other stages, and the trainer points a warm-up config at mgllava warmup', async () => {
    await expect(warmup(opts({ configFile: pretrainYaml }))).rejects.toThrow(/'pretrain' config; run it with 'mgllava pretrain'/);
    await expect(train({ configFile: warmYaml, stage: 'pretrain', out: collector().stream })).rejects.toThrow(/'warmup' config; run it with 'mgllava warmup'/);
    await expect(warmup(opts({ sets: ['model.vision_aux=null', 'model.fusion=null', 'model.objects=null'] }))).rejects.toThrow(/model\.vision_aux: the warm-up trains both encoders/);
    await expect(warmup(opts({ sets: [`output_dir=${path.join(root, 'heads')}`, 'warmup.box_heads=[colour]'] }))).rejects.toThrow(/warmup\.box_heads: attribute 'colour' is not in .*annotations\.json \(it has: color, shape, size\)/);
  });

  it('mgllava warmup: the CLI trains and reports; config errors are one line without a stack trace', async () => {
    const ok = await cli(['warmup', '--config', warmYaml, '--set', `output_dir=${path.join(root, 'cli')}`, '--max-steps', '1', '--progress', 'lines']);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toMatch(/saved .*step-00000001[\s\S]*warm-up accuracy on 8 held-out 'eval' images/);
    const bad = await cli(['warmup', '--config', pretrainYaml]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/^mgllava: .*'pretrain' config; run it with 'mgllava pretrain'\n$/);
  });

  it("the heads' loss decreases over 30 steps on a small set", async () => {
    const sets = [`output_dir=${path.join(root, 'learn')}`, 'train.max_steps=30', 'train.save_steps=30', 'train.warmup_ratio=0.03', 'train.lr=1.0e-2', 'train.batch_size=12'];
    const r = await warmup(opts({ sets, evaluate: false }));
    const mean = (xs: { loss: number }[]) => xs.reduce((a, b) => a + b.loss, 0) / xs.length;
    const first = mean(r.losses.slice(0, 5));
    const last = mean(r.losses.slice(-5));
    expect(last).toBeLessThan(0.85 * first);
  });

  it("the warm-up model's encoders start as MGLLaVA's (same Rng), and its RoI means are the model's object features", async () => {
    const before = tf.memory().numTensors;
    const config = loadConfig(pretrainYaml).config;
    const mcfg = await modelConfigOf(config);
    const mg = new MGLLaVA(mcfg, { rng: new Rng(config.seed) });
    const ann = await readAnnotations(path.join(data, 'annotations.json'));
    const spec = headSpec(loadConfig(warmYaml).config.warmup!, ann);
    const wm = new WarmupModel(mcfg, spec, { rng: new Rng(config.seed) });
    try {
      const enc = wm.encoderWeights();
      expect([...enc.keys()]).toEqual([...mg.weightMap().keys()].filter((n) => n.startsWith('visual_encoder')));
      for (const [n, v] of enc) expect(Array.from(v.dataSync()), n).toEqual(Array.from(mg.weightMap().get(n)!.dataSync()));
      // Two images with 2 and 3 boxes (aux pixels, 64 px aux).
      const boxes = [Float32Array.from([3, 4, 9, 12, 20, 20, 50, 44]), Float32Array.from([0, 0, 64, 64, 30, 2, 33, 6, 10, 40, 30, 63])];
      const aux = tf.randomNormal([2, 64, 64, 3], 0, 1, 'float32', 5) as tf.Tensor4D;
      const low = tf.randomNormal([2, 28, 28, 3], 0, 1, 'float32', 6) as tf.Tensor4D;
      const frozen = mg.encodeFrozen(low, aux, boxes);
      const ours = tf.tidy(() => wm.roiMeans(wm.visionAux.apply(aux).concat!, boxes));
      expect(ours.shape).toEqual(frozen.roiMeans!.shape);
      const a = ours.dataSync();
      const b = frozen.roiMeans!.dataSync();
      let worst = 0;
      a.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - b[i]!))));
      expect(worst).toBeLessThan(1e-5);
      disposeFrozen(frozen);
      tf.dispose([aux, low, ours]);
    } finally {
      mg.dispose();
      wm.dispose();
    }
    expect(tf.memory().numTensors).toBe(before);
  });

  it('presence targets: per cell the objects covering a quarter of it or centred in it; per image the same everywhere', () => {
    const spec = (at: 'cell' | 'image'): HeadSpec => ({ box: [], presence: [{ attr: 'shape', classes: ['a', 'b', 'c'], offset: 0, at }], presenceSize: 3 });
    // aux 128 px, grid 4: 32 px cells. Box 0 (class a): 4x4 px at (5,5) -> its own cell only. Box 1 (class c):
    // (20,20)-(60,60), centre in cell (1,1); covers 28x12 = 336 >= 256 px of cells (1,0) and (0,1), 144 of (0,0).
    const batch = {
      size: 1, auxSize: 128,
      boxes: [Float32Array.from([5, 5, 9, 9, 20, 20, 60, 60])],
      presentPerBox: [Float32Array.from([1, 0, 0, 0, 0, 1])],
      present: Float32Array.from([1, 0, 1]),
    } as unknown as WarmupBatch;
    const z = presenceTargets(batch, spec('cell'), 4);
    const at = (gx: number, gy: number) => Array.from(z.subarray((gy * 4 + gx) * 3, (gy * 4 + gx + 1) * 3));
    expect(at(0, 0)).toEqual([1, 0, 0]);
    expect(at(1, 1)).toEqual([0, 0, 1]);
    expect(at(1, 0)).toEqual([0, 0, 1]);
    expect(at(0, 1)).toEqual([0, 0, 1]);
    expect(at(2, 2)).toEqual([0, 0, 0]);
    expect(z.reduce((a, v) => a + v, 0)).toBe(4);
    const img = presenceTargets(batch, spec('image'), 4);
    for (let m = 0; m < 16; m++) expect(Array.from(img.subarray(m * 3, m * 3 + 3))).toEqual([1, 0, 1]);
    // Mixed: colour (2 classes, per image) then shape (3 classes, per cell) in one target vector.
    const mixed: HeadSpec = {
      box: [],
      presence: [{ attr: 'color', classes: ['r', 'g'], offset: 0, at: 'image' }, { attr: 'shape', classes: ['a', 'b', 'c'], offset: 2, at: 'cell' }],
      presenceSize: 5,
    };
    const both = presenceTargets({ ...batch, present: Float32Array.from([0, 1, 1, 0, 1]), presentPerBox: [Float32Array.from([0, 1, 1, 0, 0, 0, 1, 0, 0, 1])] } as WarmupBatch, mixed, 4);
    const cellOf = (gx: number, gy: number) => Array.from(both.subarray((gy * 4 + gx) * 5, (gy * 4 + gx + 1) * 5));
    expect(cellOf(0, 0)).toEqual([0, 1, 1, 0, 0]);
    expect(cellOf(1, 1)).toEqual([0, 1, 0, 0, 1]);
    expect(cellOf(3, 3)).toEqual([0, 1, 0, 0, 0]);
  });

  it('annotation boxes map into the aux frame like the box pipeline, and land on their objects', async () => {
    const ann = await readAnnotations(path.join(data, 'annotations.json'));
    expect(ann.images.map((i) => i.split)).toEqual([...Array(24).fill('train'), ...Array(8).fill('eval')]);
    const auxSize = 64;
    for (const a of ann.images.slice(0, 12)) {
      const mapped = boxesToAux(a.boxes, a.width, a.height, auxSize);
      expect(mapped.kept).toEqual(a.boxes.map((_, i) => i));
      // The detector pipeline on the same boxes (distinct labels, decreasing scores: NMS keeps all, in order).
      const ref = preprocessBoxes({ boxes: a.boxes, labels: a.boxes.map((_, i) => `o${i}`), scores: a.boxes.map((_, i) => 1 - i / 100) }, { origW: a.width, origH: a.height, auxSize });
      expect(mapped.boxes).toEqual(ref.boxes);
      // The aux pixel at each box centre has the object's colour (noise ±10 and per-object ±12 aside).
      const img = await prepareImage(path.join(data, 'images', a.image), { auxSize, lowresSize: 28, norm: CLIP_NORM });
      mapped.boxes.forEach((b, k) => {
        const x = Math.floor((b[0] + b[2]) / 2);
        const y = Math.floor((b[1] + b[3] + (a.values[k]!.shape === 'triangle' ? (b[3] - b[1]) / 2 : 0)) / 2); // a triangle is widest low
        const rgb = [0, 1, 2].map((c) => Math.round((img.aux[(y * auxSize + x) * 3 + c]! * CLIP_NORM.std[c]! + CLIP_NORM.mean[c]!) * 255));
        const want = COLORS.find((c) => c.name === a.values[k]!.color)!.rgb;
        expect(Math.max(...rgb.map((v, c) => Math.abs(v - want[c]!))), `${a.id} object ${k} (${a.values[k]!.size} ${a.values[k]!.color}) at ${x},${y}`).toBeLessThanOrEqual(45);
      });
    }
  });
});
