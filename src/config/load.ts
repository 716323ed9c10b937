/**
 * YAML experiment files -> one validated `ExperimentConfig`.
 *
 *   file (+ `extends:` chain, deep-merged, child wins) -> `--set a.b=c` overrides -> schema
 *
 * Errors name the file and the YAML path; an unknown key gets a "did you mean" suggestion.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import yaml from 'js-yaml';
import { z } from 'zod';
import { experimentSchema, type ExperimentConfig } from './schema.js';

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

type Tree = Record<string, unknown>;

function isTree(v: unknown): v is Tree {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function readYaml(file: string): Tree {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(`cannot read config ${file}: ${(e as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = yaml.load(text, { filename: file });
  } catch (e) {
    throw new ConfigError(`${file}: invalid YAML: ${(e as Error).message}`);
  }
  if (!isTree(doc)) throw new ConfigError(`${file}: the top level must be a mapping of keys to values`);
  return doc;
}

/** Deep merge: mappings merge key by key; anything else (lists, scalars, null) replaces. */
export function deepMerge(base: Tree, over: Tree): Tree {
  const out: Tree = { ...base };
  for (const [k, v] of Object.entries(over)) {
    out[k] = isTree(v) && isTree(out[k]) ? deepMerge(out[k] as Tree, v) : v;
  }
  return out;
}

/** The raw (unvalidated) tree of `file` with its `extends:` chain applied. */
export function readConfigTree(file: string, seen: string[] = []): Tree {
  const abs = path.resolve(file);
  if (seen.includes(abs)) throw new ConfigError(`config extends cycle: ${[...seen, abs].join(' -> ')}`);
  const tree = readYaml(abs);
  const { extends: parent, ...own } = tree;
  if (parent === undefined) return own;
  if (typeof parent !== 'string') throw new ConfigError(`${abs}: 'extends' must be a path to a base YAML file`);
  const base = readConfigTree(path.resolve(path.dirname(abs), parent), [...seen, abs]);
  return deepMerge(base, own);
}

/** Apply `a.b.c=value` overrides; the value is parsed as YAML (numbers, booleans, null, lists). */
export function applySets(tree: Tree, sets: readonly string[]): Tree {
  let out = tree;
  for (const s of sets) {
    const eq = s.indexOf('=');
    if (eq <= 0) throw new ConfigError(`--set '${s}': expected key.path=value`);
    const keys = s.slice(0, eq).trim().split('.');
    if (keys.some((k) => k === '')) throw new ConfigError(`--set '${s}': empty key in the path`);
    let value: unknown;
    try {
      value = yaml.load(s.slice(eq + 1));
    } catch (e) {
      throw new ConfigError(`--set '${s}': value is not valid YAML: ${(e as Error).message}`);
    }
    const patch: Tree = {};
    let cur = patch;
    keys.forEach((k, i) => {
      if (i === keys.length - 1) cur[k] = value === undefined ? null : value;
      else cur = cur[k] = {} as Tree;
    });
    out = deepMerge(out, patch);
  }
  return out;
}

export interface LoadedConfig {
  config: ExperimentConfig;
  /** The config file (absolute). */
  file: string;
  /** sha256 of the canonical JSON of `config` (recorded in checkpoints: resuming another config is refused). */
  hash: string;
}

/** Read, merge, override and validate an experiment file. */
export function loadConfig(file: string, sets: readonly string[] = []): LoadedConfig {
  const abs = path.resolve(file);
  const tree = applySets(readConfigTree(abs), sets);
  const config = validateConfig(tree, abs);
  return { config, file: abs, hash: configHash(config) };
}

/** Validate a raw tree against the schema; `origin` names the source in errors. */
export function validateConfig(tree: unknown, origin: string): ExperimentConfig {
  const r = experimentSchema.safeParse(tree);
  if (r.success) {
    checkConsistency(r.data, origin);
    return r.data;
  }
  const lines = r.error.issues.flatMap((issue) => describeIssue(issue, tree));
  throw new ConfigError(`${origin}: invalid config:\n  ${lines.join('\n  ')}`);
}

