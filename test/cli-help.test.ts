/**
 * The command table and help (issues 11 item 6, 17 item 6): every command's --help teaches with an example;
 * the table's command strings and descriptions match the modules; `mgllava`, `--help`, a command's `--help`
 * and a mistyped flag load neither tfjs nor sharp (what made `--help` take seconds).
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { COMMANDS } from '../src/cli/main.js';
import { runCli } from './cli-harness.js';

const REPO = path.resolve(import.meta.dirname, '..');
const tmp = mkdtempSync(path.join(tmpdir(), 'mgllava-help-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('command table', () => {
  it.each(COMMANDS.map((c) => [c.command, c] as const))('%s: the module has the same command string and description', async (_, entry) => {
    const m = await entry.load();
    expect(m.command).toBe(entry.command);
    if (m.describe !== undefined) expect(m.describe).toBe(entry.describe);
  });
});

describe('--help', () => {
  const names = [...COMMANDS.map((c) => c.command.split(' ')[0]!), 'data check', 'data show', 'data synth', 'data vocab'];
  it.each(names)('mgllava %s --help shows its options and at least one example', async (words) => {
    const argv = words.split(' ');
    const r = await runCli([...argv, '--help']);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/Options:/);
    expect(r.out).toMatch(/Examples:\n {2}mgllava /);
  });

  it('`mgllava --help` lists every command of the table with its description', async () => {
    const r = await runCli(['--help']);
    expect(r.code).toBe(0);
    for (const c of COMMANDS) expect(r.out).toContain(`mgllava ${c.command}`);
    expect(r.out).toMatch(/--backend {3}TensorFlow\.js backend/);
    expect((await runCli([])).out).toBe(r.out);
  });
});

describe('startup loads only what the command line needs', () => {
  // Runs the compiled CLI in a child and reports which heavy CommonJS packages it loaded.
  const probe = path.join(tmp, 'probe.mjs');
  writeFileSync(
    probe,
    `import { createRequire } from 'node:module';
const req = createRequire(${JSON.stringify(path.join(REPO, 'package.json'))});
const { main } = await import(${JSON.stringify(path.join(REPO, 'dist/cli/main.js'))});
const write = process.stdout.write.bind(process.stdout);
process.stdout.write = () => true;
process.stderr.write = () => true;
const log = console.log;
console.log = () => undefined;
const code = await main(process.argv.slice(2));
process.stdout.write = write;
console.log = log;
const heavy = Object.keys(req.cache).filter((k) => /node_modules\\/(@tensorflow|sharp)\\//.test(k)).map((k) => k.replace(/.*node_modules\\//, '').split('/').slice(0, 2).join('/'));
console.log(JSON.stringify({ code, heavy: [...new Set(heavy)] }));
`,
  );
  const run = (...argv: string[]) => {
    const r = spawnSync(process.execPath, [probe, ...argv], { encoding: 'utf8', cwd: tmp });
    expect(r.status, r.stderr).toBe(0);
    return JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { code: number; heavy: string[] };
  };

  it('--help, no command, --version, a command --help and a mistyped flag load neither tfjs nor sharp', () => {
    expect(run('--help')).toEqual({ code: 0, heavy: [] });
    expect(run()).toEqual({ code: 0, heavy: [] });
    expect(run('--version')).toEqual({ code: 0, heavy: [] });
    // Every command of the table, and a subcommand's help (data check: its handlers decode images).
    for (const c of [...COMMANDS.map((e) => [e.command.split(' ')[0]!]), ['data', 'check']]) {
      expect(run(...c, '--help'), c.join(' ')).toEqual({ code: 0, heavy: [] });
      expect(run(...c, 'x', '--no-such-flag'), c.join(' ')).toEqual({ code: 1, heavy: [] });
    }
  });

  it('a command that computes loads tfjs then (doctor)', () => {
    const r = run('doctor', '--backend', 'cpu');
    expect(r.code).toBe(0);
    expect(r.heavy).toContain('@tensorflow/tfjs-core');
  });
});
