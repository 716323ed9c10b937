/**
 * Writing and reading the trainer's step checkpoints (layout: layout.ts).
 *
 * A save writes everything into `.tmp-step-NNNNNNNN-<pid>/` (state.json last), then renames it to
 * `step-NNNNNNNN/` and fsyncs the run dir: a checkpoint either exists complete or not at all, whatever
 * moment the process dies. Older checkpoints beyond `keep` are removed after the new one is in place.
 *
 * Test hook: MGLLAVA_TEST_KILL_AT=step:N (after step N, before its save) or save:N (in the middle of
 * step N's save: model.safetensors written, the rest not) makes the process SIGKILL itself there.
 */
import { existsSync } from 'node:fs';
import { mkdir, open, readdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type * as tf from '@tensorflow/tfjs';
import { SafetensorsReader } from '../io/safetensors.js';
import type { HostTensor } from '../io/safetensors.js';
import { writeWeightsFile } from '../io/weights-io.js';
import { listCheckpoints, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, stepDirName, type TrainState } from './layout.js';
import { fsError } from '../errors.js';

/** What a checkpoint needs of the optimizer: its step count and its moment tensors by file name (AdamW). */
export interface OptimizerSnapshot {
  readonly step: number;
  stateTensors(): Map<string, tf.Tensor>;
}

export const KILL_ENV = 'MGLLAVA_TEST_KILL_AT';

/** SIGKILL this process if MGLLAVA_TEST_KILL_AT names this point (kill-and-resume tests). */
export function killPoint(kind: 'step' | 'save', step: number): void {
  if (process.env[KILL_ENV] === `${kind}:${step}`) process.kill(process.pid, 'SIGKILL');
}

const TMP_PREFIX = '.tmp-step-';

/** Remove the temp dirs of interrupted saves. Returns their names. */
export async function removeIncompleteSaves(runDir: string): Promise<string[]> {
  if (!existsSync(runDir)) return [];
  const stale = (await readdir(runDir)).filter((n) => n.startsWith(TMP_PREFIX) || n.startsWith('.old-step-'));
  await Promise.all(stale.map((n) => rm(path.join(runDir, n), { recursive: true, force: true })));
  return stale;
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export interface SaveInput {
  runDir: string;
  state: TrainState;
  /** The weights of model.safetensors: the stage's trained weights (the warm-up: every encoder weight). */
  trainable: Map<string, tf.Tensor>;
  /** More weight files of the step (file name -> weights), written before state.json (the warm-up heads). */
  extraFiles?: Record<string, Map<string, tf.Tensor>>;
  optimizer: OptimizerSnapshot;
  /** Complete checkpoints to keep (save_total_limit). */
  keep: number;
}

/** Write step `state.step` atomically; returns its directory and the checkpoints removed by rotation. */
export async function saveCheckpoint(s: SaveInput): Promise<{ dir: string; removed: string[] }> {
  const name = stepDirName(s.state.step);
  const final = path.join(s.runDir, name);
  const tmp = path.join(s.runDir, `${TMP_PREFIX}${name.slice(5)}-${process.pid}`);
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  try {
    const meta = { step: String(s.state.step), stage: s.state.stage, config_hash: s.state.configHash };
    await writeWeightsFile(path.join(tmp, MODEL_FILE), s.trainable, meta);
    killPoint('save', s.state.step);
    await writeWeightsFile(path.join(tmp, OPTIMIZER_FILE), s.optimizer.stateTensors(), { ...meta, optimizer_step: String(s.optimizer.step) });
    for (const [file, weights] of Object.entries(s.extraFiles ?? {})) await writeWeightsFile(path.join(tmp, file), weights, meta);
    const fh = await open(path.join(tmp, STATE_FILE), 'w');
    try {
      await fh.writeFile(`${JSON.stringify(s.state, null, 2)}\n`);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fsyncDir(tmp);
    if (existsSync(final)) {
      // A checkpoint of this step from an abandoned branch of the run (resumed from an older step): replace it.
      const old = path.join(s.runDir, `.old-${name}-${process.pid}`);
      await rename(final, old);
      await rename(tmp, final);
      await rm(old, { recursive: true, force: true });
    } else {
      await rename(tmp, final);
    }
    await fsyncDir(s.runDir);
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw fsError(e, (e as NodeJS.ErrnoException).path ?? tmp, `saving checkpoint ${name}`); // ENOSPC: the previous checkpoint stays
  }
  const all = await listCheckpoints(s.runDir);
  const removed = all.slice(0, Math.max(0, all.length - s.keep)).map((c) => c.dir);
  for (const dir of removed) {
    // Out of the listing at once (a rename), then deleted: a reader resolving the newest step never sees a
    // half-deleted one (and withCheckpoint retries a step that vanished under it).
    const old = path.join(s.runDir, `.old-${path.basename(dir)}-${process.pid}`);
    await rename(dir, old);
    await rm(old, { recursive: true, force: true });
  }
  return { dir: final, removed };
}

/** AdamW moments of a checkpoint (AdamW.loadState checks their names and shapes). */
export async function readOptimizerState(stepDir: string): Promise<Map<string, HostTensor>> {
  const file = path.join(stepDir, OPTIMIZER_FILE);
  const reader = await SafetensorsReader.open(file);
  try {
    return await reader.readAll();
  } finally {
    await reader.close();
  }
}

/** Write text atomically enough for small run files (config.yaml, loss.svg): temp + rename. */
export async function writeTextFile(file: string, text: string): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}`;
  try {
    await writeFile(tmp, text);
    await rename(tmp, file);
  } catch (e) {
    await rm(tmp, { force: true }).catch(() => undefined);
    throw fsError(e, file, 'writing');
  }
}
