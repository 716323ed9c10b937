/**
 * Argument errors stop before any work (issue 17 item 1): an unknown flag, a missing required option or a bad
 * value exits 1 with a usage hint, for every command, and writes nothing; `mgllava` alone lists the commands;
 * `--version` prints the package version.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runCli } from './cli-harness.js';

const REPO = path.resolve(import.meta.dirname, '..');
const tmp = mkdtempSync(path.join(tmpdir(), 'mgllava-args-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Every file under a folder with its contents (what "changes no file" compares). */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) out[path.join(e.parentPath, e.name)] = readFileSync(path.join(e.parentPath, e.name), 'latin1');
  }
  return out;
}

describe('argument errors stop before any work', () => {
  // A config whose run directory would land in the temp dir: any training would show up there.
  const cfg = (stage: string) => {
    const f = path.join(tmp, `${stage}.yaml`);
    writeFileSync(f, `extends: ${path.join(REPO, 'configs/tiny-shapes', `${stage}.yaml`)}\noutput_dir: ${path.join(tmp, 'checkpoints')}\n`);
    return f;
  };
  const out = (name: string) => path.join(tmp, name);
  const run = path.join(tmp, 'no-run'); // never read: the command line fails first

  // [argv, what the message must name]
  const cases: [string[], RegExp][] = [
    [['pretrain', '--config', cfg('pretrain'), '--max-step', '3'], /unknown option --max-step \(did you mean --max-steps\?\)/],
    [['finetune', '--config', cfg('finetune'), '--max-step', '3'], /unknown option --max-step \(did you mean --max-steps\?\)/],
    [['warmup', '--config', cfg('warmup'), '--resum', 'auto'], /unknown option --resum \(did you mean --resume\?\)/],
    [['pretrain', '--max-steps', '3'], /missing required option --config/],
    [['finetune', '--config', cfg('finetune'), '--max-steps', 'three'], /--max-steps: not a number/],
    [['finetune', '--config', cfg('finetune'), '--max-steps', '0'], /--max-steps must be a positive integer, got 0/],
    [['pretrain', '--config', cfg('pretrain'), '--progress', 'sideways'], /--progress: "sideways" is not one of auto, bar, lines, off/],
    [['eval', run, '--records', out('eval.json'), '--batchsize', '4'], /unknown option --batchsize \(did you mean --batch-size\?\)/],
    [['eval', run], /missing required option --records/],
    [['chat', run, '--max-new-token', '4', 'hi'], /unknown option --max-new-token \(did you mean --max-new-tokens\?\)/],
    [['export', run, '--format', 'hf', '--out', out('export'), '--overwrit'], /unknown option --overwrit/],
    [['export', run, '--format', 'onnx', '--out', out('export')], /--format: "onnx" is not one of xtuner, hf/],
    [['import', '--kind', 'clip', '--from', out('clip'), '--out', out('clip.safetensors'), '--lst'], /unknown option --lst/],
    [['data', 'check', '--records', out('r.json'), '--imges', out('images')], /unknown option --imges \(did you mean --images\?\)/],
    [['data', 'show', '0', '--records', out('r.json'), '--tokenz'], /unknown option --tokenz/],
    [['data', 'synth', '--out', out('synth'), '--trian', '3'], /unknown option --trian \(did you mean --train\?\)/],
    [['data', 'vocab', '--records', out('r.json'), '--out', out('vocab'), '--templat', 'vicuna'], /unknown option --templat \(did you mean --template\?\)/],
    [['demo', '--workdir', out('demo'), '--pretrain-step', '2'], /unknown option --pretrain-step \(did you mean --pretrain-steps\?\)/],
    [['demo', '--workdir', out('demo'), '--seeds', '0', '--train-images', '0'], /--train-images must be an integer >= 1, got 0/],
    [['golden', '--dir', out('golden'), '--onl', 'clip_vit'], /unknown option --onl \(did you mean --only\?\)/],
    [['bench', 'step', '--stpes', '1'], /unknown option --stpes \(did you mean --steps\?\)/],
    [['bench', 'nothing'], /"nothing" is not one of kernels, step/],
    [['doctor', '--jsn'], /unknown option --jsn \(did you mean --json\?\)/],
    [['convert', out('model.pth'), '--out', out('model.safetensors'), '--overwite'], /unknown option --overwite \(did you mean --overwrite\?\)/],
    [['boxes', '--detector', out('owlv2'), '--images', out('images'), '--out', out('boxes.json'), '--treshold', '0.3'], /unknown option --treshold \(did you mean --threshold\?\)/],
    [['pretrian', '--config', cfg('pretrain')], /Did you mean pretrain\?/],
  ];

  it.each(cases)('%j exits 1 with a usage hint and writes nothing', async (...args) => {
    const [argv, re] = args as unknown as [string[], RegExp];
    const before = snapshot(tmp);
    const r = await runCli(argv);
    expect(r.code, r.err).toBe(1);
    expect(r.err).toMatch(re);
    expect(r.err).toMatch(/\[hint: 'mgllava [a-z ]*--help' lists the (options|commands)\]/);
    expect(r.err.trim().split('\n').length, r.err).toBe(1); // one line, no stack
    expect(r.out).toBe('');
    expect(snapshot(tmp)).toEqual(before);
  });

  it('every command is covered above', async () => {
    const list = (await runCli([])).out;
    const commands = [...list.matchAll(/^ {2}mgllava (\S+)/gm)].map((m) => m[1]!);
    expect(commands.length).toBeGreaterThan(8);
    const covered = new Set(cases.map(([a]) => a[0]));
    for (const c of commands) expect(covered, c).toContain(c);
  });
});

describe('the command line without errors', () => {
  it('`mgllava` alone prints the command list and exits 0', async () => {
    const r = await runCli([]);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/Commands:/);
    for (const c of ['pretrain', 'finetune', 'eval', 'chat', 'export', 'data']) expect(r.out).toContain(`mgllava ${c}`);
  });

  it('--version prints the package version', async () => {
    const version = (JSON.parse(readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { version: string }).version;
    const r = await runCli(['--version']);
    expect(r.code).toBe(0);
    expect(r.out.trim()).toBe(version);
  });
});
