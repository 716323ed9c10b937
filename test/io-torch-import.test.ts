/**
 * `mgllava import --kind mgllava`: a run's model.pth export, wrapped as MG-LLaVA releases are ({meta, state_dict,
 * message_hub} with classes from modules no reader can import), imports into a run whose weights and eval
 * predictions equal the original's, and that export and init.from accept. Half precision is widened; DeepSpeed and
 * safetensors inputs work; missing trainable weights, wrong shapes and extra keys are named.
 */
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configHash, loadConfig } from '../src/config/load.js';
import type { ExperimentConfig } from '../src/config/schema.js';
import { exportRun } from '../src/io/export.js';
import { TorchStateReader } from '../src/io/torch-reader.js';
import { buildModel, loadRunModel } from '../src/model/factory.js';
import type { MGLLaVA } from '../src/model/mgllava.js';
import { MODEL_FILE, STATE_FILE, stepDirName, type TrainState } from '../src/run/layout.js';
import { writeWeightsFile } from '../src/io/weights-io.js';
import { Rng } from '../src/util/rng.js';
import { makeTinyRun } from './infer-fixtures.js';
import { fromHalfBits, toHalfBits } from './io-fixtures.js';
import { zipCheckpoint, type GenTensor } from './torch-gen.js';
import { expectOneLineError, runCli } from './cli-harness.js';
import { rawSafetensors } from './torch-helpers.js';

let dir: string;
let data: string;
let runDir: string;
let config: ExperimentConfig;
let configFile: string;
/** The original run's export (xtuner: model.pth + model.safetensors). */
let exported: string;
let n = 0;
const fresh = (name: string) => path.join(dir, `${name}-${n++}`);

/** The tensors of a .pth as generator tensors (contiguous, in their saved dtype, or re-encoded as F16). */
async function tensorsOf(pth: string, half = false): Promise<GenTensor[]> {
  const r = await TorchStateReader.open(pth);
  try {
    const out: GenTensor[] = [];
    for (const [i, name] of r.keys().entries()) {
      const t = r.tensor(name);
      let bytes = await r.readRaw(name);
      let dtype = t.dtype;
      if (half && t.dtype === 'F32') {
        const f = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
        bytes = new Uint8Array(Uint16Array.from(f, toHalfBits).buffer);
        dtype = 'F16';
      }
      const shape = [...t.shape];
      out.push({ name, storage: { key: String(i), dtype, numel: t.numel, bytes }, offset: 0, shape, stride: shape.map((_, k) => shape.slice(k + 1).reduce((a, b) => a * b, 1)), how: 'v2' });
    }
    return out;
  } finally {
    await r.close();
  }
}

/** An mmengine-style release of these tensors: {meta (foreign ConfigDict, iter 10805), state_dict, message_hub}. */
async function release(tensors: GenTensor[], name = 'iter_10805.pth'): Promise<string> {
  const f = path.join(fresh('rel'), name);
  await mkdir(path.dirname(f), { recursive: true });
  await writeFile(f, zipCheckpoint(tensors, { wrap: 'state_dict', prefix: name.replace(/\.pth$/, '') }));
  return f;
}

async function weightsOf(run: string): Promise<Map<string, Float32Array>> {
  const r = await loadRunModel(run);
  try {
    const out = new Map<string, Float32Array>();
    for (const [k, v] of r.model.weightMap()) out.set(k, (await v.data()) as Float32Array);
    return out;
  } finally {
    r.model.dispose();
  }
}

async function evalPredictions(run: string): Promise<{ accuracy: number; predictions: string[] }> {
  const out = path.join(dir, `pred-${n++}.jsonl`);
  const r = await runCli(['eval', run, '--records', path.join(data, 'eval.json'), '--json', '--batch-size', '6', '--out', out, '--backend', 'wasm']);
  expect(r.code, r.err).toBe(0);
  const summary = JSON.parse(r.out.trim().split('\n').pop()!) as { accuracy: number };
  const predictions = readFileSync(out, 'utf8').trim().split('\n').map((l) => JSON.stringify((JSON.parse(l) as { id: string; prediction: string })));
  return { accuracy: summary.accuracy, predictions };
}

