/**
 * Shared pieces of the CLI: the global options every command takes, the backend, input files checked first.
 * Light on purpose (no tfjs): every command module imports it, and `--help` must not pay for tfjs.
 */
import { access } from 'node:fs/promises';
import type { Argv } from 'yargs';
import type { BackendChoice } from '../backend/select.js';
import { DataError } from '../errors.js';

export interface GlobalArgs {
  backend?: string;
}

/** The options every command takes (also listed by `mgllava --help`, usage.ts). */
export const GLOBAL_OPTIONS = [{ name: 'backend', describe: 'TensorFlow.js backend: tensorflow | webgpu | wasm | cpu | auto (default: MGLLAVA_BACKEND or auto)' }] as const;

export function withGlobalOptions<T>(y: Argv<T>): Argv<T & GlobalArgs> {
  let out: Argv<T> = y;
  for (const o of GLOBAL_OPTIONS) out = out.option(o.name, { type: 'string', describe: o.describe });
  return out as Argv<T & GlobalArgs>;
}

/** Initialise the backend named by --backend / MGLLAVA_BACKEND (or the best that loads); loads tfjs. */
export async function backendFromArgs(args: GlobalArgs): Promise<BackendChoice> {
  const { selectBackend } = await import('../backend/select.js');
  return selectBackend(args.backend ?? null);
}

/** A file named on the command line must exist before any work: "<what> not found: <file>" (exit 1). */
export async function requireFile(file: string, what: string): Promise<void> {
  try {
    await access(file);
  } catch {
    // A named input that is not there is a data problem (exit 4), as fsError reports every other missing file.
    throw new DataError(`${what} not found: ${file}`);
  }
}
