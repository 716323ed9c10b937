/**
 * JSON reading for dataset files, with error positions.
 *
 * `JSON.parse` is used first (fast). Only when it fails does a small recursive-descent parser run, for two
 * reasons: V8's messages carry no line/column, and Python's `json.dump` (which wrote the reference's box
 * files) emits `NaN`, `Infinity` and `-Infinity` for non-finite floats. Those tokens are accepted here and
 * parsed to the JS numbers, so a non-finite box coordinate is reported against its record instead of
 * making the whole file unreadable.
 */

export class JsonSyntaxError extends Error {
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

const MAX_DEPTH = 512;

/** Parse one JSON document; `lineOffset` shifts reported lines (JSONL: the line the document starts on). */
export function parseJson(text: string, file: string, lineOffset = 0): unknown {
  const body = text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
  try {
    return JSON.parse(body);
  } catch {
    return new TolerantParser(body, file, lineOffset, text.length - body.length).parseDocument();
  }
}

export interface JsonLine {
  /** 1-based line number in the file. */
  line: number;
  value?: unknown;
  error?: JsonSyntaxError;
}

/** JSON Lines: one document per non-blank line; a bad line does not stop the others. */
export function parseJsonLines(text: string, file: string): JsonLine[] {
  const out: JsonLine[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    let s = lines[i]!;
    if (s.endsWith('\r')) s = s.slice(0, -1);
    if (i === 0 && s.charCodeAt(0) === 0xfeff) s = s.slice(1);
    if (s.trim() === '') continue;
    try {
      out.push({ line: i + 1, value: parseJson(s, file, i) });
    } catch (e) {
      if (!(e instanceof JsonSyntaxError)) throw e;
      out.push({ line: i + 1, error: e });
    }
  }
  return out;
}

class TolerantParser {
  private pos = 0;

  constructor(
    private readonly s: string,
    private readonly file: string,
    private readonly lineOffset: number,
    /** Characters stripped before `s` on the first line (a BOM), for the column. */
    private readonly colOffset: number,
  ) {}

  parseDocument(): unknown {
    this.ws();
    const v = this.value(0);
    this.ws();
    if (this.pos < this.s.length) this.fail('unexpected data after the JSON value');
    return v;
  }

  private fail(detail: string, at = this.pos): never {
    let line = 1;
    let lineStart = 0;
    for (let i = 0; i < at && i < this.s.length; i++) {
      if (this.s.charCodeAt(i) === 10) {
        line++;
        lineStart = i + 1;
      }
    }
    const column = at - lineStart + 1 + (line === 1 ? this.colOffset : 0);
    throw new JsonSyntaxError(this.file, line + this.lineOffset, column, detail);
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