function checkConsistency(c: ExperimentConfig, origin: string): void {
  const problems: string[] = [];
  const m = c.model;
  if ((m.fusion || m.objects) && !m.vision_aux) problems.push('model.fusion / model.objects need model.vision_aux (the high-resolution encoder)');
  if (m.objects && !c.data.boxes) problems.push('model.objects makes object tokens from boxes: set data.boxes');
  if (m.vision_aux && !m.vision_aux.pretrained && !m.vision_aux.variant && !(m.vision_aux.dims && m.vision_aux.depths)) {
    problems.push('model.vision_aux: give dims + depths, a timm variant, or pretrained');
  }
  const archV = ['image_size', 'patch_size', 'hidden_size', 'intermediate_size', 'num_layers', 'num_heads'] as const;
  if (!m.vision.pretrained) {
    const missing = archV.filter((k) => m.vision[k] === undefined);
    if (missing.length) problems.push(`model.vision: without 'pretrained', set ${missing.join(', ')}`);
  }
  const archL = ['vocab_size', 'hidden_size', 'intermediate_size', 'num_layers', 'num_heads'] as const;
  if (!m.llm.pretrained) {
    const missing = archL.filter((k) => m.llm[k] === undefined);
    if (missing.length) problems.push(`model.llm: without 'pretrained', set ${missing.join(', ')}`);
  }
  if (problems.length) throw new ConfigError(`${origin}: inconsistent config:\n  ${problems.join('\n  ')}`);
}

function describeIssue(issue: z.core.$ZodIssue, tree: unknown): string[] {
  const where = issue.path.length ? issue.path.join('.') : '(top level)';
  if (issue.code === 'unrecognized_keys') {
    const known = knownKeys(issue.path);
    return issue.keys.map((k) => {
      const hint = suggest(k, known);
      const full = [...issue.path, k].join('.');
      return `${full}: unknown key${hint ? ` (did you mean '${[...issue.path, hint].join('.')}'?)` : known.length ? ` (known: ${known.join(', ')})` : ''}`;
    });
  }
  const got = valueAt(tree, issue.path);
  const shown = got === undefined ? 'missing' : `got ${JSON.stringify(got)}`;
  return [`${where}: ${issue.message} (${shown})`];
}

function valueAt(tree: unknown, p: readonly PropertyKey[]): unknown {
  let cur = tree;
  for (const k of p) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[k];
  }
  return cur;
}

/** The keys the schema allows at a path of objects. */
function knownKeys(p: readonly PropertyKey[]): string[] {
  let s: z.ZodType = experimentSchema;
  for (const k of [...p, null]) {
    for (;;) {
      // Peel wrappers (default, nullable, optional) down to the object.
      const def = (s as unknown as { def: { type: string; innerType?: z.ZodType } }).def;
      if (def.innerType && ['default', 'nullable', 'optional', 'prefault'].includes(def.type)) s = def.innerType;
      else break;
    }
    if (k === null) break;
    const shape = (s as unknown as { shape?: Record<string, z.ZodType> }).shape;
    if (!shape || typeof k !== 'string' || !shape[k]) return [];
    s = shape[k]!;
  }
  const shape = (s as unknown as { shape?: Record<string, z.ZodType> }).shape;
  return shape ? Object.keys(shape) : [];
}

/** The closest known key by edit distance, if it is close enough to be a typo. */
export function suggest(key: string, known: readonly string[]): string | null {
  let best: string | null = null;
  let bestD = Infinity;
  for (const k of known) {
    const d = editDistance(key.toLowerCase(), k.toLowerCase());
    if (d < bestD) {
      bestD = d;
      best = k;
    }
  }
  return best !== null && bestD <= Math.max(2, Math.floor(key.length / 3)) ? best : null;
}

function editDistance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0]!;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = prev[j]!;
      prev[j] = Math.min(prev[j]! + 1, prev[j - 1]! + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = tmp;
    }
  }
  return prev[b.length]!;
}

/**
 * Keys that change how a run is logged, saved or fed, never its numbers (the feature cache is exact): a run may
 * be resumed with other values of these.
 */
const OPERATIONAL_KEYS: Record<string, string[]> = {
  train: ['log_steps', 'save_steps', 'save_total_limit', 'feature_cache', 'feature_cache_mb', 'activation_checkpointing'],
  data: ['prefetch', 'image_workers'],
};

/**
 * sha256 of the config with keys sorted (stable across key order), leaving out the operational keys:
 * two configs with the same hash train to the same numbers.
 */
export function configHash(config: unknown): string {
  let c = config;
  if (isTree(config)) {
    const copy: Tree = { ...config };
    for (const [section, keys] of Object.entries(OPERATIONAL_KEYS)) {
      if (isTree(copy[section])) copy[section] = Object.fromEntries(Object.entries(copy[section] as Tree).filter(([k]) => !keys.includes(k)));
    }
    c = copy;
  }
  return createHash('sha256').update(canonicalJson(c)).digest('hex');
}

function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (isTree(v)) return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonicalJson(v[k])}`).join(',')}}`;
  return JSON.stringify(v);
}

/** The resolved config as YAML (written into every run directory). */
export function dumpConfig(config: ExperimentConfig): string {
  return yaml.dump(config, { lineWidth: 120, noRefs: true });
}
