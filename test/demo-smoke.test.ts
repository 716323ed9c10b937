/**
 * `mgllava demo` in miniature (`--smoke`): a handful of images and a few steps per stage, in a temp dir, as a
 * subprocess of the installed CLI (bin/mgllava.js) — the pipeline end to end (data synth, warm-up, pretrain,
 * finetune, eval on the held-out and a fresh set, train on, export), the summary JSON and the exported files.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
let work: string | null = null;

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

function run(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [path.join(REPO, 'bin/mgllava.js'), 'demo', ...args], {
      cwd: REPO,
      env: { ...process.env, MGLLAVA_BACKEND: process.env.MGLLAVA_BACKEND ?? 'wasm' },
    });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    p.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('mgllava demo (smoke)', () => {
  it('runs every stage on a few images and prints the summary JSON; the export dir has the files', async () => {
    work = await mkdtemp(path.join(tmpdir(), 'mgllava-demo-'));
    const r = await run(['--smoke', '--json', '--workdir', work]);
    expect(r.code, r.stderr.slice(-3000)).toBe(0);

    // stdout is exactly one JSON line; progress went to stderr.
    const lines = r.stdout.trim().split('\n');
    expect(lines.length).toBe(1);
    const s = JSON.parse(lines[0]!) as Record<string, unknown> & { stages: { stage: string; steps?: number }[]; byCategory: Record<string, number>; fresh: { accuracy: number; byCategory: Record<string, number> } };
    expect(typeof s.accuracy).toBe('number');
    expect(Object.keys(s.byCategory).sort()).toEqual(['large_color', 'large_shape', 'small_color']);
    expect(Object.keys(s.fresh.byCategory).sort()).toEqual(['large_color', 'large_shape', 'small_color']);
    expect(typeof s.seconds).toBe('number');
    expect(s).toMatchObject({ backend: 'wasm', seed: 0, run: expect.any(String), export: 'exports/tiny-shapes-xtuner' });

    // Every stage ran (a smoke model is at chance on small objects, so it also trains on once).
    const names = s.stages.map((x) => x.stage);
    for (const st of ['data', 'data (fresh eval set)', 'warmup', 'pretrain', 'finetune', 'eval held-out', 'eval fresh', 'train on', 'export']) expect(names).toContain(st);
    const steps = Object.fromEntries(s.stages.filter((x) => x.steps !== undefined).map((x) => [x.stage, x.steps]));
    expect(steps).toMatchObject({ warmup: 2, pretrain: 2, finetune: 3, 'train on': 2 });
    expect(s.trainedOn).toBe(true);
    expect(r.stderr).toMatch(/MG-LLaVA demo summary/);
    expect(r.stderr).toMatch(/RESULT: small-object colour accuracy .* still near chance/);

    // Runs and export on disk, inside the work dir.
    for (const d of ['data/tiny-shapes/eval.json', 'data/tiny-shapes-fresh/eval.json', 'checkpoints/tiny-shapes-warmup', 'checkpoints/tiny-shapes-pretrain', 'checkpoints/tiny-shapes-finetune']) {
      expect(existsSync(path.join(work, d)), d).toBe(true);
    }
    expect(existsSync(path.join(work, String(s.run), 'predictions-held-out.jsonl'))).toBe(true);
    expect(readdirSync(path.join(work, String(s.export))).sort()).toEqual(['mgllava.json', 'model.pth', 'model.safetensors']);
    // The finetune was handed the pretrain's feature cache: it starts filled.
    expect(r.stderr).toMatch(/\[finetune\][\s\S]*reusing \d+ images .* cached by the previous run/);

    // The README's "Try the trained model" commands work as written on the demo's output (the chat answer's
    // default budget fits the run's max_length).
    const readme = readFileSync(path.join(REPO, 'README.md'), 'utf8');
    const block = /Try the trained model:\n\n```bash\n([\s\S]*?)```/.exec(readme)![1]!;
    const commands = block.replace(/\\\n\s*/g, ' ').trim().split('\n');
    expect(commands.map((c) => c.split(' ').slice(0, 3).join(' '))).toEqual(['npx mgllava chat', 'npx mgllava eval']);
    // The run's context is shorter than the old fixed 256-token answer budget: the chat line tests the fitted default.
    expect(Number(/max_length: (\d+)/.exec(readFileSync(path.join(work, 'checkpoints/tiny-shapes-finetune/config.yaml'), 'utf8'))![1])).toBeLessThan(256);
    for (const c of commands) {
      const words = [...c.matchAll(/"([^"]*)"|(\S+)/g)].map((m) => m[1] ?? m[2]!).slice(2); // drop `npx mgllava`
      const res = spawnSync(process.execPath, [path.join(REPO, 'bin/mgllava.js'), ...words], { cwd: work, encoding: 'utf8', env: { ...process.env, MGLLAVA_BACKEND: process.env.MGLLAVA_BACKEND ?? 'wasm' } });
      expect(res.status, `${c}\n${res.stderr}`).toBe(0);
      expect(res.stderr, c).not.toMatch(/^mgllava: /m);
      expect(res.stdout.endsWith('\n'), c).toBe(true); // the (smoke model's, maybe empty) answer, then a newline
      if (words[0] === 'eval') expect(JSON.parse(res.stdout)).toMatchObject({ accuracy: expect.any(Number), runtime: { backend: 'wasm', matmul: expect.stringMatching(/^(native \w+ x\d+|xnnpack)$/) } });
    }
  });

  it('takes its options through yargs: a mistyped one stops before any work', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'mgllava-demo-bad-'));
    try {
      const r = await run(['--smoke', '--workdir', dir, '--pretrain-step', '2']);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/unknown option --pretrain-step \(did you mean --pretrain-steps\?\)/);
      expect(readdirSync(dir)).toEqual([]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
