/**
 * Run a golden set: each piece of the manifest is built from its own config, loaded by name, run and
 * compared. The table of runners below is the whole dispatch: a piece without a runner reports
 * "not implemented".
 */
import * as tf from '@tensorflow/tfjs';
import type { CheckResult } from './compare.js';
import { loadPiece, readManifest, type GoldenPiece } from './manifest.js';
import { UsageError } from '../errors.js';

/** A runner checks one piece and returns one result per compared tensor. It must not leak tensors. */
export type PieceRunner = (piece: GoldenPiece) => Promise<CheckResult[]> | CheckResult[];

export interface PieceReport {
  ok: boolean;
  maxAbsErr: number;
  maxRelErr: number;
  reason?: string;
  checks: CheckResult[];
  seconds: number;
}

export interface GoldenReport {
  ok: boolean;
  dir: string;
  pieces: Record<string, PieceReport>;
}

/** Which runner handles which manifest piece (several pieces may share a runner, e.g. fuse_v0..3). */
export type RunnerTable = Record<string, PieceRunner>;

export async function runGolden(
  dir: string,
  runners: RunnerTable,
  only?: string[],
): Promise<GoldenReport> {
  const manifest = await readManifest(dir);
  const names = Object.keys(manifest.pieces).filter((n) => !only || only.includes(n));
  const unknown = (only ?? []).filter((n) => !(n in manifest.pieces));
  if (unknown.length) throw new UsageError(`--only names pieces not in ${dir}/manifest.json: ${unknown.join(', ')} (it has: ${Object.keys(manifest.pieces).join(', ')})`);
  const pieces: Record<string, PieceReport> = {};
  for (const name of names) {
    const t0 = performance.now();
    const runner = runners[name];
    if (!runner) {
      pieces[name] = { ok: false, maxAbsErr: NaN, maxRelErr: NaN, reason: 'not implemented', checks: [], seconds: 0 };
      continue;
    }
    try {
      const piece = await loadPiece(dir, manifest, name);
      const before = tf.memory().numTensors;
      const checks = await runner(piece);
      const leaked = tf.memory().numTensors - before;
      if (leaked !== 0) checks.push({ name: 'tensor leak', ok: false, maxAbsErr: leaked, maxRelErr: 0, note: `${leaked} tensors leaked` });
      if (checks.length === 0) throw new Error('runner compared nothing');
      const failed = checks.filter((c) => !c.ok);
      pieces[name] = {
        ok: failed.length === 0,
        maxAbsErr: Math.max(...checks.map((c) => c.maxAbsErr)),
        maxRelErr: Math.max(...checks.map((c) => c.maxRelErr)),
        ...(failed.length ? { reason: `failed: ${failed.map((c) => c.name + (c.note ? ` (${c.note})` : '')).join(', ')}` } : {}),
        checks,
        seconds: (performance.now() - t0) / 1000,
      };
    } catch (e) {
      pieces[name] = {
        ok: false,
        maxAbsErr: NaN,
        maxRelErr: NaN,
        reason: `error: ${(e as Error).message}`,
        checks: [],
        seconds: (performance.now() - t0) / 1000,
      };
    }
  }
  return { ok: Object.values(pieces).every((p) => p.ok), dir, pieces };
}

export function formatReport(r: GoldenReport): string {
  const rows = Object.entries(r.pieces).map(([n, p]) => [
    n,
    p.ok ? 'ok' : 'FAIL',
    fmt(p.maxAbsErr),
    fmt(p.maxRelErr),
    String(p.checks.length),
    p.reason ?? '',
  ]);
  const head = ['piece', 'status', 'maxAbsErr', 'maxRelErr', 'checks', 'reason'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  const passed = Object.values(r.pieces).filter((p) => p.ok).length;
  return [line(head), ...rows.map(line), '', `${passed} of ${rows.length} pieces ok (${r.dir})`, ''].join('\n');
}

function fmt(x: number): string {
  return Number.isFinite(x) ? x.toExponential(2) : String(x);
}
