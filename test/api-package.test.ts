// The package as a dependent project sees it: packed, unpacked into another directory's node_modules with only
// its runtime dependencies (test/api-install.ts), imported by its name. Runs the README's library example
// verbatim, a few training steps through the API only (with a leak check), the packaged CLI, and the
// launcher's message when dist/ was never built.
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { installPackedPackage, REPO, type InstalledApp } from './api-install.js';

/** The first ```js block of the README's "Use as a library" section. */
function readmeExample(): string {
  const readme = readFileSync(path.join(REPO, 'README.md'), 'utf8');
  const start = readme.indexOf('\n## Use as a library\n');
  expect(start, 'README.md has a "## Use as a library" section').toBeGreaterThan(0);
  const section = readme.slice(start, readme.indexOf('\n## ', start + 1));
  const code = /```js\n([\s\S]*?)\n```/.exec(section);
  expect(code, 'the section has a ```js block').not.toBeNull();
  return code![1]!;
}

/** What the API script below must find exported (the groups of src/index.ts). */
const DOCUMENTED = {
  function: [
    'selectBackend', 'currentBackend', 'runtimeInfo', 'loadConfig', 'validateConfig', 'buildModel', 'loadRun', 'loadRunModel',
    'runStage', 'mgllavaStage', 'warmupStage', 'train', 'warmup', 'runDemo', 'runAblation', 'resolveCheckpoint', 'readMetrics', 'generate', 'runEval', 'loadImageInput', 'visualTokensFor', 'disposeVisual',
    'exportRun', 'openPretrained', 'writeConverted', 'convertTorchCheckpoint', 'loadRecords', 'loadBoxes', 'checkDataset',
    'prepareImage', 'preprocessBoxes', 'getTemplate', 'loadTokenizer', 'encodeConversation', 'loadDataset', 'collate', 'synthDataset',
  ],
  class: ['MgllavaError', 'UsageError', 'DataError', 'ChatSession', 'MGLLaVA', 'DataLoader', 'SafetensorsReader'],
  object: ['tf', 'TEMPLATES', 'EXIT'],
};

/** Only the API: a tiny model trained 2 steps, evaluated, exported; a user error; the exported names. */
const API_SCRIPT = `
import { writeFileSync } from 'node:fs';
import * as api from 'mgllava';
const { selectBackend, synthDataset, loadConfig, train, loadRun, runEval, getTemplate, exportRun, MgllavaError, tf } = api;

const choice = await selectBackend('wasm');
await synthDataset({ out: 'data', train: 8, eval: 4, size: 48, seed: 4 });
writeFileSync('tiny.yaml', \`
name: api-tiny
stage: pretrain
seed: 3
output_dir: runs
model:
  vision: { image_size: 28, patch_size: 14, hidden_size: 16, intermediate_size: 32, num_layers: 2, num_heads: 2 }
  vision_aux: { dims: [4, 8, 8, 8], depths: [1, 1, 1, 1], image_size: 64 }
  fusion: { variant: 0 }
  objects: { output_size: 7 }
  llm: { vocab_size: 64, hidden_size: 16, intermediate_size: 24, num_layers: 1, num_heads: 2 }
data:
  records: data/pretrain.json
  boxes: data/boxes.json
  images: data/images
  tokenizer: { type: hf, path: data/tokenizer.json }
  max_length: 96
  image_workers: 0
train: { batch_size: 2, max_steps: 3, save_steps: 3, log_steps: 1 }
\`);
const { config } = loadConfig('tiny.yaml');
const steps = [];
const result = await train({ stage: 'pretrain', configFile: 'tiny.yaml', progress: 'lines', out: process.stderr, err: process.stderr,
  onStep: (s) => steps.push({ step: s.step, loss: s.loss, numTensors: s.numTensors }) });
const run = await loadRun(result.runDir);
const summary = await runEval({ model: run.model, tokenizer: run.tokenizer, template: getTemplate(run.config.data.template),
  records: 'data/eval.json', images: 'data/images', boxes: 'data/boxes.json', out: 'predictions.jsonl', maxNewTokens: 4 });
run.model.dispose();
const exported = await exportRun(result.runDir, { format: 'hf', out: 'export' });
let userError = null;
try { loadConfig('missing.yaml'); } catch (e) { userError = { isMgllavaError: e instanceof MgllavaError, category: e.category, message: e.message }; }
const kinds = Object.fromEntries(Object.entries(api).map(([k, v]) => [k, typeof v === 'function' ? (/^class\\b/.test(Function.prototype.toString.call(v)) ? 'class' : 'function') : typeof v]));
console.log(JSON.stringify({ backend: choice.name, configName: config.name, steps, result: { step: result.step, losses: result.losses },
  eval: { count: summary.count, accuracy: summary.accuracy }, exported: exported.files, userError, kinds, tensorsLeft: tf.memory().numTensors }));
`;

