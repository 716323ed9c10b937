/**
 * A pickle virtual machine (protocols 0-5) that executes nothing.
 *
 * Python's unpickler imports every GLOBAL it meets and calls what REDUCE/NEWOBJ/BUILD name, which is why loading
 * a pickle from the internet can run any code. Here a GLOBAL is resolved by the caller's `hooks.global`, which
 * returns either a value the caller knows (a torch rebuild function, a dtype) or an inert `PyGlobal` placeholder;
 * calling a placeholder (REDUCE, NEWOBJ, INST, OBJ) yields an inert `PyObject` that only records what was asked for,
 * and BUILD/SETITEMS/APPENDS on it only store data. Nothing is ever looked up by name in JavaScript either: dicts
 * are `Map`s (a key '__proto__' is just a key), objects are class instances of this module.
 *
 * Python values become: None -> null, bool -> boolean, int -> number (bigint beyond 2^53), float -> number,
 * str -> string, bytes/bytearray -> Uint8Array, list -> Array, tuple -> PyTuple, dict -> Map, set/frozenset -> Set.
 *
 * Untrusted input: the VM is a loop (no recursion); the stack, the mark stack, the memo, the number of objects and
 * the nesting depth of containers are bounded; every length is checked against the bytes left before allocating;
 * the pickle must end with STOP leaving exactly one value. Errors are one line naming the source and the byte.
 */
import { WeightsError } from '../errors.js';

/** An immutable Python tuple (lists are plain arrays). */
export class PyTuple {
  constructor(readonly items: readonly unknown[]) {}
}

/** A global (module.name) that is not allowed: a name only, never resolved to anything callable. */
export class PyGlobal {
  constructor(
    readonly module: string,
    readonly name: string,
  ) {}

  get path(): string {
    return `${this.module}.${this.name}`;
  }
}

/**
 * What a pickle asked to construct from a placeholder (`callee(*args)`, `cls.__new__(cls, *args)`), kept as inert
 * data: the arguments, BUILD's state, and the items SETITEMS/APPENDS added (dict and list subclasses).
 */
export class PyObject {
  state: unknown = undefined;
  readonly items = new Map<unknown, unknown>();
  readonly list: unknown[] = [];

  constructor(
    readonly callee: PyGlobal,
    readonly args: PyTuple,
    readonly how: 'call' | 'new',
  ) {}
}

/** What the caller decides about globals, persistent ids and calls of the values its globals return. */
export interface PickleHooks {
  /** The value of GLOBAL module.name: something the caller understands, or `new PyGlobal(module, name)`. */
  global(module: string, name: string): unknown;
  /** The value of a persistent id (BINPERSID / PERSID). */
  persistentLoad(pid: unknown): unknown;
  /** REDUCE / NEWOBJ on a non-placeholder value the caller's `global` returned. */
  call(callee: unknown, args: PyTuple, how: 'call' | 'new'): unknown;
  /** BUILD on a value that is not a PyObject (e.g. an OrderedDict's attributes, a tensor's state). Default: ignored. */
  build?(target: unknown, state: unknown): void;
}

export interface PickleLimits {
  /** Values on the stack at once. */
  maxStack: number;
  /** Open MARKs at once. */
  maxMarks: number;
  /** Nesting depth of containers (lists, tuples, dicts, sets, objects). */
  maxDepth: number;
  /** Containers and objects created. */
  maxObjects: number;
  /** Items inserted into containers, in total. */
  maxItems: number;
}

export const DEFAULT_LIMITS: PickleLimits = {
  maxStack: 1 << 20,
  maxMarks: 4096,
  maxDepth: 1000,
  maxObjects: 10_000_000,
  maxItems: 100_000_000,
};

/** Bytes a pickle is read from: a buffer, or a window over a file (legacy torch checkpoints). */
export interface ByteSource {
  /** Offset of the next byte, from the start of the source. */
  readonly pos: number;
  /** The next `n` bytes (fails when fewer are left). The array may be a view into a buffer that is reused. */
  take(n: number): Uint8Array;
  /** Bytes up to and excluding the next '\n' (consumed). */
  line(): Uint8Array;
}

