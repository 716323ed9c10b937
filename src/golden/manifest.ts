/**
 * Golden sets from the PyTorch reference: `manifest.json` + `<piece>.params.safetensors` +
 * `<piece>.io.safetensors` (+ JSON pieces). Any set in this format loads, whatever its shapes.
 */
import { readFile } from 'node:fs/promises';
import { DataError } from '../errors.js';
import { readSmallTextFile } from '../io/small-file.js';
import path from 'node:path';
import { readSafetensors, type HostTensor } from '../io/safetensors.js';
import type { Tolerance } from './compare.js';

export interface GoldenManifest {
  set?: string;
  seed?: number;
  tolerance_hint?: { forward?: Tolerance; grads?: Tolerance };
  pieces: Record<string, GoldenPieceEntry>;
}

export interface GoldenPieceEntry {
  description?: string;
  config?: Record<string, unknown>;
  params_file?: string;
  io_file?: string;
  json_file?: string;
  params?: Record<string, number[]>;
  io?: Record<string, { shape: number[]; dtype: string }>;
  loss?: string;
  notes?: string[];
}

export interface GoldenPiece {
  name: string;
  dir: string;
  entry: GoldenPieceEntry;
  config: Record<string, unknown>;
  /** Parameters under checkpoint names (empty when the piece has none). */
  params: Map<string, HostTensor>;
  /** input.*, output.*, intermediate.*, grad.*, grad_input.* */
  io: Map<string, HostTensor>;
  /** Parsed JSON for JSON pieces (boxes.json, conversation.json, schedule.json). */
  json: unknown;
  forward: Tolerance;
  grads: Tolerance;
}

export const DEFAULT_FORWARD: Tolerance = { atol: 1e-5, rtol: 1e-4 };
export const DEFAULT_GRADS: Tolerance = { atol: 1e-5, rtol: 1e-3 };

export async function readManifest(dir: string): Promise<GoldenManifest> {
  const file = path.join(dir, 'manifest.json');
  const text = await readSmallTextFile(file, 'the golden manifest'); // missing, a directory, a device: one line
  let m: GoldenManifest;
  try {
    m = JSON.parse(text) as GoldenManifest;
  } catch (e) {
    throw new DataError(`${file}: malformed JSON: ${(e as Error).message}`);
  }
  const pieces = (m as { pieces?: unknown } | null)?.pieces;
  if (typeof pieces !== 'object' || pieces === null || Array.isArray(pieces)) throw new DataError(`${file}: no "pieces" object`);
  // An empty set would "pass" having compared nothing.
  if (Object.keys(pieces).length === 0) throw new DataError(`${file}: "pieces" is empty: nothing to compare`);
  return m;
}

export async function loadPiece(dir: string, manifest: GoldenManifest, name: string): Promise<GoldenPiece> {
  const entry = manifest.pieces[name];
  if (!entry) throw new Error(`golden piece '${name}' is not in ${path.join(dir, 'manifest.json')}`);
  const params = entry.params_file ? await readSafetensors(path.join(dir, entry.params_file)) : new Map();
  const io = entry.io_file ? await readSafetensors(path.join(dir, entry.io_file)) : new Map();
  const json = entry.json_file ? JSON.parse(await readFile(path.join(dir, entry.json_file), 'utf8')) : null;
  return {
    name,
    dir,
    entry,
    config: entry.config ?? {},
    params,
    io,
    json,
    forward: manifest.tolerance_hint?.forward ?? DEFAULT_FORWARD,
    grads: manifest.tolerance_hint?.grads ?? DEFAULT_GRADS,
  };
}

/** The io tensor `key`, or an error naming the piece and key. */
export function ioTensor(piece: GoldenPiece, key: string): HostTensor {
  const t = piece.io.get(key);
  if (!t) throw new Error(`golden piece '${piece.name}' has no tensor '${key}'`);
  return t;
}

export function paramTensor(piece: GoldenPiece, key: string): HostTensor {
  const t = piece.params.get(key);
  if (!t) throw new Error(`golden piece '${piece.name}' has no parameter '${key}'`);
  return t;
}
