/**
 * YAML experiment files -> one validated `ExperimentConfig`.
 *
 *   file (+ `extends:` chain, deep-merged, child wins) -> `--set a.b=c` overrides -> schema
 *
 * Errors name the file and the YAML path; an unknown key gets a "did you mean" suggestion, a bad value the
 * allowed ones. Hostile files are refused, not obeyed: a config is a small regular file (no device, no
 * endless stream), its aliases may not expand past MAX_CONFIG_NODES values (an anchor bomb), and no key may
 * be `__proto__`/`constructor`/`prototype` (prototype pollution through YAML or `--set`).
 */
import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import yaml from 'js-yaml';
import { z } from 'zod';
import { experimentSchema, type ExperimentConfig } from './schema.js';
import { MgllavaError } from '../errors.js';

export class ConfigError extends MgllavaError {
  constructor(message: string) {
    super(message, 'config');
    this.name = 'ConfigError';
  }
}

type Tree = Record<string, unknown>;

function isTree(v: unknown): v is Tree {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Largest config file read (real ones are a few KB). */
export const MAX_CONFIG_BYTES = 1 << 20;
/** Most values a config may hold once YAML aliases are expanded (real ones: a few hundred). */
export const MAX_CONFIG_NODES = 100_000;
const MAX_CONFIG_DEPTH = 64;
/** Keys that would reach an object's prototype when merged: refused anywhere in a config. */
const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

/**
 * One YAML file as a mapping, bounded: a regular file of at most MAX_CONFIG_BYTES, aliases expanded to at most
 * MAX_CONFIG_NODES values, no prototype keys. Every failure is one ConfigError line naming the file.
 */
export function readYaml(file: string): Tree {
  let text: string;
  try {
    const s = statSync(file);
    if (s.isDirectory()) throw new ConfigError(`config ${file} is a directory; give the YAML file`);
    if (!s.isFile()) throw new ConfigError(`config ${file} is not a regular file`);
    if (s.size > MAX_CONFIG_BYTES) throw new ConfigError(`config ${file} is ${s.size} bytes, more than the ${MAX_CONFIG_BYTES} a config may have`);
    text = readFileSync(file, 'utf8');
  } catch (e) {
    if (e instanceof ConfigError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    throw new ConfigError(`cannot read config ${file}: ${code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : (e as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = yaml.load(text, { filename: file });
  } catch (e) {
    throw new ConfigError(`${file}: invalid YAML: ${yamlReason(e)}`);
  }
  if (!isTree(doc)) throw new ConfigError(`${file}: the top level must be a mapping of keys to values`);
  checkTree(doc, file);
  return doc;
}

/** js-yaml's error as one line: reason and position (its message adds a multi-line snippet). */
function yamlReason(e: unknown): string {
  const y = e as { reason?: string; mark?: { line: number; column: number } };
  if (y.reason && y.mark) return `${y.reason} (line ${y.mark.line + 1}, column ${y.mark.column + 1})`;
  return String((e as Error).message).split('\n')[0]!;
}

/**
 * Walk a parsed config as its consumers will (aliases expanded): refuse forbidden keys, more than
 * MAX_CONFIG_NODES values or deeper than MAX_CONFIG_DEPTH. Stops at the first excess, so a billion-laughs
 * document costs MAX_CONFIG_NODES steps, not 10^9.
 */
export function checkTree(tree: unknown, origin: string): void {
  let nodes = 0;
  const visit = (v: unknown, at: string, depth: number): void => {
    if (++nodes > MAX_CONFIG_NODES) {
      throw new ConfigError(`${origin}: the config expands to more than ${MAX_CONFIG_NODES} values (at ${at || 'the top level'}): YAML aliases (*anchor) that multiply? Write the values out`);
    }
    if (depth > MAX_CONFIG_DEPTH) throw new ConfigError(`${origin}: the config nests deeper than ${MAX_CONFIG_DEPTH} levels (at ${at})`);
    if (Array.isArray(v)) v.forEach((x, i) => visit(x, `${at}[${i}]`, depth + 1));
    else if (typeof v === 'object' && v !== null) {
      for (const k of Object.keys(v)) {
        const where = at ? `${at}.${k}` : k;
        if (FORBIDDEN_KEYS.has(k)) throw new ConfigError(`${origin}: '${where}': '${k}' is not a config key (refused: it would reach the object prototype)`);
        visit((v as Tree)[k], where, depth + 1);
      }
    }
  };
  visit(tree, '', 0);
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
    const bad = keys.find((k) => FORBIDDEN_KEYS.has(k));
    if (bad) throw new ConfigError(`--set '${s}': '${bad}' is not a config key (refused: it would reach the object prototype)`);
    let value: unknown;
    try {
      value = yaml.load(s.slice(eq + 1));
    } catch (e) {
      throw new ConfigError(`--set '${s}': value is not valid YAML: ${yamlReason(e)}`);
    }
    checkTree(value, `--set '${s.slice(0, eq)}'`);
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
  checkTree(tree, abs); // merging may have combined aliases from several files
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
  // One line (the CLI prints one line per error): every problem, separated by '; '.
  throw new ConfigError(`${origin}: invalid config: ${lines.join('; ')}`);
}

function checkConsistency(c: ExperimentConfig, origin: string): void {
  const problems: string[] = [];
  const m = c.model;
  if ((m.fusion || m.objects) && !m.vision_aux) problems.push('model.fusion / model.objects need model.vision_aux (the high-resolution encoder)');
  if (m.objects && !c.data.boxes) problems.push('model.objects makes object tokens from boxes: set data.boxes');
  if (c.data.limit_num === 50) {
    problems.push('data.limit_num: 50 has no per-category cap in the reference (20 above 50, 5 below; it crashes at 50): use 49 or 51');
  }
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
  if (problems.length) throw new ConfigError(`${origin}: inconsistent config: ${problems.join('; ')}`);
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
  if (got === undefined && issue.code === 'invalid_type') return [`${where}: missing (required: ${article(issue.expected)})`];
  const allowed = allowedValues(issue);
  if (allowed) return [`${where}: ${show(got)} is not one of ${allowed.join(', ')}`];
  return [`${where}: ${issueText(issue)} (got ${show(got)})`];
}

/** The values an enum / literal union / discriminator accepts, or null for other issues. */
function allowedValues(issue: z.core.$ZodIssue): string[] | null {
  if (issue.code === 'invalid_value') return issue.values.map((v) => String(v));
  if (issue.code !== 'invalid_union') return null;
  const u = issue as z.core.$ZodIssueInvalidUnion & { options?: unknown[] };
  if (u.options) return u.options.map((v) => String(v)); // a discriminated union's tags
  const out: string[] = [];
  for (const branch of u.errors) {
    const top = branch.filter((i) => i.path.length === 0);
    if (top.length === 0) return null; // a branch that failed deeper: not a choice of values
    for (const i of top) {
      if (i.code === 'invalid_value') out.push(...i.values.map((v) => String(v)));
      else if (i.code === 'invalid_type') out.push(article(i.expected));
      else return null;
    }
  }
  return out.length ? out : null;
}

/** An issue's requirement in words: "must be > 0", "must be an integer", "must be a number". */
function issueText(issue: z.core.$ZodIssue): string {
  switch (issue.code) {
    case 'invalid_type':
      return `must be ${article(issue.expected)}`;
    case 'too_small':
    case 'too_big': {
      const op = issue.code === 'too_small' ? (issue.inclusive ? '>=' : '>') : issue.inclusive ? '<=' : '<';
      const bound = issue.code === 'too_small' ? issue.minimum : issue.maximum;
      if (issue.origin === 'array' || issue.origin === 'set') return `must have ${op} ${bound} items`;
      if (issue.origin === 'string') return `must have ${op} ${bound} characters`;
      return `must be ${op} ${bound}`;
    }
    case 'invalid_format':
      return issue.message;
    default:
      return issue.message.replace(/^Invalid input: /, '');
  }
}

function article(type: string): string {
  if (type === 'int') return 'an integer';
  if (type === 'record') return 'a mapping';
  return /^[aeiou]/.test(type) ? `an ${type}` : `a ${type}`;
}

/** A value for an error message, cut short (an alias can make it huge). */
function show(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (typeof v === 'number' && !Number.isFinite(v)) return String(v); // YAML's .nan / .inf (JSON would say null)
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
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
  train: ['log_steps', 'save_steps', 'save_total_limit', 'feature_cache', 'feature_cache_mb', 'activation_checkpointing', 'eval_records', 'eval_boxes', 'eval_images', 'eval_steps', 'eval_max_new_tokens'],
  data: ['prefetch', 'image_workers', 'max_image_pixels'],
};

/**
 * Keys added after runs were already made, hashed only when they differ from this value (their default), so
 * that the hash of an existing run, and so its `--resume`, does not change when a key is added. Add a new
 * numbers-changing key here with its default.
 */
const HASHED_ONLY_IF_SET: Record<string, Record<string, unknown>> = {
  data: { exif_orientation: 'ignore' },
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
    for (const [section, defaults] of Object.entries(HASHED_ONLY_IF_SET)) {
      if (isTree(copy[section])) copy[section] = Object.fromEntries(Object.entries(copy[section] as Tree).filter(([k, v]) => !(k in defaults) || canonicalJson(v) !== canonicalJson(defaults[k])));
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