export class BufferSource implements ByteSource {
  pos = 0;

  constructor(
    private readonly bytes: Uint8Array,
    private readonly label: string,
  ) {}

  take(n: number): Uint8Array {
    if (n > this.bytes.length - this.pos) throw new WeightsError(`${this.label}: pickle truncated: ${n} bytes needed at byte ${this.pos}, ${this.bytes.length - this.pos} left`);
    const out = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  line(): Uint8Array {
    const end = this.bytes.indexOf(0x0a, this.pos);
    if (end < 0) throw new WeightsError(`${this.label}: pickle truncated: no end of line after byte ${this.pos}`);
    const out = this.bytes.subarray(this.pos, end);
    this.pos = end + 1;
    return out;
  }
}

const OP = {
  MARK: 0x28, STOP: 0x2e, POP: 0x30, POP_MARK: 0x31, DUP: 0x32, FLOAT: 0x46, INT: 0x49, BININT: 0x4a, BININT1: 0x4b,
  LONG: 0x4c, BININT2: 0x4d, NONE: 0x4e, PERSID: 0x50, BINPERSID: 0x51, REDUCE: 0x52, STRING: 0x53, BINSTRING: 0x54,
  SHORT_BINSTRING: 0x55, UNICODE: 0x56, BINUNICODE: 0x58, APPEND: 0x61, BUILD: 0x62, GLOBAL: 0x63, DICT: 0x64,
  EMPTY_DICT: 0x7d, APPENDS: 0x65, GET: 0x67, BINGET: 0x68, INST: 0x69, LONG_BINGET: 0x6a, LIST: 0x6c, EMPTY_LIST: 0x5d,
  OBJ: 0x6f, PUT: 0x70, BINPUT: 0x71, LONG_BINPUT: 0x72, SETITEM: 0x73, TUPLE: 0x74, EMPTY_TUPLE: 0x29, SETITEMS: 0x75,
  BINFLOAT: 0x47,
  // protocol 2
  PROTO: 0x80, NEWOBJ: 0x81, EXT1: 0x82, EXT2: 0x83, EXT4: 0x84, TUPLE1: 0x85, TUPLE2: 0x86, TUPLE3: 0x87,
  NEWTRUE: 0x88, NEWFALSE: 0x89, LONG1: 0x8a, LONG4: 0x8b,
  // protocol 3
  BINBYTES: 0x42, SHORT_BINBYTES: 0x43,
  // protocol 4
  SHORT_BINUNICODE: 0x8c, BINUNICODE8: 0x8d, BINBYTES8: 0x8e, EMPTY_SET: 0x8f, ADDITEMS: 0x90, FROZENSET: 0x91,
  NEWOBJ_EX: 0x92, STACK_GLOBAL: 0x93, MEMOIZE: 0x94, FRAME: 0x95,
  // protocol 5
  BYTEARRAY8: 0x96, NEXT_BUFFER: 0x97, READONLY_BUFFER: 0x98,
} as const;

const utf8 = new TextDecoder('utf-8');
const latin1 = new TextDecoder('latin1');

/** A little-endian two's-complement integer (LONG1/LONG4) as a number when safe, else a bigint. */
function decodeLong(b: Uint8Array): number | bigint {
  if (b.length === 0) return 0;
  let n = 0n;
  for (let i = b.length - 1; i >= 0; i--) n = (n << 8n) | BigInt(b[i]!);
  if (b[b.length - 1]! & 0x80) n -= 1n << BigInt(8 * b.length);
  return n >= BigInt(Number.MIN_SAFE_INTEGER) && n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n;
}

/** A decimal integer as protocol 0 writes it (INT, LONG; "01"/"00" are True/False). */
function parseIntText(s: string): number | bigint | boolean | null {
  if (s === '01') return true;
  if (s === '00') return false;
  const t = s.endsWith('L') ? s.slice(0, -1) : s;
  if (!/^[+-]?\d+$/.test(t)) return null;
  const n = BigInt(t);
  return n >= BigInt(Number.MIN_SAFE_INTEGER) && n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n;
}

/** Python 2 `repr` of a str (STRING): quoted, with backslash escapes. */
function parseQuoted(s: string): string | null {
  if (s.length < 2 || (s[0] !== "'" && s[0] !== '"') || s[s.length - 1] !== s[0]) return null;
  return s.slice(1, -1).replace(/\\(x[0-9a-fA-F]{2}|[0-7]{1,3}|.)/g, (_, e: string) => {
    if (e[0] === 'x') return String.fromCharCode(parseInt(e.slice(1), 16));
    if (/^[0-7]/.test(e)) return String.fromCharCode(parseInt(e, 8));
    return ({ n: '\n', r: '\r', t: '\t', '\\': '\\', "'": "'", '"': '"' } as Record<string, string>)[e] ?? `\\${e}`;
  });
}

/** Protocol 0 UNICODE: raw-unicode-escape (\uXXXX and \UXXXXXXXX escapes, other bytes latin-1). */
function parseRawUnicode(b: Uint8Array): string {
  return latin1.decode(b).replace(/\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})/g, (_, u: string | undefined, U: string | undefined) =>
    String.fromCodePoint(parseInt((u ?? U)!, 16)),
  );
}

