/** The CLI run in-process, as a user would see it: exit code, stdout and stderr. */
import { vi } from 'vitest';

export interface CliRun {
  code: number;
  out: string;
  err: string;
}

/**
 * `mgllava ...argv` through `main()`, capturing what it writes (yargs prints --help and --version with
 * console.log, so that goes to `out` too). process.exitCode, which handlers set to report failure, is cleared
 * before and restored after, so one run's failure never leaks into the next run's code.
 */
export async function runCli(argv: string[]): Promise<CliRun> {
  const out: string[] = [];
  const err: string[] = [];
  const o = vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => (out.push(String(s)), true));
  const e = vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => (err.push(String(s)), true));
  const l = vi.spyOn(console, 'log').mockImplementation((s) => void out.push(`${String(s)}\n`));
  const before = process.exitCode;
  process.exitCode = undefined;
  try {
    // Loaded on first use: the CLI pulls in yargs; library-level tests importing this file do without it.
    const { main } = await import('../src/cli/main.js');
    return { code: await main(argv), out: out.join(''), err: err.join('') };
  } finally {
    o.mockRestore();
    e.mockRestore();
    l.mockRestore();
    process.exitCode = before;
  }
}

/** A failed CLI run must say so in one line (no stack trace) with a non-zero exit; returns that line. */
export function expectOneLineError(r: CliRun): string {
  if (r.code === 0) throw new Error(`expected a failure, got exit 0 (stdout: ${r.out})`);
  const lines = r.err.trimEnd().split('\n');
  if (lines.length !== 1 || !lines[0]!.startsWith('mgllava: ') || /internal error|\n\s+at /.test(r.err)) {
    throw new Error(`expected one error line, got:\n${r.err}`);
  }
  return lines[0]!;
}