let app: InstalledApp;
beforeAll(() => {
  app = installPackedPackage();
}, 120_000);
afterAll(() => {
  if (app) rmSync(path.dirname(app.dir), { recursive: true, force: true });
});

describe('the packed package', () => {
  it('ships the build, the launcher, configs and the native sources, not src/ or tests', () => {
    const top = readdirSync(app.packageDir).sort();
    expect(top).toEqual(expect.arrayContaining(['README.md', 'bin', 'configs', 'dist', 'native', 'package.json', 'scripts']));
    expect(top).not.toContain('src');
    expect(top).not.toContain('test');
    for (const f of ['dist/index.js', 'dist/index.d.ts', 'dist/cli/main.js', 'dist/backend/kernels/simd.wasm', 'native/gemm.cc', 'scripts/build-native.mjs']) {
      expect(existsSync(path.join(app.packageDir, f)), f).toBe(true);
    }
    expect(existsSync(path.join(app.packageDir, 'dist/.tsbuildinfo'))).toBe(false);
  });

  it('imported by name: trains, evaluates and exports through the API only, without leaking tensors', () => {
    writeFileSync(path.join(app.dir, 'api.mjs'), API_SCRIPT);
    const r = app.run('api.mjs', { MGLLAVA_NATIVE_THREADS: '1' });
    expect(r.status, r.stderr.slice(-3000)).toBe(0);
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as {
      backend: string;
      configName: string;
      steps: { step: number; loss: number; numTensors: number }[];
      result: { step: number; losses: { step: number; loss: number; applied: boolean }[] };
      eval: { count: number; accuracy: number };
      exported: string[];
      userError: { isMgllavaError: boolean; category: string; message: string } | null;
      kinds: Record<string, string>;
      tensorsLeft: number;
    };
    expect(out.backend).toBe('wasm');
    expect(out.configName).toBe('api-tiny');
    expect(out.result.step).toBe(3);
    expect(out.result.losses).toHaveLength(3);
    for (const l of out.result.losses) expect(Number.isFinite(l.loss) && l.loss > 0 && l.applied).toBe(true);
    expect(out.steps.filter((s) => s.step >= 1).length).toBeGreaterThanOrEqual(3);
    const tensors = out.steps.map((s) => s.numTensors);
    expect(tensors.at(-1), `live tensors per step ${tensors.join(', ')}`).toBe(tensors.at(-2));
    expect(out.eval.count).toBeGreaterThan(0);
    expect(out.eval.accuracy).toBeGreaterThanOrEqual(0);
    expect(out.exported).toEqual(expect.arrayContaining(['config.json', 'generation_config.json', 'model.safetensors', 'mm_modules.safetensors']));
    expect(out.userError).toMatchObject({ isMgllavaError: true });
    expect(out.userError!.message).toContain('missing.yaml');
    for (const [kind, names] of Object.entries(DOCUMENTED)) {
      for (const name of names) expect(out.kinds[name], `export ${name}`).toBe(kind);
    }
    expect(out.tensorsLeft).toBe(0);
  }, 300_000);

  it("runs the README's library example as written", () => {
    writeFileSync(path.join(app.dir, 'example.mjs'), readmeExample());
    const r = app.run('example.mjs', { MGLLAVA_NATIVE_THREADS: '1' });
    expect(r.status, r.stderr.slice(-3000)).toBe(0);
    expect(r.stdout).toMatch(/^trained 3 steps, losses \d+\.\d{3}, \d+\.\d{3}, \d+\.\d{3}$/m);
    expect(r.stdout).toMatch(/^answer \(\d+ tokens\): /m);
    expect(existsSync(path.join(app.dir, 'checkpoints/shapes-pretrain'))).toBe(true);
  }, 300_000);

  it('the packaged CLI runs from dist/ with the runtime dependencies only', () => {
    const r = spawnSync(process.execPath, [path.join(app.packageDir, 'bin/mgllava.js'), '--help'], { cwd: app.dir, encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/mgllava <command>/);
  });
});

it('the launcher says how to build when dist/ is missing', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'mgllava-nodist-'));
  try {
    cpSync(path.join(REPO, 'bin'), path.join(dir, 'bin'), { recursive: true });
    writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ type: 'module' }));
    const r = spawnSync(process.execPath, [path.join(dir, 'bin/mgllava.js'), '--help'], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe('mgllava: the compiled CLI (dist/cli/main.js) is missing: run `npm run build` in the mgllava checkout\n');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
