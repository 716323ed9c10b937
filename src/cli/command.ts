/** Shared pieces of the CLI: the global options every command takes, and error reporting. */
import type { Argv } from 'yargs';
import { selectBackend, type BackendChoice } from '../backend/select.js';

export interface GlobalArgs {
  backend?: string;
}

export function withGlobalOptions<T>(y: Argv<T>): Argv<T & GlobalArgs> {
  return y.option('backend', {
    type: 'string',
    describe: "TensorFlow.js backend: tensorflow | wasm | cpu | auto (default: MGLLAVA_BACKEND or auto)",
  }) as Argv<T & GlobalArgs>;
}

/** Initialise the backend named by --backend / MGLLAVA_BACKEND (or the best that loads). */
export function backendFromArgs(args: GlobalArgs): Promise<BackendChoice> {
  return selectBackend(args.backend ?? null);
}

/** An error the CLI prints without a stack trace: the message says what to do. */
export class UserError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
    this.name = 'UserError';
  }
}

export function notBuiltYet(what: string, issue: number): never {
  throw new UserError(`'${what}' is not implemented yet (tracked in issue ${issue})`, 2);
}
