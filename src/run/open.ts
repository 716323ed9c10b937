/**
 * Starting a stage in its run directory: where it resumes (`resumePoint`), and opening the directory for
 * writing (`openRunDir`). Both run before any step, from `runStage` (src/train/stage.ts).
 *
 * This is the place for run-directory policy: which checkpoint a `--resume` takes (and what to fall back to
 * when it is unusable), and guarding the directory against a second writer.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { dumpConfig } from '../config/load.js';
import type { ExperimentConfig } from '../config/schema.js';
import { removeIncompleteSaves, writeTextFile } from './checkpoint.js';
import { CONFIG_FILE, LORA_FROM_FILE, listCheckpoints, METRICS_FILE, readState, resolveCheckpoint, RunDirError, type ResolvedCheckpoint, type TrainStage, type TrainState } from './layout.js';
import { MetricsFile } from './metrics.js';
import { checkRunDir, ensureDir } from './guard.js';
import { lockRunDir, type RunLock } from './lock.js';
import { checkpointProblem } from './verify.js';

/** Where notes and warnings go (the stage's progress display). */
export interface RunLog {
  note(message: string): void;
  warn(message: string): void;
}

export interface ResumeRequest {
  /** 'auto': the newest complete checkpoint of the run dir (a fresh start if none); else a step or run dir; null: fresh. */
  resume?: string | null;
  /** The --set overrides (named in the hash-mismatch message). */
  sets?: readonly string[];
}

/** A checkpoint a stage continues from, with its saved state. */
export interface ResumePoint {
  ck: ResolvedCheckpoint;
  state: TrainState;
}

/**
 * Where training starts: a checkpoint of the same config (hash) and stage, or null for a fresh start. Without
 * `resume`, a run dir that already holds checkpoints is refused (never overwritten by accident).
 */
export async function resumePoint(req: ResumeRequest, stage: TrainStage, runDir: string, hash: string, configFile: string, log: RunLog): Promise<ResumePoint | null> {
  let ck: ResolvedCheckpoint | null = null;
  if (req.resume === 'auto') {
    const all = await listCheckpoints(runDir);
    if (all.length === 0) log.note(`resume auto: no complete checkpoint in ${runDir}; starting from scratch`);
    // The newest usable checkpoint: a step whose weights are truncated or missing, or whose state.json is not a
    // consistent state, is skipped with a warning naming it (verify.ts).
    const unusable: string[] = [];
    for (const c of [...all].reverse()) {
      const problem = await checkpointProblem(c.dir);
      if (!problem) {
        ck = { runDir, stepDir: c.dir, step: c.step };
        break;
      }
      unusable.push(problem);
      log.warn(`resume auto: step ${c.step} is unusable (${problem}); falling back to an earlier checkpoint`);
    }
    if (!ck && unusable.length) {
      throw new RunDirError(`${runDir}: no usable checkpoint to resume from (${unusable.join('; ')}); remove the broken step dirs to start over`);
    }
  } else if (req.resume) {
    ck = await resolveCheckpoint(req.resume);
    const problem = await checkpointProblem(ck.stepDir);
    if (problem) throw new RunDirError(`cannot resume from ${ck.stepDir}: ${problem}`);
  } else {
    const all = await listCheckpoints(runDir);
    if (all.length) {
      throw new RunDirError(
        `${runDir} already holds checkpoints (newest: step ${all[all.length - 1]!.step}); continue it with --resume auto, ` +
          `or give the run another name (--set name=...) or remove the directory`,
      );
    }
  }
  if (!ck) return null;
  const state = await readState(ck.stepDir);
  if (state.configHash !== hash) {
    throw new RunDirError(
      `cannot resume from ${ck.stepDir}: it was written with config hash ${state.configHash.slice(0, 12)} ` +
        `(${path.join(ck.runDir, CONFIG_FILE)}), but ${configFile}${req.sets?.length ? ` with --set ${req.sets.join(' ')}` : ''} ` +
        `has hash ${hash.slice(0, 12)}; resume with the same config, or start a new run`,
    );
  }
  if (state.stage !== stage) throw new RunDirError(`cannot resume from ${ck.stepDir}: it is a ${state.stage} checkpoint`);
  const newer = (await listCheckpoints(runDir)).filter((c) => c.step > ck.step);
  if (newer.length) log.warn(`resuming from step ${ck.step}; the newer checkpoints (steps ${newer.map((c) => c.step).join(', ')}) will be replaced as the run passes them`);
  return { ck, state };
}

/**
 * Before a stage reads or writes its run directory: refuse one that is not this run's (guard.ts), create it (no
 * spinning on /proc), and lock it against a second writer (lock.ts). The caller releases the lock when done.
 */
export async function claimRunDir(runDir: string, req: ResumeRequest, hash: string, log: RunLog): Promise<RunLock> {
  await checkRunDir(runDir, { resuming: !!req.resume, hash });
  await ensureDir(runDir, 'the run directory (output_dir/name)');
  return lockRunDir(runDir, (m) => log.warn(m));
}

/** Create the run dir, drop incomplete saves, write config.yaml, and open metrics.jsonl cut back to the checkpoint. */
export async function openRunDir(runDir: string, config: ExperimentConfig, state: TrainState | null, log: RunLog): Promise<MetricsFile> {
  await ensureDir(runDir, 'the run directory (output_dir/name)');
  const stale = await removeIncompleteSaves(runDir);
  if (stale.length) log.note(`removed ${stale.length} incomplete save(s) of an interrupted run: ${stale.join(', ')}`);
  await writeTextFile(path.join(runDir, CONFIG_FILE), dumpConfig(config));
  // The adapter's config (already read and checked by the model build) travels with the run: see runConfigForOpen.
  const from = config.model.llm.lora?.from;
  if (from) await writeTextFile(path.join(runDir, LORA_FROM_FILE), await readFile(path.join(from, 'adapter_config.json'), 'utf8'));
  return new MetricsFile(path.join(runDir, METRICS_FILE), state?.metricsLines ?? 0);
}
