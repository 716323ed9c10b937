/**
 * The words of the command line's own messages: argument errors in one line with a "did you mean", and the
 * command list of `mgllava` / `mgllava --help` (printed without yargs: its help renderer measures every
 * string's width with a large emoji regex, a quarter second of the half second a bare `--help` may take).
 */
import { GLOBAL_OPTIONS } from './command.js';

/** Edit distance with adjacent transpositions (optimal string alignment), for "did you mean" on a mistyped flag. */
function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i]![j] = Math.min(d[i]![j]!, d[i - 2]![j - 2]! + 1);
    }
  }
  return d[a.length]![b.length]!;
}

/** yargs' validation messages in our words: "--progress: 'sideways' is not one of auto, bar, lines, off". */
export function rephrase(msg: string): string {
  const invalid = [...msg.matchAll(/Argument: (\S+), Given: (.*?), Choices: (.*)/g)];
  if (invalid.length) return invalid.map((m) => `--${m[1]}: ${m[2]} is not one of ${m[3]!.replace(/"/g, '')}`).join('; ');
  const missing = /^Missing required arguments?: (.*)$/.exec(msg);
  if (missing) return `missing required option ${missing[1]!.split(', ').map((n) => `--${n}`).join(', ')}`;
  return msg.replace(/\s*\n\s*/g, ' ');
}

/** yargs' "Unknown arguments: max-step, maxStep" -> "unknown option --max-step (did you mean --max-steps?)". */
export function unknownOptions(msg: string, known: string[]): string | null {
  const m = /^Unknown arguments?: (.*)$/.exec(msg);
  if (!m) return null;
  const dashed = (s: string) => s.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
  const given = m[1]!.split(', ');
  // yargs also lists the camelCase twin of a dashed name: keep one spelling.
  const names = given.filter((n) => !(/[A-Z]/.test(n) && given.includes(dashed(n))));
  const flag = (n: string) => (n.length === 1 ? `-${n}` : `--${n}`);
  const parts = names.map((n) => {
    const best = known
      .map((k) => ({ k, d: editDistance(n, k) }))
      .filter((x) => x.d <= Math.max(1, Math.floor(n.length / 3)))
      .sort((a, b) => a.d - b.d)[0];
    return best ? `${flag(n)} (did you mean ${flag(best.k)}?)` : flag(n);
  });
  return `unknown option${parts.length > 1 ? 's' : ''} ${parts.join(', ')}`;
}

/** Word-wrap `text` to `width` columns, continuation lines indented by `indent` spaces. */
function wrap(text: string, width: number, indent: number): string {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(/\s+/)) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else {
      line = line ? `${line} ${word}` : word;
    }
  }
  lines.push(line);
  return lines.join(`\n${' '.repeat(indent)}`);
}

/** `mgllava --help`: usage, the command table, the global options (yargs' layout). */
export function commandList(commands: readonly { command: string; describe: string }[], columns: number): string {
  const rows = commands.map((c) => [`mgllava ${c.command}`, c.describe] as const);
  const options = [...GLOBAL_OPTIONS.map((o) => [`--${o.name}`, o.describe] as const), ['--version', 'Show version number'] as const, ['-h, --help', 'Show help'] as const];
  const table = (rs: readonly (readonly [string, string])[]) => {
    const left = Math.max(...rs.map(([a]) => a.length)) + 4;
    return rs.map(([a, b]) => `  ${a.padEnd(left - 2)}${wrap(b, Math.max(30, columns - left), left)}`).join('\n');
  };
  return [
    'mgllava <command> [options]',
    '',
    'Train and run MG-LLaVA on TensorFlow.js.',
    '',
    'Commands:',
    table(rows),
    '',
    'Options:',
    table(options),
    '',
    "Run 'mgllava <command> --help' for a command's options and examples.",
    '',
  ].join('\n');
}
