/**
 * JSON reading for dataset files: streamed, item by item, with error positions.
 *
 * Dataset files are big (LLaVA-665K is ~1 GB, beyond V8's maximum string length), so a file is never held
 * as one string: `jsonItems` streams it and yields each top-level item — an element of a JSON array, a
 * member of a JSON object, or a line of a JSON Lines file — parsed on its own. A malformed item is
 * reported with its line/column and the others are still read; only a structural error (unbalanced
 * brackets, a missing comma between items, an unterminated string) stops the file.
 *
 * Items are parsed with `JSON.parse` first (fast). Only when it fails does a small recursive-descent parser
 * run, for two reasons: V8's messages carry no line/column, and Python's `json.dump` (which wrote the
 * reference's box files) emits `NaN`, `Infinity` and `-Infinity` for non-finite floats. Those tokens are
 * accepted and parsed to the JS numbers, so a non-finite box coordinate is reported against its record.
 *
 * Bounds (JSON_LIMITS): one item (a line, an array element) may hold at most 64 Mi characters and a file at
 * most 16 Gi, so an endless or newline-free stream (`/dev/zero` through a pipe) is an error, not a heap
 * that grows until the process is killed.
 */
import { createReadStream } from 'node:fs';
import { DataError } from '../errors.js';

export class JsonSyntaxError extends DataError {
  constructor(
    readonly file: string,
    /** 1-based line and column (column in UTF-16 code units) of the offending character. */
    readonly line: number,
    readonly column: number,
    readonly detail: string,
  ) {
    super(`${file}:${line}:${column}: malformed JSON: ${detail}`);
    this.name = 'JsonSyntaxError';
  }
}

/** Where a piece of text starts in its file (1-based). */
export interface JsonPosition {
  line: number;
  column: number;
}

const FILE_START: JsonPosition = { line: 1, column: 1 };
const MAX_DEPTH = 512;
/** How much one item and one file may hold (characters). */
export interface JsonLimits {
  maxItemChars: number;
  maxFileChars: number;
}

/** A single item (a record, a box entry) is far below 1 MB in real data; LLaVA-665K is ~1 GB. */
export const JSON_LIMITS: JsonLimits = { maxItemChars: 64 * 2 ** 20, maxFileChars: 16 * 2 ** 30 };

const mega = (n: number) => (n >= 2 ** 20 ? `${n / 2 ** 20} Mi` : `${n}`);

function tooLong(file: string, line: number, column: number, what: string, limits: JsonLimits): JsonSyntaxError {
  return new JsonSyntaxError(file, line, column, `${what} is longer than ${mega(limits.maxItemChars)} characters (not a JSON file, or no line breaks?)`);
}

/** Parse one JSON document that starts at `at` in `file` (positions in errors are file positions). */
export function parseJson(text: string, file: string, at: JsonPosition = FILE_START): unknown {
  let body = text;
  let pos = at;
  if (body.charCodeAt(0) === 0xfeff) {
    body = body.slice(1);
    pos = { line: at.line, column: at.column + 1 };
  }
  try {
    return JSON.parse(body);
  } catch {
    return new TolerantParser(body, file, pos).parseDocument();
  }
}

export interface JsonItem {
  /** 0-based position among the file's items. */
  index: number;
  /** Member name for an object file; null for array elements and JSON Lines. */
  key: string | null;
  /** Where the item's text starts. */
  line: number;
  column: number;
  value?: unknown;
  error?: JsonSyntaxError;
}

export type JsonContainer = 'array' | 'object' | 'lines';

/** Text in memory, text in pieces (as a stream delivers it), or a file to stream. */
export type JsonSource = string | { chunks: Iterable<string> | AsyncIterable<string> } | { file: string };

/**
 * Stream the items of a dataset file. `format` 'lines' reads JSON Lines; 'auto' reads a JSON array or
 * object (whichever the file holds). `onContainer` learns which one before the first item.
 * Throws JsonSyntaxError on a structural error (the items yielded before it are then not trustworthy).
 */
