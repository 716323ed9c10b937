/**
 * Is a checkpoint usable? (issue 12 (c)): its state.json is a trainer state consistent with its directory, and
 * its weight files are whole safetensors files. `--resume auto` falls back from an unusable newest step to the
 * newest usable one (open.ts); an explicitly named checkpoint that is unusable is refused.
 *
 * state.json is validated field by field: an edited or corrupted value (a step beyond the run, a cursor past the
 * data, a hash that is not one) is refused with the field named, never trusted into "nothing to train" or a
 * crash deep in the loader.
 */
import path from 'node:path';
import { SafetensorsReader } from '../io/safetensors.js';
import { MgllavaError } from '../errors.js';
import { MODEL_FILE, OPTIMIZER_FILE, readState, RunDirError, STATE_FILE, type TrainState } from './layout.js';

const STAGES = ['warmup', 'pretrain', 'finetune'];

const isInt = (v: unknown, min = 0): v is number => typeof v === 'number' && Number.isInteger(v) && v >= min;
const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** The problems of a parsed state.json (empty: a valid state). `dirStep`: the step its directory name says. */
export function stateProblems(s: unknown, dirStep?: number): string[] {
  if (!isObj(s)) return ['not a JSON object'];
  const p: string[] = [];
  if (s.format !== 1) p.push(`format: ${JSON.stringify(s.format)} is not 1`);
  // (step 0 / totalSteps 0: a run imported from a release, `mgllava import --kind mgllava`)
  if (!isInt(s.step)) p.push(`step: ${JSON.stringify(s.step)} is not a non-negative integer`);
  if (!isInt(s.totalSteps)) p.push(`totalSteps: ${JSON.stringify(s.totalSteps)} is not a non-negative integer`);
  if (isInt(s.step) && isInt(s.totalSteps) && s.step > s.totalSteps) p.push(`step ${s.step} is beyond the run's totalSteps ${s.totalSteps}`);
  if (dirStep !== undefined && isInt(s.step) && s.step !== dirStep) p.push(`step ${s.step} but the directory is step ${dirStep}`);
  if (typeof s.stage !== 'string' || !STAGES.includes(s.stage)) p.push(`stage: ${JSON.stringify(s.stage)} is not one of ${STAGES.join(', ')}`);
  if (typeof s.configHash !== 'string' || !/^[0-9a-f]{64}$/.test(s.configHash)) p.push('configHash: not a sha256 hex string');
  if (!isObj(s.seeds) || !isInt(s.seeds.init) || !isInt(s.seeds.data)) p.push('seeds: expected {init, data} non-negative integers');
  const l = s.loader;
  if (!isObj(l) || !isInt(l.epoch) || !isInt(l.position) || !isInt(l.size) || (l.position as number) > (l.size as number)) {
    p.push(`loader: ${JSON.stringify(l)} is not a data cursor {epoch, position <= size, size}`);
  }
  if (!isInt(s.optimizerStep) || (isInt(s.step) && s.optimizerStep > s.step)) p.push(`optimizerStep: ${JSON.stringify(s.optimizerStep)} is not an integer in [0, step]`);
  if (!isInt(s.badStreak) || (isInt(s.step) && s.badStreak > s.step)) p.push(`badStreak: ${JSON.stringify(s.badStreak)} is not an integer in [0, step]`);
  if (!isInt(s.metricsLines)) p.push(`metricsLines: ${JSON.stringify(s.metricsLines)} is not a non-negative integer`);
  if (typeof s.elapsedSeconds !== 'number' || !(s.elapsedSeconds >= 0) || !Number.isFinite(s.elapsedSeconds)) p.push('elapsedSeconds: not a finite number >= 0');
  for (const k of ['initFrom', 'encodersFrom'] as const) {
    const v = s[k];
    if (v === undefined && k === 'encodersFrom') continue;
    if (v !== null && !(isObj(v) && typeof v.runDir === 'string' && isInt(v.step))) p.push(`${k}: expected null or {runDir, step}`);
  }
  return p;
}

/** A validated TrainState, or a RunDirError naming the file and the fields. */
export function validateState(s: unknown, file: string, dirStep?: number): TrainState {
  const p = stateProblems(s, dirStep);
  if (p.length) {
    throw new RunDirError(`${file}: not a consistent trainer state (${p.join('; ')}): the file was edited or is corrupt; resume from another step (--resume PATH/step-NNNNNNNN)`);
  }
  return s as TrainState;
}

/** Why a step directory cannot be resumed from (null: usable): state.json, model and optimizer files checked. */
export async function checkpointProblem(stepDir: string): Promise<string | null> {
  try {
    await readState(stepDir);
  } catch (e) {
    return e instanceof MgllavaError ? e.message : `${path.join(stepDir, STATE_FILE)}: ${(e as Error).message}`;
  }
  for (const f of [MODEL_FILE, OPTIMIZER_FILE]) {
    const file = path.join(stepDir, f);
    try {
      const r = await SafetensorsReader.open(file); // checks the header and that every tensor lies inside the file
      await r.close();
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? ((e as Error).cause as NodeJS.ErrnoException | undefined)?.code; // fsError keeps it as the cause
      return code === 'ENOENT' ? `${file} is missing` : `${file} is unreadable: ${(e as Error).message.replace(/^.*?: /, '')}`;
    }
  }
  return null;
}