let original: Map<string, Float32Array>;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'mgllava-torch-import-'));
  let model: MGLLaVA;
  ({ data, runDir, config, model } = await makeTinyRun(dir));
  // Trained weights that differ from the config's init (which an import starts from): the release must supply them.
  const rng = new Rng(11);
  const trainable = model.trainableWeights('finetune');
  for (const v of trainable.values()) {
    const noise = Float32Array.from({ length: v.size }, () => rng.normal() * 0.2);
    tf.tidy(() => v.assign(v.add(tf.tensor(noise, v.shape))));
  }
  await writeWeightsFile(path.join(runDir, stepDirName(5), MODEL_FILE), trainable);
  model.dispose();
  // The fixture's state.json is minimal; export reads the stage from a complete trainer state.
  const state: TrainState = {
    format: 1, step: 5, totalSteps: 5, stage: 'finetune', configHash: configHash(config), seeds: { init: config.seed, data: config.seed },
    loader: { epoch: 0, position: 0, size: 0 }, optimizerStep: 5, badStreak: 0, metricsLines: 0, elapsedSeconds: 0, initFrom: null, time: new Date(0).toISOString(),
  };
  await writeFile(path.join(runDir, stepDirName(5), STATE_FILE), JSON.stringify(state));
  configFile = path.join(runDir, 'config.yaml');
  exported = fresh('export');
  await exportRun(runDir, { format: 'xtuner', out: exported });
  original = await weightsOf(runDir);
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
  expect(existsSync('/tmp/mgllava-gen-pwned')).toBe(false);
});

