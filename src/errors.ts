/**
 * The one user-facing error type. Every failure a user can cause or fix (a bad flag, config, record, file,
 * checkpoint, a full disk, a locked run directory) is an `MgllavaError`: `cli/main.ts` prints it as one line,
 * `mgllava: <message> [hint: ...]`, and exits with its category's code. Anything else reaching the CLI is a bug and
 * is printed with its stack and a line saying so.
 *
 * The message names the thing (file, record, key) and the reason: "records.json: record 'a12': image not found".
 * A type of one's own (to catch, or to carry fields) extends the category's class where there is one
 * (`UsageError`, `DataError`, `WeightsError`, `ResourceError`), so that one `instanceof` finds the whole category.
 */

import { constants as osConstants } from 'node:os';

/** Exit codes, one per category, so scripts can tell a bad flag from a full disk. 70 (EX_SOFTWARE) = a bug. */
export const EXIT = {
  usage: 1,
  config: 3,
  data: 4,
  weights: 5,
  run: 6,
  resource: 7,
  backend: 8,
  training: 9,
  /** Stopped by Ctrl-C (SIGINT) after saving a checkpoint; SIGTERM exits 143 (128 + the signal's number). */
  interrupted: 130,
  bug: 70,
} as const;

export type ErrorCategory = Exclude<keyof typeof EXIT, 'bug'>;

export interface ErrorOptions {
  /** What to do about it, printed after the message. */
  hint?: string;
  /** The underlying error, kept for --debug output (never printed by default). */
  cause?: unknown;
}

export class MgllavaError extends Error {
  readonly hint: string | undefined;

  constructor(
    message: string,
    readonly category: ErrorCategory = 'usage',
    options: ErrorOptions = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'MgllavaError';
    this.hint = options.hint;
  }

  get exitCode(): number {
    return EXIT[this.category];
  }

  /** The single line the CLI prints. (Not named `line`: JsonSyntaxError has a `line` field.) */
  formatLine(): string {
    const msg = this.message.replace(/\s+$/, '');
    return this.hint ? `mgllava: ${msg} [hint: ${this.hint}]` : `mgllava: ${msg}`;
  }
}

/** A bad command line: unknown flag, missing option, bad value. */
export class UsageError extends MgllavaError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, 'usage', options);
    this.name = 'UsageError';
  }
}

/** Bad data: records, boxes, images, annotations, tokenizers. */
export class DataError extends MgllavaError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, 'data', options);
    this.name = 'DataError';
  }
}

/** A weight or checkpoint file that cannot be used: truncated, corrupt, wrong keys, non-finite values. */
export class WeightsError extends MgllavaError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, 'weights', options);
    this.name = 'WeightsError';
  }
}

/** Out of a resource: disk space, memory ceiling, file descriptors, a pixel budget. */
export class ResourceError extends MgllavaError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, 'resource', options);
    this.name = 'ResourceError';
  }
}

/** Node file-system error codes: what they mean, their category, a hint. */
const FS_ERRORS: Record<string, [string, ErrorCategory, string?]> = {
  ENOENT: ['no such file or directory', 'data'],
  ENOTDIR: ['a part of the path is not a directory', 'data'],
  EISDIR: ['is a directory, a file was expected', 'data'],
  EACCES: ['permission denied', 'resource'],
  EPERM: ['operation not permitted', 'resource'],
  EROFS: ['read-only file system', 'resource'],
  ENOSPC: ['no space left on device', 'resource', 'free disk space (or point the output elsewhere) and run again'],
  EDQUOT: ['disk quota exceeded', 'resource'],
  EMFILE: ['too many open files', 'resource', 'raise the open-file limit (ulimit -n)'],
  ELOOP: ['too many symbolic links (a loop?)', 'data'],
  ENAMETOOLONG: ['file name too long', 'data'],
  EEXIST: ['already exists', 'run'],
  ENOTEMPTY: ['directory not empty', 'run'],
};

/**
 * Wrap a Node file-system error (ENOENT, ENOSPC, EACCES, EISDIR, ENOTDIR, ...) as a one-line MgllavaError naming
 * the file and what was being done. Other errors are returned unchanged.
 */
export function fsError(e: unknown, file: string, doing: string): unknown {
  const code = (e as NodeJS.ErrnoException | null)?.code;
  if (typeof code !== 'string') return e;
  const w = FS_ERRORS[code];
  if (!w) return new ResourceError(`${file}: ${doing} failed: ${code}`, { cause: e });
  const [reason, category, hint] = w;
  const message = `${file}: ${doing}: ${reason}`;
  if (category === 'data') return new DataError(message, { hint, cause: e });
  if (category === 'resource') return new ResourceError(message, { hint, cause: e });
  return new MgllavaError(message, category, { hint, cause: e });
}

/**
 * A training stage stopped by a signal (Ctrl-C, `kill`, a scheduler's preemption) after it saved a checkpoint to
 * resume from. Not a success: a script running `pretrain && finetune` must not go on. Exit code 128 + the
 * signal's number, as a shell reports a process killed by it (130 for SIGINT, 143 for SIGTERM).
 */
export class InterruptedError extends MgllavaError {
  constructor(
    message: string,
    readonly signal: NodeJS.Signals,
    options?: ErrorOptions,
  ) {
    super(message, 'interrupted', options);
    this.name = 'InterruptedError';
  }

  override get exitCode(): number {
    return 128 + (osConstants.signals[this.signal] ?? 2);
  }
}

/** Node's syscall names in the words of a message ("/x/y.png: opening: no such file or directory"). */
const SYSCALL_WORDS: Record<string, string> = {
  open: 'opening',
  read: 'reading',
  write: 'writing',
  mkdir: 'creating the directory',
  scandir: 'listing the directory',
  rename: 'renaming',
  unlink: 'removing',
  rmdir: 'removing the directory',
  stat: 'reading the file status',
  lstat: 'reading the file status',
  copyfile: 'copying',
  symlink: 'linking',
};

/**
 * The error a CLI run ends with, as (lines to print, exit code). Non-MgllavaErrors are bugs, except file-system
 * errors (ENOENT, ENOSPC, EROFS, ...), which are reported as fsError would.
 */
export function reportError(e: unknown, debug = false): { text: string; exitCode: number } {
  if (e instanceof MgllavaError) {
    const extra = debug && e.stack ? `\n${e.stack}` : '';
    return { text: `${e.formatLine()}${extra}\n`, exitCode: e.exitCode };
  }
  // A file-system error that no caller wrapped (a write into a full or read-only disk, a path that vanished, a
  // pseudo file system) is still the user's to fix: one line naming the file and the operation, not a stack.
  const sys = e as NodeJS.ErrnoException | null;
  if (sys instanceof Error && typeof sys.code === 'string' && typeof sys.path === 'string' && typeof sys.syscall === 'string') {
    const wrapped = fsError(e, sys.path, SYSCALL_WORDS[sys.syscall] ?? sys.syscall);
    if (wrapped instanceof MgllavaError) return reportError(wrapped, debug);
  }
  const stack = e instanceof Error ? (e.stack ?? `${e.name}: ${e.message}`) : String(e);
  return {
    text: `mgllava: internal error (this is a bug; please report it with the command you ran):\n${stack}\n`,
    exitCode: EXIT.bug,
  };
}