export async function* jsonItems(
  source: JsonSource,
  file: string,
  format: 'lines' | 'auto',
  onContainer?: (c: JsonContainer) => void,
  limits: JsonLimits = JSON_LIMITS,
): AsyncGenerator<JsonItem> {
  const chunks: AsyncIterable<string> | Iterable<string> =
    typeof source === 'string'
      ? [source]
      : 'file' in source
        ? utf8Chunks(source.file)
        : source.chunks;
  if (format === 'lines') {
    onContainer?.('lines');
    yield* lineItems(bounded(chunks, file, limits), file, limits);
    return;
  }
  const scanner = new TopLevelScanner(file, limits);
  for await (const chunk of bounded(chunks, file, limits)) {
    const before = scanner.container;
    const items = scanner.push(chunk);
    if (before === null && scanner.container !== null) onContainer?.(scanner.container);
    yield* items;
  }
  scanner.end();
}

/**
 * A file's text in chunks, refusing bytes that are not UTF-8: decoding them as U+FFFD (what a 'utf8' stream does)
 * would load a Latin-1 or UTF-16 file as silently different text, where the reference (Python's json.load of a
 * UTF-8 open) fails. A byte-order mark is kept (the scanners skip it).
 */
async function* utf8Chunks(file: string): AsyncGenerator<string> {
  const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
  let offset = 0; // bytes before this chunk
  let lines = 0; // newlines before this chunk
  for await (const buf of createReadStream(file, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>) {
    let text: string;
    try {
      text = decoder.decode(buf, { stream: true });
    } catch {
      const at = Math.max(0, firstNonUtf8(buf));
      const line = lines + newlines(buf.subarray(0, at)) + 1;
      throw new DataError(
        `${file}: not UTF-8 text: byte 0x${buf[at]!.toString(16).padStart(2, '0')} at line ${line} (byte ${offset + at}) is not valid UTF-8 ` +
          `(a Latin-1, Windows-1252 or UTF-16 file?)`,
        { hint: 'save the file as UTF-8' },
      );
    }
    offset += buf.length;
    lines += newlines(buf);
    yield text;
  }
  try {
    const tail = decoder.decode();
    if (tail) yield tail;
  } catch {
    throw new DataError(`${file}: not UTF-8 text: the file ends inside a multi-byte character (cut short?)`, { hint: 'save the file as UTF-8' });
  }
}

/** '\n' bytes in `b` (indexOf runs natively: counting costs nothing next to the parse). */
function newlines(b: Buffer): number {
  let n = 0;
  for (let i = b.indexOf(0x0a); i >= 0; i = b.indexOf(0x0a, i + 1)) n++;
  return n;
}

/** Index of the first byte of `b` that does not start or continue a UTF-8 sequence (-1: none found; approximate). */
function firstNonUtf8(b: Uint8Array): number {
  for (let i = 0; i < b.length; ) {
    const c = b[i]!;
    const n = c < 0x80 ? 0 : c >= 0xc2 && c <= 0xdf ? 1 : c >= 0xe0 && c <= 0xef ? 2 : c >= 0xf0 && c <= 0xf4 ? 3 : -1;
    if (n < 0) return i;
    for (let k = 1; k <= n && i + k < b.length; k++) if ((b[i + k]! & 0xc0) !== 0x80) return i;
    i += n + 1;
  }
  return -1;
}

/** The chunks, refusing a source longer than maxFileChars (an endless stream). */
async function* bounded(chunks: AsyncIterable<string> | Iterable<string>, file: string, limits: JsonLimits): AsyncGenerator<string> {
  let total = 0;
  for await (const chunk of chunks) {
    total += chunk.length;
    if (total > limits.maxFileChars) throw new DataError(`${file}: more than ${mega(limits.maxFileChars)} characters: refusing to read on (an endless stream?)`);
    yield chunk;
  }
}

async function* lineItems(chunks: AsyncIterable<string>, file: string, limits: JsonLimits): AsyncGenerator<JsonItem> {
  let rest = '';
  let line = 0;
  let index = 0;
  const one = (raw: string): JsonItem | null => {
    line++;
    const s = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (s.trim() === '' || (line === 1 && s === '\ufeff')) return null;
    const at = { line, column: 1 };
    try {
      return { index: index++, key: null, ...at, value: parseJson(s, file, at) };
    } catch (e) {
      if (!(e instanceof JsonSyntaxError)) throw e;
      return { index: index++, key: null, ...at, error: e };
    }
  };
  for await (const chunk of chunks) {
    if (!chunk.includes('\n')) {
      // No line ends here: only grow the pending line (splitting it again each time would be quadratic).
      rest += chunk;
      if (rest.length > limits.maxItemChars) throw tooLong(file, line + 1, 1, `line ${line + 1}`, limits);
      continue;
    }
    const parts = (rest + chunk).split('\n');
    rest = parts.pop()!;
    for (const p of parts) {
      if (p.length > limits.maxItemChars) throw tooLong(file, line + 1, 1, `line ${line + 1}`, limits);
      const item = one(p);
      if (item) yield item;
    }
    if (rest.length > limits.maxItemChars) throw tooLong(file, line + 1, 1, `line ${line + 1}`, limits);
  }
  const last = one(rest);
  if (last) yield last;
}

type Phase = 'start' | 'beforeItem' | 'key' | 'colon' | 'beforeValue' | 'value' | 'done';

/**
 * Splits a JSON array/object into its top-level items without parsing them: it only follows strings and
 * bracket depth. Push-based so that it works on streamed chunks.
 */
class TopLevelScanner {
  container: 'array' | 'object' | null = null;
  private phase: Phase = 'start';
  private line = 1;
  private column = 1;
  private index = 0;
  private afterComma = false;
  private inString = false;
  private escaped = false;
  private depth = 0;
  /** The current value is a complete object, array or string (only a separator may follow). */
  private closed = false;
  private text = ''; // current key or value text from previous chunks
  private key: string | null = null;
  private start: JsonPosition = FILE_START;

  constructor(
    private readonly file: string,
    private readonly limits: JsonLimits,
  ) {}

  private fail(detail: string, at: JsonPosition = { line: this.line, column: this.column }): never {
    throw new JsonSyntaxError(this.file, at.line, at.column, detail);
  }

  push(chunk: string): JsonItem[] {
    const out: JsonItem[] = [];
    let seg = 0; // start of the current key/value text inside this chunk
    for (let i = 0; i < chunk.length; i++) {
      const c = chunk.charCodeAt(i);
      const ws = c === 32 || c === 10 || c === 13 || c === 9;
      switch (this.phase) {
        case 'start':
          if (ws || (c === 0xfeff && this.line === 1 && this.column === 1)) break;
          if (c === 91 /* [ */) this.container = 'array';
          else if (c === 123 /* { */) this.container = 'object';
          else this.fail(`unexpected '${chunk[i]}', expected '[' or '{'`);
          this.phase = 'beforeItem';
          break;
        case 'beforeItem':
          if (ws) break;
          if (c === (this.container === 'array' ? 93 : 125)) {
            if (this.afterComma) this.fail(`unexpected '${chunk[i]}' after ','`);
            this.phase = 'done';
          } else if (this.container === 'object') {
            if (c !== 34) this.fail(`unexpected '${chunk[i]}', expected a string key`);
            this.phase = 'key';
            this.begin();
            seg = i;
          } else {
            this.phase = 'value';
            this.begin();
            seg = i;
            this.scanValueChar(c);
          }
          break;
        case 'key':
          // The opening quote was consumed by 'beforeItem': the next unescaped quote closes the key.
          if (this.escaped) this.escaped = false;
          else if (c === 92) this.escaped = true;
          else if (c === 10) this.fail('unterminated string key');
          else if (c === 34) {
            try {
              this.key = JSON.parse(this.text + chunk.slice(seg, i + 1)) as string;
            } catch {
              this.fail('malformed string key', this.start);
            }
            this.text = '';
            this.phase = 'colon';
          }
          break;
        case 'colon':
          if (ws) break;
          if (c !== 58) this.fail(`unexpected '${chunk[i]}', expected ':'`);
          this.phase = 'beforeValue';
          break;
        case 'beforeValue':
          if (ws) break;
          if (c === 44 || c === 125) this.fail(`unexpected '${chunk[i]}', expected a value`);
          this.phase = 'value';
          this.begin();
          seg = i;
          this.scanValueChar(c);
          break;
        case 'value': {
          const closer = this.container === 'array' ? 93 : 125;
          if (!this.inString && this.depth === 0 && (c === 44 || c === closer)) {
            out.push(this.finish(this.text + chunk.slice(seg, i)));
            this.afterComma = c === 44;
            this.phase = c === 44 ? 'beforeItem' : 'done';
          } else if (this.closed && !ws) {
            // A complete object/array/string followed by more than a separator: items run together.
            this.fail(`unexpected '${chunk[i]}', expected ',' or '${this.container === 'array' ? ']' : '}'}'`);
          } else {
            this.scanValueChar(c);
            if (this.depth < 0) this.fail(`unexpected '${chunk[i]}'`);
          }
          break;
        }
        case 'done':
          if (!ws) this.fail('unexpected data after the JSON value');
          break;
      }
      if (c === 10) {
        this.line++;
        this.column = 1;
      } else {
        this.column++;
      }
    }
    if (this.phase === 'key' || this.phase === 'value') {
      this.text += chunk.slice(seg);
      if (this.text.length > this.limits.maxItemChars) throw tooLong(this.file, this.start.line, this.start.column, `the item starting at line ${this.start.line}`, this.limits);
    }
    return out;
  }

  end(): void {
    if (this.phase === 'done') return;
    if (this.phase === 'start') this.fail('empty file: expected a JSON array or object');
    const open = this.phase === 'value' || this.phase === 'key' ? ` (the item starting at line ${this.start.line}, column ${this.start.column} is not closed)` : '';
    this.fail(`unexpected end of input${open}`);
  }

  /** A key or value starts at the current character. */
  private begin(): void {
    this.start = { line: this.line, column: this.column };
    this.text = '';
    this.closed = false;
  }

  private scanValueChar(c: number): void {
    if (this.inString) {
      if (this.escaped) this.escaped = false;
      else if (c === 92) this.escaped = true;
      else if (c === 34) {
        this.inString = false;
        this.closed = this.depth === 0;
      }
      return;
    }
    if (c === 34) this.inString = true;
    else if (c === 123 || c === 91) this.depth++;
    else if (c === 125 || c === 93) {
      this.depth--;
      this.closed = this.depth === 0;
    }
  }

  private finish(raw: string): JsonItem {
    const item = { index: this.index++, key: this.container === 'object' ? this.key : null, line: this.start.line, column: this.start.column };
    const text = raw.trimEnd();
    try {
      return { ...item, value: parseJson(text, this.file, this.start) };
    } catch (e) {
      if (!(e instanceof JsonSyntaxError)) throw e;
      return { ...item, error: e };
    }
  }
}

class TolerantParser {
  private pos = 0;

  constructor(
    private readonly s: string,
    private readonly file: string,
    /** File position of s[0]. */
    private readonly at: JsonPosition,
  ) {}

  parseDocument(): unknown {
    this.ws();
    const v = this.value(0);
    this.ws();
    if (this.pos < this.s.length) this.fail('unexpected data after the JSON value');
    return v;
  }

  private fail(detail: string, at = this.pos): never {
    let line = 0;
    let lineStart = 0;
    for (let i = 0; i < at && i < this.s.length; i++) {
      if (this.s.charCodeAt(i) === 10) {
        line++;
        lineStart = i + 1;
      }
    }
    const column = at - lineStart + (line === 0 ? this.at.column : 1);
    throw new JsonSyntaxError(this.file, this.at.line + line, column, detail);
  }

  private ws(): void {
    for (;;) {
      const c = this.s.charCodeAt(this.pos);
      if (c === 32 || c === 9 || c === 10 || c === 13) this.pos++;
      else return;
    }
  }

  private describe(): string {
    if (this.pos >= this.s.length) return 'end of input';
    return `'${this.s[this.pos]}'`;
  }

  private value(depth: number): unknown {
    if (depth > MAX_DEPTH) this.fail(`nesting deeper than ${MAX_DEPTH}`);
    const c = this.s[this.pos];
    if (c === '{') return this.object(depth);
    if (c === '[') return this.array(depth);
    if (c === '"') return this.string();
    if (c === '-' || (c !== undefined && c >= '0' && c <= '9')) return this.number();
    for (const [word, v] of WORDS) {
      if (this.s.startsWith(word, this.pos)) {
        this.pos += word.length;
        return v;
      }
    }
    this.fail(`unexpected ${this.describe()}, expected a value`);
  }

  private object(depth: number): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    this.pos++; // {
    this.ws();
    if (this.s[this.pos] === '}') {
      this.pos++;
      return out;
    }
    for (;;) {
      this.ws();
      if (this.s[this.pos] !== '"') this.fail(`unexpected ${this.describe()}, expected a string key`);
      const key = this.string();
      this.ws();
      if (this.s[this.pos] !== ':') this.fail(`unexpected ${this.describe()}, expected ':'`);
      this.pos++;
      this.ws();
      out[key] = this.value(depth + 1);
      this.ws();
      const c = this.s[this.pos];
      if (c === ',') {
        this.pos++;
        continue;
      }
      if (c === '}') {
        this.pos++;
        return out;
      }
      this.fail(`unexpected ${this.describe()}, expected ',' or '}'`);
    }
  }

  private array(depth: number): unknown[] {
    const out: unknown[] = [];
    this.pos++; // [
    this.ws();
    if (this.s[this.pos] === ']') {
      this.pos++;
      return out;
    }
    for (;;) {
      this.ws();
      out.push(this.value(depth + 1));
      this.ws();
      const c = this.s[this.pos];
      if (c === ',') {
        this.pos++;
        continue;
      }
      if (c === ']') {
        this.pos++;
        return out;
      }
      this.fail(`unexpected ${this.describe()}, expected ',' or ']'`);
    }
  }

  private string(): string {
    const start = this.pos;
    this.pos++; // opening quote
    for (;;) {
      if (this.pos >= this.s.length) this.fail('unterminated string', start);
      const c = this.s.charCodeAt(this.pos);
      if (c === 34) break;
      if (c < 32) this.fail('control character in string');
      if (c === 92) {
        const e = this.s[this.pos + 1];
        if (e === 'u') {
          if (!/^[0-9a-fA-F]{4}$/.test(this.s.slice(this.pos + 2, this.pos + 6))) this.fail('bad \\u escape');
          this.pos += 6;
          continue;
        }
        if (e === undefined || !'"\\/bfnrt'.includes(e)) this.fail('bad escape in string');
        this.pos += 2;
        continue;
      }
      this.pos++;
    }
    this.pos++; // closing quote
    // The literal is now known to be valid, so the built-in decoder can produce its value.
    return JSON.parse(this.s.slice(start, this.pos)) as string;
  }

  private number(): number {
    if (this.s.startsWith('-Infinity', this.pos)) {
      this.pos += 9;
      return -Infinity;
    }
    const m = /^-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/.exec(this.s.slice(this.pos, this.pos + 400));
    if (!m) this.fail('malformed number');
    this.pos += m[0].length;
    return Number(m[0]);
  }
}

const WORDS: [string, unknown][] = [
  ['true', true],
  ['false', false],
  ['null', null],
  ['NaN', NaN],
  ['Infinity', Infinity],
];
