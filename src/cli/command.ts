/** Shared pieces of the CLI: the global options every command takes, and error reporting. */
import type { Argv } from 'yargs';
import { selectBackend, type BackendChoice } from '../backend/select.js';
import { UsageError } from '../errors.js';

export interface GlobalArgs {
  backend?: string;
}

export function withGlobalOptions<T>(y: Argv<T>): Argv<T & GlobalArgs> {
  return y.option('backend', {
    type: 'string',
    describe: "TensorFlow.js backend: tensorflow | webgpu | wasm | cpu | auto (default: MGLLAVA_BACKEND or auto)",
  }) as Argv<T & GlobalArgs>;
}

/** Initialise the backend named by --backend / MGLLAVA_BACKEND (or the best that loads). */
export function backendFromArgs(args: GlobalArgs): Promise<BackendChoice> {
  return selectBackend(args.backend ?? null);
}

/** A bad command line or argument (exit 1). The older name of UsageError, kept for the commands that use it. */
export class UserError extends UsageError {
  constructor(message: string) {
    super(message);
    this.name = 'UserError';
  }
}