describe('mgllava import --kind mgllava', () => {
  it('a release wrapping our model.pth imports into a run with the same weights and the same eval predictions', async () => {
    const before = tf.memory().numTensors;
    const rel = await release(await tensorsOf(path.join(exported, 'model.pth')));
    const out = fresh('imported');
    const r = await runCli(['import', '--kind', 'mgllava', '--from', rel, '--config', configFile, '--out', out, '--json', '--backend', 'wasm']);
    expect(r.code, r.err).toBe(0);
    const report = JSON.parse(r.out) as { step: number; stage: string; key: string; trained: number; frozen: number; missing: string[]; unmapped: unknown[]; notImported: string[] };
    const trainableCount = Object.keys(JSON.parse(readFileSync(path.join(exported, 'mgllava.json'), 'utf8')).keys).length;
    expect(report).toMatchObject({ step: 10805, stage: 'finetune', key: 'state_dict', trained: trainableCount, frozen: 0, missing: [], unmapped: [], notImported: [] });

    const got = await weightsOf(out);
    expect([...got.keys()].sort()).toEqual([...original.keys()].sort());
    for (const [k, v] of original) expect(Buffer.compare(Buffer.from(got.get(k)!.buffer), Buffer.from(v.buffer)), k).toBe(0);

    const a = await evalPredictions(runDir);
    const b = await evalPredictions(out);
    expect(b.predictions).toEqual(a.predictions);
    expect(b.accuracy).toBe(a.accuracy);
    expect(a.predictions.length).toBeGreaterThan(0);

    // export accepts it (the same xtuner tensors as the original's export), and so does init.from.
    // The release, not the config's init, supplied the trained weights.
    const fresh0 = await buildModel(config);
    const differs = [...fresh0.weightMap()].filter(([k, v]) => Buffer.compare(Buffer.from((v.dataSync() as Float32Array).buffer), Buffer.from(original.get(k)!.buffer)) !== 0).length;
    fresh0.dispose();
    expect(differs).toBe(trainableCount);
    const re = fresh('reexport');
    await exportRun(out, { format: 'xtuner', out: re });
    const x = rawSafetensors(path.join(exported, 'model.safetensors'));
    const y = rawSafetensors(path.join(re, 'model.safetensors'));
    expect([...y.keys()].sort()).toEqual([...x.keys()].sort());
    for (const [k, t] of x) expect(Buffer.compare(y.get(k)!.bytes, t.bytes), k).toBe(0);
    const init = await buildModel({ ...config, init: { ...config.init, from: out } });
    for (const [k, v] of init.weightMap()) expect(Buffer.compare(Buffer.from(((await v.data()) as Float32Array).buffer), Buffer.from(original.get(k)!.buffer)), k).toBe(0);
    init.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('half precision is widened; safetensors and DeepSpeed inputs import too', async () => {
    const half = await release(await tensorsOf(path.join(exported, 'model.pth'), true));
    const out = fresh('half');
    const r = await runCli(['import', '--kind', 'mgllava', '--from', half, '--config', configFile, '--out', out, '--backend', 'wasm']);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toContain('step 10805');
    const got = await weightsOf(out);
    const w = 'projector.model.0.weight';
    expect(Array.from(got.get(w)!)).toEqual(Array.from(original.get(w)!, (x) => fromHalfBits(toHalfBits(x))));

    const st = fresh('from-st');
    expect((await runCli(['import', '--kind', 'mgllava', '--from', path.join(exported, 'model.safetensors'), '--config', configFile, '--out', st, '--backend', 'wasm'])).code).toBe(0);
    const ds = fresh('ds');
    await mkdir(path.join(ds, 'global_step5'), { recursive: true });
    await writeFile(path.join(ds, 'global_step5', 'mp_rank_00_model_states.pt'), zipCheckpoint(await tensorsOf(path.join(exported, 'model.pth')), { wrap: 'module' }));
    const dsRun = fresh('ds-run');
    const d = await runCli(['import', '--kind', 'mgllava', '--from', ds, '--config', configFile, '--out', dsRun, '--json', '--backend', 'wasm']);
    expect(d.code, d.err).toBe(0);
    expect(JSON.parse(d.out)).toMatchObject({ key: 'module', step: 100 });
    for (const run of [st, dsRun]) {
      const ws = await weightsOf(run);
      for (const [k, v] of original) expect(Buffer.compare(Buffer.from(ws.get(k)!.buffer), Buffer.from(v.buffer)), `${run} ${k}`).toBe(0);
    }
  });

  it('a missing trainable weight is an error naming it, unless --allow-missing; wrong shapes and extra keys are named', async () => {
    const all = await tensorsOf(path.join(exported, 'model.pth'));
    const dropped = 'bbox_projector.model.2.bias';
    const rel = await release(all.filter((t) => t.name !== dropped));
    const line = expectOneLineError(await runCli(['import', '--kind', 'mgllava', '--from', rel, '--config', configFile, '--out', fresh('x'), '--backend', 'wasm']));
    expect(line).toContain(dropped);
    expect(line).toContain('--allow-missing');
    const out = fresh('allow');
    const ok = await runCli(['import', '--kind', 'mgllava', '--from', rel, '--config', configFile, '--out', out, '--allow-missing', '--json', '--backend', 'wasm']);
    expect(ok.code, ok.err).toBe(0);
    expect(JSON.parse(ok.out).missing).toEqual([dropped]);
    expect(existsSync(path.join(out, stepDirName(10805), 'model.safetensors'))).toBe(true);

    // A wrong shape: the release's projector is wider than the config's.
    const wide = all.map((t) => (t.name === 'projector.model.0.bias' ? { ...t, shape: [t.shape[0]! / 2], stride: [1] } : t));
    const bad = expectOneLineError(await runCli(['import', '--kind', 'mgllava', '--from', await release(wide), '--config', configFile, '--out', fresh('y'), '--backend', 'wasm']));
    expect(bad).toContain('projector.model.0.bias');

    // Keys that are no weight of the model are reported, not imported.
    const extra: GenTensor = { ...all[0]!, name: 'data_preprocessor.mean' };
    const e = await runCli(['import', '--kind', 'mgllava', '--from', await release([...all, extra]), '--config', configFile, '--out', fresh('z'), '--json', '--backend', 'wasm']);
    expect(e.code, e.err).toBe(0);
    expect(JSON.parse(e.out).unmapped).toEqual([{ name: 'data_preprocessor.mean', why: 'not a weight of this model' }]);

    // The output must be a new run directory; --config is required.
    expect(expectOneLineError(await runCli(['import', '--kind', 'mgllava', '--from', rel, '--config', configFile, '--out', out, '--allow-missing', '--backend', 'wasm']))).toContain('not an empty directory');
    expect(expectOneLineError(await runCli(['import', '--kind', 'mgllava', '--from', rel, '--out', fresh('w')]))).toContain('--config');
    expect(loadConfig(path.join(out, 'config.yaml')).config.name).toBe(path.basename(out));
  });
});