/**
 * Run a pickle to its STOP and return the value it produces. `label` names the source in errors (file, entry).
 */
export function unpickle(src: ByteSource, hooks: PickleHooks, label: string, limits: PickleLimits = DEFAULT_LIMITS): unknown {
  let stack: unknown[] = [];
  const marks: unknown[][] = [];
  const memo = new Map<number, unknown>();
  const depth = new WeakMap<object, number>();
  let objects = 0;
  let items = 0;
  let opPos = 0;

  const fail = (why: string): never => {
    throw new WeightsError(`${label}: malformed pickle at byte ${opPos}: ${why}`);
  };
  const push = (v: unknown): void => {
    if (stack.length >= limits.maxStack) fail(`more than ${limits.maxStack} values on the stack`);
    stack.push(v);
  };
  const pop = (): unknown => {
    if (stack.length === 0) fail('stack underflow');
    return stack.pop();
  };
  const top = (): unknown => {
    if (stack.length === 0) fail('stack underflow');
    return stack[stack.length - 1];
  };
  const popMark = (): unknown[] => {
    const items = stack;
    const prev = marks.pop();
    if (prev === undefined) fail('no MARK to pop to');
    stack = prev!;
    return items;
  };
  const depthOf = (v: unknown): number => (typeof v === 'object' && v !== null ? (depth.get(v) ?? 1) : 0);
  /** Register a new container holding `children`. */
  const created = <T extends object>(v: T, children: readonly unknown[] = []): T => {
    if (++objects > limits.maxObjects) fail(`more than ${limits.maxObjects} objects`);
    let d = 1;
    for (const c of children) d = Math.max(d, depthOf(c) + 1);
    if (d > limits.maxDepth) fail(`containers nested more than ${limits.maxDepth} deep`);
    depth.set(v, d);
    items += children.length;
    if (items > limits.maxItems) fail(`more than ${limits.maxItems} container items`);
    return v;
  };
  /** `container` received `children`: bound its depth and the item count. */
  const grew = (container: object, children: readonly unknown[]): void => {
    let d = depth.get(container) ?? 1;
    for (const c of children) d = Math.max(d, depthOf(c) + 1);
    if (d > limits.maxDepth) fail(`containers nested more than ${limits.maxDepth} deep`);
    depth.set(container, d);
    items += children.length;
    if (items > limits.maxItems) fail(`more than ${limits.maxItems} container items`);
  };
  const u8 = (): number => src.take(1)[0]!;
  const dv = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);
  const u32 = (): number => dv(src.take(4)).getUint32(0, true);
  const u64 = (): number => {
    const n = dv(src.take(8)).getBigUint64(0, true);
    if (n > BigInt(Number.MAX_SAFE_INTEGER)) fail(`length ${n} is absurd`);
    return Number(n);
  };
  /** A copy of the next n bytes (sources may reuse their buffer). */
  const bytes = (n: number): Uint8Array => Uint8Array.from(src.take(n));
  const text = (b: Uint8Array): string => utf8.decode(b);
  const lineText = (): string => {
    const l = src.line();
    return latin1.decode(l.length > 0 && l[l.length - 1] === 0x0d ? l.subarray(0, -1) : l);
  };
  const memoGet = (i: number): unknown => {
    if (!memo.has(i)) fail(`memo key ${i} was never stored`);
    return memo.get(i);
  };
  const memoPut = (i: number): void => {
    if (memo.size >= limits.maxObjects && !memo.has(i)) fail(`more than ${limits.maxObjects} memo entries`);
    memo.set(i, top());
  };
  const global = (module: string, name: string): unknown => {
    if (module === '' || name === '') fail('empty GLOBAL name');
    return hooks.global(module, name);
  };
  const callOn = (callee: unknown, args: unknown, how: 'call' | 'new'): unknown => {
    if (!(args instanceof PyTuple)) fail(`${how === 'call' ? 'REDUCE' : 'NEWOBJ'} arguments are not a tuple`);
    if (callee instanceof PyGlobal) return created(new PyObject(callee, args as PyTuple, how), [args]);
    if (callee instanceof PyObject) return created(new PyObject(callee.callee, args as PyTuple, how), [args]);
    return hooks.call(callee, args as PyTuple, how);
  };
  const setItems = (target: unknown, kv: readonly unknown[]): void => {
    if (kv.length % 2 !== 0) fail('SETITEMS with an odd number of values');
    const map = target instanceof Map ? target : target instanceof PyObject ? target.items : fail(`SETITEM(S) on a ${typeName(target)}`);
    for (let i = 0; i < kv.length; i += 2) map.set(kv[i], kv[i + 1]);
    grew(target as object, kv);
  };
  const append = (target: unknown, values: readonly unknown[]): void => {
    const list = Array.isArray(target) ? target : target instanceof PyObject ? target.list : fail(`APPEND(S) on a ${typeName(target)}`);
    for (const v of values) list.push(v);
    grew(target as object, values);
  };

  for (;;) {
    opPos = src.pos;
    const op = u8();
    switch (op) {
      case OP.PROTO: {
        const v = u8();
        if (v > 5) fail(`protocol ${v} (this reader knows 0-5)`);
        break;
      }
      case OP.FRAME:
        u64(); // frames only group opcodes; the data follows inline
        break;
      case OP.STOP: {
        if (marks.length !== 0) fail(`STOP with ${marks.length} unclosed MARKs`);
        if (stack.length !== 1) fail(`STOP with ${stack.length} values on the stack (a pickle leaves exactly one)`);
        return stack[0];
      }
      case OP.MARK:
        if (marks.length >= limits.maxMarks) fail(`more than ${limits.maxMarks} nested MARKs`);
        marks.push(stack);
        stack = [];
        break;
      case OP.POP:
        if (stack.length > 0) stack.pop();
        else popMark(); // Python pops a MARK when the stack above it is empty
        break;
      case OP.POP_MARK:
        popMark();
        break;
      case OP.DUP:
        push(top());
        break;

      // --- scalars
      case OP.NONE:
        push(null);
        break;
      case OP.NEWTRUE:
        push(true);
        break;
      case OP.NEWFALSE:
        push(false);
        break;
      case OP.BININT:
        push(dv(src.take(4)).getInt32(0, true));
        break;
      case OP.BININT1:
        push(u8());
        break;
      case OP.BININT2:
        push(dv(src.take(2)).getUint16(0, true));
        break;
      case OP.LONG1:
        push(decodeLong(src.take(u8())));
        break;
      case OP.LONG4: {
        const n = dv(src.take(4)).getInt32(0, true);
        if (n < 0) fail('LONG4 with a negative length');
        push(decodeLong(src.take(n)));
        break;
      }
      case OP.INT:
      case OP.LONG: {
        const v = parseIntText(lineText());
        if (v === null) fail('bad decimal integer');
        push(v);
        break;
      }
      case OP.BINFLOAT:
        push(dv(src.take(8)).getFloat64(0, false));
        break;
      case OP.FLOAT: {
        const s = lineText();
        const v = Number(s);
        if (s.trim() === '' || (Number.isNaN(v) && !/^[+-]?nan$/i.test(s))) fail(`bad float '${s.slice(0, 40)}'`);
        push(v);
        break;
      }

      // --- strings and bytes
      case OP.BINUNICODE:
        push(text(src.take(u32())));
        break;
      case OP.SHORT_BINUNICODE:
        push(text(src.take(u8())));
        break;
      case OP.BINUNICODE8:
        push(text(src.take(u64())));
        break;
      case OP.UNICODE:
        push(parseRawUnicode(src.line()));
        break;
      case OP.STRING: {
        const v = parseQuoted(lineText());
        if (v === null) fail('STRING is not a quoted literal');
        push(v);
        break;
      }
      case OP.BINSTRING: {
        const n = dv(src.take(4)).getInt32(0, true);
        if (n < 0) fail('BINSTRING with a negative length');
        push(text(src.take(n)));
        break;
      }
      case OP.SHORT_BINSTRING:
        push(text(src.take(u8())));
        break;
      case OP.BINBYTES:
        push(bytes(u32()));
        break;
      case OP.SHORT_BINBYTES:
        push(bytes(u8()));
        break;
      case OP.BINBYTES8:
      case OP.BYTEARRAY8:
        push(bytes(u64()));
        break;
      case OP.NEXT_BUFFER:
        fail('out-of-band buffers (NEXT_BUFFER) are not supported');
        break;
      case OP.READONLY_BUFFER:
        top();
        break;

      // --- containers
      case OP.EMPTY_LIST:
        push(created([]));
        break;
      case OP.EMPTY_DICT:
        push(created(new Map()));
        break;
      case OP.EMPTY_SET:
        push(created(new Set()));
        break;
      case OP.EMPTY_TUPLE:
        push(created(new PyTuple([])));
        break;
      case OP.TUPLE1:
      case OP.TUPLE2:
      case OP.TUPLE3: {
        const n = op - OP.TUPLE1 + 1;
        if (stack.length < n) fail('stack underflow');
        const its = stack.splice(stack.length - n, n);
        push(created(new PyTuple(its), its));
        break;
      }
      case OP.TUPLE: {
        const its = popMark();
        push(created(new PyTuple(its), its));
        break;
      }
      case OP.LIST: {
        const its = popMark();
        push(created(its, its));
        break;
      }
      case OP.DICT: {
        const kv = popMark();
        const d = created(new Map());
        setItems(d, kv);
        push(d);
        break;
      }
      case OP.FROZENSET: {
        const its = popMark();
        push(created(new Set(its), its));
        break;
      }
      case OP.APPEND: {
        const v = pop();
        append(top(), [v]);
        break;
      }
      case OP.APPENDS: {
        const its = popMark();
        append(top(), its);
        break;
      }
      case OP.SETITEM: {
        const v = pop();
        const k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case OP.SETITEMS: {
        const kv = popMark();
        setItems(top(), kv);
        break;
      }
      case OP.ADDITEMS: {
        const its = popMark();
        const target = top();
        if (target instanceof Set) for (const v of its) target.add(v);
        else if (target instanceof PyObject) target.list.push(...its);
        else fail(`ADDITEMS on a ${typeName(target)}`);
        grew(target as object, its);
        break;
      }

      // --- memo
      case OP.PUT: {
        const i = parseIntText(lineText());
        if (typeof i !== 'number' || i < 0) fail('bad PUT index');
        memoPut(i as number);
        break;
      }
      case OP.BINPUT:
        memoPut(u8());
        break;
      case OP.LONG_BINPUT:
        memoPut(u32());
        break;
      case OP.MEMOIZE:
        memoPut(memo.size);
        break;
      case OP.GET: {
        const i = parseIntText(lineText());
        if (typeof i !== 'number') fail('bad GET index');
        push(memoGet(i as number));
        break;
      }
      case OP.BINGET:
        push(memoGet(u8()));
        break;
      case OP.LONG_BINGET:
        push(memoGet(u32()));
        break;

      // --- globals and calls: resolved by the hooks, placeholders stay inert
      case OP.GLOBAL: {
        const module = lineText();
        const name = lineText();
        push(global(module, name));
        break;
      }
      case OP.STACK_GLOBAL: {
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') fail('STACK_GLOBAL needs two strings');
        push(global(module as string, name as string));
        break;
      }
      case OP.REDUCE: {
        const args = pop();
        const callee = pop();
        push(callOn(callee, args, 'call'));
        break;
      }
      case OP.NEWOBJ: {
        const args = pop();
        const cls = pop();
        push(callOn(cls, args, 'new'));
        break;
      }
      case OP.NEWOBJ_EX: {
        const kwargs = pop();
        const args = pop();
        const cls = pop();
        if (!(kwargs instanceof Map)) fail('NEWOBJ_EX keyword arguments are not a dict');
        if ((kwargs as Map<unknown, unknown>).size > 0 && !(cls instanceof PyGlobal || cls instanceof PyObject)) fail('NEWOBJ_EX with keyword arguments');
        push(callOn(cls, args, 'new'));
        break;
      }
      case OP.INST: {
        const module = lineText();
        const name = lineText();
        const args = popMark();
        push(callOn(global(module, name), created(new PyTuple(args), args), 'new'));
        break;
      }
      case OP.OBJ: {
        const its = popMark();
        if (its.length === 0) fail('OBJ without a class');
        const args = its.slice(1);
        push(callOn(its[0], created(new PyTuple(args), args), 'new'));
        break;
      }
      case OP.BUILD: {
        const state = pop();
        const target = top();
        if (target instanceof PyObject) {
          target.state = state;
          grew(target, [state]);
        } else {
          hooks.build?.(target, state);
        }
        break;
      }
      case OP.BINPERSID:
        push(hooks.persistentLoad(pop()));
        break;
      case OP.PERSID:
        push(hooks.persistentLoad(lineText()));
        break;
      case OP.EXT1:
      case OP.EXT2:
      case OP.EXT4:
        fail('extension-registry codes (EXT1/2/4) are not supported');
        break;
      default:
        fail(`unknown opcode 0x${op.toString(16).padStart(2, '0')}`);
    }
  }
}

/** A short description of a pickled value's type, for messages. */
export function typeName(v: unknown): string {
  if (v === null) return 'None';
  if (v === undefined) return 'nothing';
  if (typeof v === 'boolean') return 'bool';
  if (typeof v === 'number') return Number.isInteger(v) ? 'int' : 'float';
  if (typeof v === 'bigint') return 'int';
  if (typeof v === 'string') return 'str';
  if (v instanceof Uint8Array) return 'bytes';
  if (Array.isArray(v)) return 'list';
  if (v instanceof PyTuple) return 'tuple';
  if (v instanceof Map) return 'dict';
  if (v instanceof Set) return 'set';
  if (v instanceof PyGlobal) return `reference to ${v.path}`;
  if (v instanceof PyObject) return v.how === 'call' ? `a call of ${v.callee.path} (never executed)` : `a ${v.callee.path} object (never constructed)`;
  const name = (v as { constructor?: { name?: string } }).constructor?.name;
  return typeof name === 'string' ? name : 'object';
}
