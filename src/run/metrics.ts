/**
 * metrics.jsonl: one line per logged step. A line summarises the steps since the previous line (loss and
 * grad norm are means over the finite steps of that window; lr is the last step's). Lines are appended
 * synchronously so a killed run loses nothing it logged; a resumed run first cuts the file back to the
 * line count its checkpoint recorded, so the file never holds steps twice.
 *
 * The warm-up stage adds `parts` (its heads' losses) to its lines, counts images in `tokens_per_s`, and
 * ends with one evaluation line `{step, eval: {...}}` (no loss) holding its per-head accuracies.
 *
 * Besides the training lines: `{step, heldout: {...}}` after a held-out evaluation (train.eval_steps), and
 * `{step, warning: {...}}` when a divergence warning fired (divergence.ts). The `loss` of a training line is
 * the MEAN over the steps of its window; the console's progress shows the last step's loss.
 */
import { appendFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { RunDirError } from './layout.js';
import { fsError } from '../errors.js';

export interface MetricsLine {
  step: number;
  /** Mean loss of the window's applied steps; null if every step of the window was skipped. */
  loss: number | null;
  lr: number;
  grad_norm: number | null;
  /** LLM positions per second of compute (data wait excluded). */
  tokens_per_s: number;
  /** Mean time per step spent waiting for data. */
  data_wait_ms: number;
  /** Live tensors after the step (flat when nothing leaks). */
  num_tensors: number;
  /** Training wall time so far (continues across resumes). */
  elapsed_s: number;
  /** Steps in this line's window, and how many of them were skipped as non-finite. */
  steps: number;
  skipped: number;
  /** Named loss parts (warm-up heads): means over the window's applied steps. */
  parts?: Record<string, number>;
  /** Measured peak backend memory since the run (this invocation) started, bytes (src/backend/peak-memory.ts). */
  peak_memory_bytes?: number;
}

/** A final evaluation (warm-up accuracies), appended after the training lines. */
export interface MetricsEvalLine {
  step: number;
  eval: Record<string, unknown>;
}

/** A held-out evaluation during training (train.eval_records every train.eval_steps). */
export interface MetricsHeldOutLine {
  step: number;
  heldout: {
    /** Token-weighted mean cross-entropy over the held-out records' supervised tokens. */
    loss: number;
    tokens: number;
    /** Normalised exact-match accuracy of the greedy answers (infer/eval.ts rules), and its counts. */
    accuracy: number;
    correct: number;
    questions: number;
    byCategory?: Record<string, number>;
  };
}

/** A divergence warning (a loss spike or a gradient-norm explosion), as printed. */
export interface MetricsWarningLine {
  step: number;
  warning: { kind: 'loss_spike' | 'grad_norm'; value: number; median: number; ratio: number; lr: number; records: string[] };
}

export type MetricsRecord = MetricsLine | MetricsEvalLine | MetricsHeldOutLine | MetricsWarningLine;

export interface StepRecord {
  step: number;
  loss: number;
  gradNorm: number;
  lr: number;
  applied: boolean;
  positions: number;
  computeMs: number;
  waitMs: number;
  parts?: Record<string, number>;
}

/** Steps since the last logged line. */
export class MetricsWindow {
  private steps: StepRecord[] = [];

  add(r: StepRecord): void {
    this.steps.push(r);
  }

  get size(): number {
    return this.steps.length;
  }

  /** The line for the window so far (and a new window). */
  flush(numTensors: number, elapsedS: number, peakMemoryBytes?: number): MetricsLine {
    const s = this.steps;
    if (s.length === 0) throw new Error('MetricsWindow.flush: empty window');
    this.steps = [];
    const ok = s.filter((r) => r.applied);
    const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null);
    const computeMs = s.reduce((a, r) => a + r.computeMs, 0);
    const parts: Record<string, number> = {};
    for (const name of new Set(ok.flatMap((r) => Object.keys(r.parts ?? {})))) parts[name] = mean(ok.map((r) => r.parts?.[name] ?? NaN))!;
    return {
      step: s[s.length - 1]!.step,
      loss: mean(ok.map((r) => r.loss)),
      lr: s[s.length - 1]!.lr,
      grad_norm: mean(ok.map((r) => r.gradNorm)),
      tokens_per_s: computeMs > 0 ? (s.reduce((a, r) => a + r.positions, 0) / computeMs) * 1000 : 0,
      data_wait_ms: s.reduce((a, r) => a + r.waitMs, 0) / s.length,
      num_tensors: numTensors,
      elapsed_s: elapsedS,
      steps: s.length,
      skipped: s.length - ok.length,
      ...(Object.keys(parts).length ? { parts } : {}),
      ...(peakMemoryBytes !== undefined ? { peak_memory_bytes: peakMemoryBytes } : {}),
    };
  }
}

export class MetricsFile {
  private count: number;

  /** Open `file` keeping its first `keepLines` lines (0: start empty). */
  constructor(
    readonly file: string,
    keepLines: number,
  ) {
    const lines = existsSync(file) ? readLines(file) : [];
    if (lines.length < keepLines) throw new RunDirError(`${file} has ${lines.length} lines, the checkpoint expects at least ${keepLines}`);
    try {
      writeFileSync(file, lines.slice(0, keepLines).map((l) => `${l}\n`).join(''));
    } catch (e) {
      throw fsError(e, file, 'writing');
    }
    this.count = keepLines;
  }

  /** Lines written (what a checkpoint records). */
  get lines(): number {
    return this.count;
  }

  append(line: MetricsRecord): void {
    try {
      appendFileSync(this.file, `${JSON.stringify(line)}\n`);
    } catch (e) {
      throw fsError(e, this.file, 'writing'); // ENOSPC: one line naming the file
    }
    this.count++;
  }
}

function readLines(file: string): string[] {
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '');
}

/** Every line of metrics.jsonl, in order. */
export function readMetricsRecords(file: string): MetricsRecord[] {
  return readLines(file).map((l, i) => {
    try {
      return JSON.parse(l) as MetricsRecord;
    } catch (e) {
      throw new RunDirError(`${file}:${i + 1}: not a metrics line: ${(e as Error).message}`);
    }
  });
}

/** The training lines of metrics.jsonl (those with a `loss`), in order. */
export function readMetrics(file: string): MetricsLine[] {
  return readMetricsRecords(file).filter((r): r is MetricsLine => 'loss' in r);
}
