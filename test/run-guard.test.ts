// Issue 12, run-directory and checkpoint items: (a) one writer per run dir, (b) names escaping output_dir,
// (c) foreign folders, recoverable resume, validated state.json, (f) NaN/Inf checkpoints refused at load,
// (h) /proc, paths below files or through dangling links, a full disk, a moved tokenizer, eval --out checked first.
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, symlinkSync, truncateSync, unlinkSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dumpConfig, loadConfig } from '../src/config/load.js';
import { MgllavaError } from '../src/errors.js';
import { exportRun } from '../src/io/export.js';
import { readSafetensors, writeSafetensors } from '../src/io/safetensors.js';
import { loadRunModel } from '../src/model/factory.js';
import { ensureDir, runDirFor } from '../src/run/guard.js';
import { MODEL_FILE } from '../src/run/layout.js';
import { lockRunDir } from '../src/run/lock.js';
import { train, type TrainOptions } from '../src/train/trainer.js';
import { capturedPretrain, makeTinyTrainSetup, type TinyTrainSetup } from './train-fixture.js';
import { runCli } from './cli-harness.js';

let setup: TinyTrainSetup;
let pretrained: string; // a finished 6-step pretrain run (checkpoints at 3 and 6), never damaged

beforeAll(async () => {
  setup = await makeTinyTrainSetup();
  pretrained = path.join(setup.root, 'pristine');
  await train(opts({ sets: [`output_dir=${pretrained}`, 'train.max_steps=6'] }));
  pretrained = path.join(pretrained, 'tiny-pretrain');
});
afterAll(async () => {
  await setup?.cleanup();
});

const opts = (extra: Partial<TrainOptions> & { sets?: string[] }) => capturedPretrain(setup, extra);

/**
 * A finished 6-step run (checkpoints at 3 and 6) under `<root>/<label>/tiny-pretrain`, to damage. Trained per test:
 * output_dir is part of the config hash, so a copy elsewhere could not be resumed.
 */
async function freshRun(label: string): Promise<{ outputDir: string; runDir: string }> {
  const outputDir = path.join(setup.root, label);
  await train(opts({ sets: [`output_dir=${outputDir}`, 'train.max_steps=6'] }));
  return { outputDir, runDir: path.join(outputDir, 'tiny-pretrain') };
}

