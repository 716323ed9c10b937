// Issue 17.2 / 17.7: the README's "Your own data" section, run as written. Its record and box examples must be
// clean for `data check`; its configs and commands, on a generated folder of photos, must train a model whose
// answers follow the image, with the losses and accuracies the section states (approximately).
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, describe, expect, it } from 'vitest';
import { checkDataset } from '../src/data/check.js';
import { getTemplate } from '../src/data/templates.js';
import { loadTokenizer } from '../src/data/tokenizer.js';
import { makeOwnDataFolder, OWN_COLORS } from './own-data-fixture.js';
import { runCli } from './cli-harness.js';

const REPO = path.resolve(import.meta.dirname, '..');
const README = readFileSync(path.join(REPO, 'README.md'), 'utf8');
const root = mkdtempSync(path.join(tmpdir(), 'mgllava-own-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** The fenced block right after `<!-- own-data KEY -->`. */
function block(key: string): string {
  const at = README.indexOf(`<!-- own-data ${key} -->`);
  expect(at, `README marker <!-- own-data ${key} -->`).toBeGreaterThanOrEqual(0);
  const m = /```[a-z]*\n([\s\S]*?)```/.exec(README.slice(at));
  expect(m).not.toBeNull();
  return m![1]!;
}

/** Shell words: spaces separate, double or single quotes group. */
function words(line: string): string[] {
  const out: string[] = [];
  const re = /"([^"]*)"|'([^']*)'|(\S+)/g;
  for (let m = re.exec(line); m; m = re.exec(line)) out.push(m[1] ?? m[2] ?? m[3]!);
  return out;
}

describe('README: Your own data', () => {
  it('the record and box examples are what data check accepts without a warning', async () => {
    const dir = path.join(root, 'examples');
    mkdirSync(path.join(dir, 'images'), { recursive: true });
    await sharp({ create: { width: 160, height: 120, channels: 3, background: { r: 200, g: 200, b: 190 } } }).jpeg().toFile(path.join(dir, 'images', 'img-000.jpg'));
    writeFileSync(path.join(dir, 'train.json'), block('example=records'));
    writeFileSync(path.join(dir, 'boxes.json'), block('example=boxes'));
    const text = { template: getTemplate('vicuna'), tokenizer: await loadTokenizer({ type: 'byte' }), maxLength: 256 };
    const r = await checkDataset({ records: path.join(dir, 'train.json'), boxes: path.join(dir, 'boxes.json'), images: path.join(dir, 'images'), text });
    expect(r.bad).toEqual([]);
    expect(r.warnings).toEqual([]);
    expect(r.valid.map((v) => v.record.id)).toEqual(['img-000-color', 'img-000-shape']);
  });

  it('the recipe runs as written on a folder of photos and learns answers that follow the image', async () => {
    const work = path.join(root, 'work');
    mkdirSync(work);
    symlinkSync(path.join(REPO, 'configs'), path.join(work, 'configs'));
    await makeOwnDataFolder(path.join(work, 'my-data'));
    for (const f of ['my-data/pretrain.yaml', 'my-data/finetune.yaml']) writeFileSync(path.join(work, f), block(`file=${f}`));
    const commands = block('commands')
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith('#'));
    expect(commands.length).toBeGreaterThanOrEqual(7);
    const cwd = process.cwd();
    process.chdir(work);
    const results: Record<string, { code: number; out: string; err: string }> = {};
    try {
      for (const line of commands) {
        const argv = words(line);
        expect(argv[0]).toBe('mgllava');
        const r = await runCli(argv.slice(1));
        expect(r.code, `${line}\n${r.err}`).toBe(0);
        results[`${argv[1]}${argv[1] === 'data' ? ` ${argv[2]}` : ''}`] = r;
      }
    } finally {
      process.chdir(cwd);
    }
    // the numbers the section states
    expect(results['data vocab']!.out).toMatch(/20 ids from 90 records: set model\.llm\.vocab_size to at least 20/);
    expect(results['data check']!.out).toMatch(/72 records, 72 good, 0 problem\(s\)\n$/);
    expect(existsSync(path.join(work, 'my-data/img-000-view.png'))).toBe(true);
    const metrics = (run: string) =>
      readFileSync(path.join(work, 'checkpoints', run, 'metrics.jsonl'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Record<string, number>);
    const pre = metrics('my-pretrain').filter((m) => m.loss !== undefined && m.step !== undefined);
    expect(pre[0]!.loss).toBeGreaterThan(2.7);
    expect(pre.at(-1)!.loss).toBeGreaterThan(2.2); // the frozen, random LLM learns little
    const ft = metrics('my-finetune').filter((m) => typeof m.loss === 'number' && m.lr !== undefined);
    expect(ft[0]!.loss).toBeGreaterThan(1.5);
    expect(ft.at(-1)!.loss).toBeLessThan(0.2);
    const heldOut = results.finetune!.out + results.finetune!.err;
    const acc = [...heldOut.matchAll(/held-out at step (\d+): .*accuracy ([\d.]+) %/g)].map((m) => [Number(m[1]), Number(m[2])]);
    expect(acc.map((a) => a[0])).toEqual([50, 100, 150]);
    expect(acc.at(-1)![1]).toBeGreaterThanOrEqual(80);
    // eval: answers follow the image (both categories well above the 33 % of a constant answer)
    const evalOut = results.eval!.out;
    expect(evalOut).toMatch(/color\s+\d+\.\d% \(\d+\/9\)/);
    const byCat = Object.fromEntries([...evalOut.matchAll(/(color|shape)\s+([\d.]+)%/g)].map((m) => [m[1], Number(m[2])]));
    expect(byCat.color).toBeGreaterThanOrEqual(66);
    expect(byCat.shape).toBeGreaterThan(34);
    // chat answers with a colour word
    expect(Object.keys(OWN_COLORS)).toContain(results.chat!.out.trim());
  });
});