async function failure(p: Promise<unknown>): Promise<MgllavaError> {
  const e = await p.then(
    () => null,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(MgllavaError);
  return e as MgllavaError;
}

/** Rewrite one tensor of a safetensors file with a NaN in it. */
async function poison(file: string, which = 0): Promise<string> {
  const all = await readSafetensors(file);
  const name = [...all.keys()].sort()[which]!;
  const t = all.get(name)!;
  const data = Float32Array.from(t.data as Float32Array);
  data[data.length - 1] = Number.NaN;
  all.set(name, { ...t, data });
  await writeSafetensors(file, all);
  return name;
}

describe('(a) one writer per run directory', () => {
  it('a live holder is named and refused; a dead one is taken over with a warning', async () => {
    const dir = path.join(setup.root, 'locked');
    mkdirSync(dir);
    const holder = spawn('sleep', ['30']);
    try {
      writeFileSync(path.join(dir, '.lock'), JSON.stringify({ pid: holder.pid, host: hostname(), started: '2026-01-01T00:00:00Z', argv: ['pretrain'] }));
      const e = await failure(lockRunDir(dir, () => undefined));
      expect(e.message).toMatch(new RegExp(`is in use by process ${holder.pid} \\(since 2026-01-01T00:00:00Z: mgllava pretrain\\)`));
      // the trainer itself: refused before it writes anything
      const o = opts({ sets: [`output_dir=${setup.root}`, 'name=locked'] });
      const t = await failure(train(o));
      expect(t.message).toContain(`process ${holder.pid}`);
      expect(readdirSync(dir)).toEqual(['.lock']);
    } finally {
      holder.kill();
    }
    const dead = spawnSync('true').pid!; // exited: its pid is free
    writeFileSync(path.join(dir, '.lock'), JSON.stringify({ pid: dead, host: hostname(), started: '2026-01-01T00:00:00Z' }));
    const warned: string[] = [];
    const lock = await lockRunDir(dir, (m) => warned.push(m));
    expect(warned).toEqual([`took over the lock of ${dir} left by process ${dead} (no longer running, started 2026-01-01T00:00:00Z)`]);
    expect(JSON.parse(readFileSync(path.join(dir, '.lock'), 'utf8')).pid).toBe(process.pid);
    // two stages of one process cannot share it either; released, it is free again
    await failure(lockRunDir(dir, () => undefined));
    await lock.release();
    expect(existsSync(path.join(dir, '.lock'))).toBe(false);
    await (await lockRunDir(dir, () => undefined)).release();
  });
});

describe('(b), (c) what a stage writes into', () => {
  it("name '..' (or any name leaving output_dir) is refused", () => {
    expect(() => loadConfig(setup.pretrainYaml, ['name=..'])).toThrow(/name: not '\.' or '\.\.'/);
    expect(() => runDirFor('/x/out', '..')).toThrow(/not a run name/);
    expect(() => runDirFor('/x/out', 'a/b')).toThrow(/not a run name/);
    expect(runDirFor('/x/out', 'a..b')).toBe('/x/out/a..b');
  });

  it('a folder of other files, or a run without checkpoints, is never written into by accident', async () => {
    const out = path.join(setup.root, 'foreign');
    mkdirSync(path.join(out, 'tiny-pretrain'), { recursive: true });
    writeFileSync(path.join(out, 'tiny-pretrain', 'thesis.tex'), 'mine');
    const e = await failure(train(opts({ sets: [`output_dir=${out}`] })));
    expect(e.message).toMatch(/tiny-pretrain is not a run directory \(it holds thesis\.tex\)/);
    expect(readdirSync(path.join(out, 'tiny-pretrain'))).toEqual(['thesis.tex']);

    const half = path.join(setup.root, 'half');
    const { config } = loadConfig(setup.pretrainYaml, [`output_dir=${half}`, 'train.max_steps=3']);
    mkdirSync(path.join(half, 'tiny-pretrain'), { recursive: true });
    writeFileSync(path.join(half, 'tiny-pretrain', 'config.yaml'), dumpConfig(config));
    writeFileSync(path.join(half, 'tiny-pretrain', 'metrics.jsonl'), '{"step": 1, "loss": 1}\n');
    expect((await failure(train(opts({ sets: [`output_dir=${half}`] })))).message).toMatch(/holds a run's config\.yaml, metrics\.jsonl but no checkpoint.*--resume auto/);
    // another config's leftovers are refused even with --resume auto; the same config continues
    expect((await failure(train(opts({ sets: [`output_dir=${half}`, 'train.lr=0.5'], resume: 'auto' })))).message).toMatch(/holds another config's run/);
    const r = await train(opts({ sets: [`output_dir=${half}`, 'train.max_steps=3'], resume: 'auto' }));
    expect(r.runDir).toBe(path.join(half, 'tiny-pretrain'));
  });

  it('resume auto falls back from a truncated or missing newest checkpoint, with a warning naming it', async () => {
    const { outputDir, runDir } = await freshRun('trunc');
    truncateSync(path.join(runDir, 'step-00000006', MODEL_FILE), 500);
    const o = opts({ sets: [`output_dir=${outputDir}`, 'train.max_steps=6'], resume: 'auto' });
    const r = await train(o);
    expect(o.warnings()).toMatch(/step 6 is unusable \(.*step-00000006\/model\.safetensors is unreadable: .*\); falling back to an earlier checkpoint/);
    expect(o.log()).toMatch(/resuming at step 3/);
    expect(r.step).toBe(6);

    const m = await freshRun('missing-opt');
    unlinkSync(path.join(m.runDir, 'step-00000006', 'optimizer.safetensors'));
    const o2 = opts({ sets: [`output_dir=${m.outputDir}`, 'train.max_steps=6'], resume: 'auto' });
    await train(o2);
    expect(o2.warnings()).toMatch(/step-00000006\/optimizer\.safetensors is missing/);
  });

  it('an edited state.json is validated: named checkpoints are refused, resume auto skips them', async () => {
    const { outputDir, runDir } = await freshRun('edited');
    const file = path.join(runDir, 'step-00000006', 'state.json');
    const s = JSON.parse(readFileSync(file, 'utf8'));
    writeFileSync(file, JSON.stringify({ ...s, step: 999 }));
    const e = await failure(train(opts({ sets: [`output_dir=${outputDir}`, 'train.max_steps=6'], resume: path.join(runDir, 'step-00000006') })));
    expect(e.message).toMatch(/state\.json: not a consistent trainer state \(step 999 is beyond the run's totalSteps 6; step 999 but the directory is step 6\)/);
    for (const bad of [{ loader: { ...s.loader, position: 10_000 } }, { configHash: 'x' }, { optimizerStep: 50 }, { stage: 'pretrainx' }]) {
      writeFileSync(file, JSON.stringify({ ...s, ...bad }));
      const b = await failure(train(opts({ sets: [`output_dir=${outputDir}`, 'train.max_steps=6'], resume: path.join(runDir, 'step-00000006') })));
      expect(b.message, JSON.stringify(bad)).toMatch(new RegExp(`state\\.json: not a consistent trainer state \\(${Object.keys(bad)[0]}`));
    }
    const o = opts({ sets: [`output_dir=${outputDir}`, 'train.max_steps=6'], resume: 'auto' });
    await train(o);
    expect(o.warnings()).toMatch(/step 6 is unusable/);
  });

  it('a truncated base.safetensors or a corrupt init.from is one line naming the file (and the key)', async () => {
    const { runDir } = await freshRun('base');
    truncateSync(path.join(runDir, 'base.safetensors'), 3000);
    const e = await failure(loadRunModel(runDir));
    expect(e.message).toMatch(/base\.safetensors: .*beyond the file size 3000/);
    const f = await failure(train(opts({ configFile: setup.finetuneYaml, stage: 'finetune', sets: [`output_dir=${path.join(setup.root, 'ft-corrupt')}`, `init.from=${runDir}`] })));
    expect(f.message).toMatch(/^init\.from: .*base\.safetensors: .*beyond the file size 3000/);
    const g = await failure(train(opts({ configFile: setup.finetuneYaml, stage: 'finetune', sets: [`output_dir=${path.join(setup.root, 'ft-none')}`, `init.from=${setup.root}/nope`] })));
    expect(g.message).toMatch(/^init\.from: checkpoint .*nope: no such file or directory$/);
  });
});

describe('(f) checkpoints with NaN or Inf weights are refused at load', () => {
  it('chat/eval (loadRunModel), export and init.from', async () => {
    const { runDir } = await freshRun('nan');
    const name = await poison(path.join(runDir, 'step-00000006', MODEL_FILE));
    const e = await failure(loadRunModel(runDir));
    expect(e.message).toMatch(new RegExp(`model\\.safetensors: ${name.replace(/\./g, '\\.')} has 1 non-finite value\\(s\\)`));
    expect(e.exitCode).toBe(5);
    const out = path.join(setup.root, 'nan-export');
    await failure(exportRun(runDir, { format: 'xtuner', out }));
    expect(existsSync(out)).toBe(false); // what the export wrote before the bad tensor is gone
    const f = await failure(train(opts({ configFile: setup.finetuneYaml, stage: 'finetune', sets: [`output_dir=${path.join(setup.root, 'ft-nan')}`, `init.from=${runDir}`] })));
    expect(f.message).toMatch(/^init\.from: .*non-finite/);
    // the earlier step is fine
    const ok = await loadRunModel(runDir, { step: 3 });
    ok.model.dispose();
  });
});

describe('(h) output paths and full disks', () => {
  it('output_dir under /proc, --out below a file or through a dangling link: one line, at once', async () => {
    expect((await failure(train(opts({ sets: ['output_dir=/proc/x'] })))).message).toMatch(/\/proc is a virtual file system/);
    await expect(ensureDir('/proc/x/y', '--out')).rejects.toThrow(/\/proc is a virtual file system/);
    const file = path.join(setup.root, 'a-file');
    writeFileSync(file, 'x');
    await expect(ensureDir(path.join(file, 'sub'), '--out')).rejects.toThrow(`--out ${path.join(file, 'sub')}: ${file} is a file, not a directory`);
    const link = path.join(setup.root, 'dangling');
    symlinkSync(path.join(setup.root, 'nowhere'), link);
    await expect(ensureDir(path.join(link, 'x'), '--out')).rejects.toThrow(/is a symbolic link to nothing/);
    const r = await runCli(['export', pretrained, '--format', 'xtuner', '--out', '/proc/x']);
    expect([r.code, r.err.trim().split('\n').length]).toEqual([6, 1]);
  });

  it('ENOSPC names the file; an export that fails part-way removes what it wrote', async () => {
    // A 64 KiB tmpfs stands in for a full disk (needs root to mount; skipped where that is not allowed).
    const full = path.join(setup.root, 'full');
    mkdirSync(full);
    if (spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', full]).status !== 0) return;
    try {
      const e = await failure(train(opts({ sets: [`output_dir=${full}`] })));
      expect(e.message).toMatch(new RegExp(`^${full}/tiny-pretrain/(base|model|optimizer)\\.safetensors: writing: no space left on device$|^${full}/tiny-pretrain/.*: .*no space left on device`));
      expect(e.exitCode).toBe(7);
      rmSync(path.join(full, 'tiny-pretrain'), { recursive: true, force: true });
      writeFileSync(path.join(full, 'filler'), Buffer.alloc(60 * 1024)); // 4 KiB left: the export's first file does not fit
      const out = path.join(full, 'export');
      const x = await failure(exportRun(pretrained, { format: 'xtuner', out }));
      expect(x.message).toMatch(/no space left on device/);
      expect(existsSync(out)).toBe(false);
    } finally {
      spawnSync('umount', [full]);
    }
  });

  it('a run whose tokenizer moved names data.tokenizer and the run', async () => {
    const moved = path.join(setup.root, 'moved-tok');
    cpSync(setup.data, moved, { recursive: true });
    const out = path.join(setup.root, 'tok');
    await train(opts({ sets: [`output_dir=${out}`, `data.tokenizer.path=${moved}/tokenizer.json`, 'train.max_steps=3'] }));
    renameSync(path.join(moved, 'tokenizer.json'), path.join(moved, 'tokenizer.moved.json'));
    const e = await failure(loadRunModel(path.join(out, 'tiny-pretrain')));
    expect(e.message).toMatch(/its tokenizer \(data\.tokenizer in .*config\.yaml\) cannot be loaded: .*tokenizer\.json: reading the tokenizer: no such file or directory/);
    expect(e.hint).toMatch(/put the tokenizer back/);
  });

  it('eval --out into a missing folder is refused before anything is evaluated', async () => {
    const r = await runCli(['eval', pretrained, '--records', path.join(setup.data, 'pretrain.json'), '--out', path.join(setup.root, 'no-such-dir', 'p.jsonl')]);
    expect(r.code).toBe(4);
    expect(r.err.trim()).toMatch(/^mgllava: .*no-such-dir: the folder of the predictions file \(--out\) .*: no such file or directory$/);
  });
});
