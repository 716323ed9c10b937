/**
 * What a PyTorch checkpoint's pickle means: the globals `torch.load(weights_only=True)` allows (rebuild functions,
 * storage classes, dtypes, OrderedDict, torch.Size, ...) as pickle hooks, and the tensors they describe.
 *
 * A tensor is `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)` over a storage: a flat run of
 * `numel` elements of one dtype, named by a persistent id ('storage', torch.HalfStorage, key, location, numel)
 * and stored elsewhere in the file (src/io/torch-load.ts finds it). Several tensors may view one storage.
 * Every offset, size and stride is checked against the storage when the tensor is rebuilt (nothing is read or
 * allocated then); `TorchTensor.read()` reads exactly the bytes it needs, by file offset, and returns them
 * contiguous (row-major), little-endian, in the saved dtype.
 *
 * Any other global stays an inert `PyGlobal` (src/io/pickle.ts): calling it yields an inert `PyObject`.
 */
import { ResourceError, WeightsError } from '../errors.js';
import { decodeTensor, elementCount, FILE_DTYPES, type HostTensor } from './dtype.js';
import { PyGlobal, PyObject, PyTuple, typeName, type PickleHooks } from './pickle.js';

/** The element types a tensor can be read as (safetensors names). */
export type TorchDType = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

/** torch.<X>Storage -> dtype; null = a storage type this reader cannot decode (complex, quantized). */
const STORAGE_DTYPES: Record<string, TorchDType | null> = {
  DoubleStorage: 'F64',
  FloatStorage: 'F32',
  HalfStorage: 'F16',
  BFloat16Storage: 'BF16',
  LongStorage: 'I64',
  IntStorage: 'I32',
  ShortStorage: 'I16',
  CharStorage: 'I8',
  ByteStorage: 'U8',
  BoolStorage: 'BOOL',
  // An untyped storage counts bytes; _rebuild_tensor_v3 names the dtype of its tensors.
  UntypedStorage: 'U8',
  ComplexFloatStorage: null,
  ComplexDoubleStorage: null,
  QInt8Storage: null,
  QUInt8Storage: null,
  QInt32Storage: null,
  QUInt4x2Storage: null,
  QUInt2x4Storage: null,
};

/** torch.<dtype> (the name `str(dtype)` gives) -> dtype; null = known but not decodable here. */
const DTYPES: Record<string, TorchDType | null> = {
  float64: 'F64', double: 'F64', float32: 'F32', float: 'F32', float16: 'F16', half: 'F16', bfloat16: 'BF16',
  int64: 'I64', long: 'I64', int32: 'I32', int: 'I32', int16: 'I16', short: 'I16', int8: 'I8', uint8: 'U8', bool: 'BOOL',
  complex32: null, complex64: null, complex128: null, cfloat: null, cdouble: null, chalf: null,
  uint16: null, uint32: null, uint64: null, qint8: null, quint8: null, qint32: null, quint4x2: null, quint2x4: null,
  float8_e4m3fn: null, float8_e5m2: null, float8_e4m3fnuz: null, float8_e5m2fnuz: null,
};

/** Allowed rebuild functions whose tensors this reader does not support (their value is an UnsupportedTensor). */
const UNSUPPORTED_REBUILDS: Record<string, string> = {
  _rebuild_qtensor: 'a quantized tensor',
  _rebuild_sparse_tensor: 'a sparse tensor',
  _rebuild_sparse_csr_tensor: 'a sparse tensor',
  _rebuild_nested_tensor: 'a nested tensor',
  _rebuild_meta_tensor_no_storage: 'a meta tensor (no data)',
  _rebuild_wrapper_subclass: 'a tensor subclass without storage',
  _rebuild_device_tensor_from_numpy: 'a tensor stored as a numpy array',
  _rebuild_device_tensor_from_cpu_tensor: 'a device tensor',
};

/** A global the reader understands, by role. */
export class TorchGlobal {
  constructor(
    readonly module: string,
    readonly name: string,
    readonly role: 'function' | 'storage' | 'dtype' | 'type',
    /** storage / dtype roles: the element type (null: not decodable). */
    readonly dtype: TorchDType | null = null,
  ) {}

  get path(): string {
    return `${this.module}.${this.name}`;
  }
}

/** Where a storage's bytes are: reads `target.length` bytes from byte `offset` of the storage. */
export interface StorageBytes {
  read(offset: number, target: Uint8Array): Promise<void>;
}

/** A flat array of `numel` elements of one dtype, somewhere in the checkpoint file. */
export interface TorchStorage {
  key: string;
  /** null: a storage type this reader cannot decode (complex, quantized); its tensors are unsupported. */
  dtype: TorchDType | null;
  /** The storage class as pickled ('HalfStorage'), for messages. */
  typeName: string;
  numel: number;
  bigEndian: boolean;
  bytes: StorageBytes;
}

/** A tensor kind this reader knows but cannot decode (quantized, sparse, complex, ...). */
export class UnsupportedTensor {
  constructor(readonly what: string) {}
}

/**
 * A view may read more bytes than its storage holds only through stride 0 or overlapping strides (`expand`):
 * beyond this many extra bytes it is refused, so a tiny storage cannot ask for terabytes.
 */
export const MAX_VIEW_EXPANSION = 1 << 30;

/** Reads covering at most this much more than the tensor itself are done in one go, then gathered. */
const GATHER_SLACK = 16 << 20;

const DTYPE_NAMES: Record<TorchDType, string> = {
  F64: 'float64', F32: 'float32', F16: 'float16', BF16: 'bfloat16', I64: 'int64', I32: 'int32', I16: 'int16', I8: 'int8', U8: 'uint8', BOOL: 'bool',
};

export function torchDTypeName(d: TorchDType): string {
  return DTYPE_NAMES[d];
}

/** A view of a storage: `storage[offset + sum(i_k * stride_k)]` for every index `i` of `shape`. Checked at rebuild. */
export class TorchTensor {
  readonly numel: number;

  constructor(
    readonly file: string,
    readonly dtype: TorchDType,
    readonly shape: readonly number[],
    readonly stride: readonly number[],
    /** In elements of `dtype`. */
    readonly offset: number,
    /** Offsets and strides count elements of `dtype` over the storage's bytes. */
    readonly storage: TorchStorage,
  ) {
    this.numel = elementCount(shape) as number;
  }

  get elementSize(): number {
    return FILE_DTYPES[this.dtype].size;
  }

  /** Bytes of the contiguous result. */
  get byteLength(): number {
    return this.numel * this.elementSize;
  }

  /** Row-major (C-contiguous) over the storage: one read. */
  get contiguous(): boolean {
    let expect = 1;
    for (let i = this.shape.length - 1; i >= 0; i--) {
      if (this.shape[i] !== 1 && this.stride[i] !== expect) return false;
      expect *= this.shape[i]!;
    }
    return true;
  }

  /**
   * The tensor's elements, contiguous row-major, little-endian, in its saved dtype (read now, by file offset), in a
   * new array or in `into` (exactly `byteLength` bytes: a caller streaming many tensors reuses one buffer).
   */
  async read(into?: Uint8Array): Promise<Uint8Array> {
    const es = this.elementSize;
    let out: Uint8Array;
    if (into) {
      if (into.length !== this.byteLength) throw new Error(`TorchTensor.read: target of ${into.length} bytes for a tensor of ${this.byteLength}`);
      out = into;
    } else {
      try {
        out = new Uint8Array(this.byteLength);
      } catch (e) {
        throw new ResourceError(`${this.file}: cannot allocate ${this.byteLength} bytes for a ${torchDTypeName(this.dtype)} tensor of shape [${this.shape}]`, { cause: e });
      }
    }
    if (this.numel === 0) return out;
    if (this.contiguous) {
      await this.storage.bytes.read(this.offset * es, out);
    } else {
      const last = this.offset + this.shape.reduce((s, d, i) => s + (d - 1) * this.stride[i]!, 0);
      const cover = (last - this.offset + 1) * es;
      if (cover <= 2 * out.length + GATHER_SLACK) {
        const buf = new Uint8Array(cover);
        await this.storage.bytes.read(this.offset * es, buf);
        gather(buf, this.shape, this.stride, es, out);
      } else {
        await this.readRuns(out);
      }
    }
    if (this.storage.bigEndian && es > 1) swapBytes(out, es);
    return out;
  }

  /** The tensor as a host tensor (float32 / int32, see src/io/dtype.ts). */
  async readHost(name: string): Promise<HostTensor> {
    const bytes = await this.read();
    const data = decodeTensor(this.dtype, bytes.buffer as ArrayBuffer, this.file, name);
    return { dtype: FILE_DTYPES[this.dtype].host, shape: [...this.shape], data };
  }

  /** A view far sparser than its storage span: read each contiguous inner run where it lies. */
  private async readRuns(out: Uint8Array): Promise<void> {
    const es = this.elementSize;
    const { outer, run } = innerRun(this.shape, this.stride);
    const idx = new Array<number>(outer).fill(0);
    let dst = 0;
    for (;;) {
      let src = this.offset;
      for (let k = 0; k < outer; k++) src += idx[k]! * this.stride[k]!;
      await this.storage.bytes.read(src * es, out.subarray(dst, dst + run * es));
      dst += run * es;
      let k = outer - 1;
      while (k >= 0 && ++idx[k]! === this.shape[k]) idx[k--] = 0;
      if (k < 0) return;
    }
  }
}

/** The trailing dims that are contiguous collapse into one run of `run` elements; `outer` dims remain. */
function innerRun(shape: readonly number[], stride: readonly number[]): { outer: number; run: number } {
  let run = 1;
  let k = shape.length;
  while (k > 0 && (shape[k - 1] === 1 || stride[k - 1] === run)) {
    run *= shape[k - 1]!;
    k--;
  }
  return { outer: k, run };
}

/** Copy the strided view of `src` (element 0 = the view's offset) into contiguous `out`. */
function gather(src: Uint8Array, shape: readonly number[], stride: readonly number[], es: number, out: Uint8Array): void {
  const { outer, run } = innerRun(shape, stride);
  const idx = new Array<number>(outer).fill(0);
  const runBytes = run * es;
  let dst = 0;
  const n = outer === 0 ? 1 : shape.slice(0, outer).reduce((a, b) => a * b, 1);
  if (run > 1 || outer === 0) {
    for (let c = 0; c < n; c++) {
      let p = 0;
      for (let k = 0; k < outer; k++) p += idx[k]! * stride[k]!;
      out.set(src.subarray(p * es, p * es + runBytes), dst);
      dst += runBytes;
      for (let k = outer - 1; k >= 0 && ++idx[k]! === shape[k]; k--) idx[k] = 0;
    }
    return;
  }
  // run === 1: one element at a time through typed views (both buffers are fresh allocations, so aligned); the
  // innermost dim moves by its stride. 8-byte elements move as two 32-bit words (no float canonicalisation).
  const Typed = es === 8 || es === 4 ? Uint32Array : es === 2 ? Uint16Array : Uint8Array;
  const words = es === 8 ? 2 : 1;
  const s = new Typed(src.buffer as ArrayBuffer, src.byteOffset, src.byteLength / Typed.BYTES_PER_ELEMENT);
  const d = new Typed(out.buffer as ArrayBuffer, out.byteOffset, out.byteLength / Typed.BYTES_PER_ELEMENT);
  const inner = shape[outer - 1]!;
  const innerStride = stride[outer - 1]!;
  const rows = n / inner;
  for (let r = 0; r < rows; r++) {
    let p = 0;
    for (let k = 0; k < outer - 1; k++) p += idx[k]! * stride[k]!;
    for (let j = 0; j < inner; j++, p += innerStride) {
      for (let w = 0; w < words; w++) d[dst++] = s[p * words + w]!;
    }
    for (let k = outer - 2; k >= 0 && ++idx[k]! === shape[k]; k--) idx[k] = 0;
  }
}

function swapBytes(b: Uint8Array, es: number): void {
  for (let i = 0; i < b.length; i += es) b.subarray(i, i + es).reverse();
}

// --- pickle hooks --------------------------------------------------------------------------------------------

const isIndex = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

/** A Python int tuple (tuple, torch.Size or list) of non-negative safe integers, or null. */
function indexTuple(v: unknown): number[] | null {
  const items = v instanceof PyTuple ? v.items : Array.isArray(v) ? v : null;
  if (!items || !items.every(isIndex)) return null;
  return items as number[];
}

/** Module aliases of Python 2 pickles (pickle's NAME_MAPPING / IMPORT_MAPPING for the names that matter here). */
const MODULE_ALIASES: Record<string, string> = { __builtin__: 'builtins', copy_reg: 'copyreg' };

/** The globals `torch.load(weights_only=True)` allows, by full path. */
function allowedGlobal(module: string, name: string): TorchGlobal | null {
  const path = `${module}.${name}`;
  const fn = (role: TorchGlobal['role'] = 'function') => new TorchGlobal(module, name, role);
  switch (path) {
    case 'collections.OrderedDict':
    case 'collections.Counter':
    case 'torch._utils._rebuild_tensor':
    case 'torch._utils._rebuild_tensor_v2':
    case 'torch._utils._rebuild_tensor_v3':
    case 'torch._utils._rebuild_parameter':
    case 'torch._utils._rebuild_parameter_with_state':
    case 'torch._tensor._rebuild_from_type_v2':
    case 'torch.nn.parameter.Parameter':
    case 'torch.Size':
    case 'torch.device':
    case 'torch.serialization._get_layout':
    case '_codecs.encode':
    case 'builtins.set':
    case 'builtins.frozenset':
    case 'builtins.bytearray':
      return fn();
    case 'torch.Tensor':
      return fn('type');
  }
  if (module === 'torch._utils' && name in UNSUPPORTED_REBUILDS) return fn();
  const storageModule = module === 'torch' || module === 'torch.cuda' || module === 'torch.storage';
  if (storageModule && Object.prototype.hasOwnProperty.call(STORAGE_DTYPES, name)) return new TorchGlobal(module, name, 'storage', STORAGE_DTYPES[name]);
  if (module === 'torch' && Object.prototype.hasOwnProperty.call(DTYPES, name)) return new TorchGlobal(module, name, 'dtype', DTYPES[name]);
  return null;
}

export interface TorchHooksOptions {
  file: string;
  /** The storage a persistent id names (format-specific: zip entry or legacy offset), checked there. */
  storage(pid: unknown): unknown;
}

/**
 * Pickle hooks implementing the weights_only allow-list: allowed globals become `TorchGlobal`s whose calls build
 * dicts, tuples, bytes and tensors here; everything else stays an inert placeholder.
 */
export function torchHooks(o: TorchHooksOptions): PickleHooks {
  const fail = (why: string): never => {
    throw new WeightsError(`${o.file}: ${why}`);
  };
  const args = (t: PyTuple, f: TorchGlobal, min: number, max = min): readonly unknown[] => {
    if (t.items.length < min || t.items.length > max) fail(`${f.path} called with ${t.items.length} arguments (expected ${min === max ? min : `${min}-${max}`})`);
    return t.items;
  };

  const rebuild = (f: TorchGlobal, a: readonly unknown[], dtypeArg?: unknown): TorchTensor | UnsupportedTensor => {
    const [storage, offset, size, stride] = a;
    const what = `${f.name}(storage, offset ${String(offset)}, size ${describe(size)}, stride ${describe(stride)})`;
    if (!isStorage(storage)) return fail(`${what}: the storage argument is ${typeName(storage)}, not a storage`);
    const shape = indexTuple(size);
    const strides = indexTuple(stride);
    if (!isIndex(offset) || !shape || !strides || shape.length !== strides.length) {
      return fail(`${what}: offset, size and stride must be non-negative integers, size and stride of one length`);
    }
    let dtype = storage.dtype;
    if (dtypeArg !== undefined) {
      if (!(dtypeArg instanceof TorchGlobal) || dtypeArg.role !== 'dtype') return fail(`${what}: the dtype argument is ${typeName(dtypeArg)}`);
      if (dtypeArg.dtype === null) return new UnsupportedTensor(`a ${dtypeArg.name} tensor`);
      dtype = dtypeArg.dtype;
    }
    if (dtype === null) return new UnsupportedTensor(`a tensor over a ${storage.typeName}`);
    const numel = elementCount(shape);
    if (numel === null || numel > Number.MAX_SAFE_INTEGER / 8) return fail(`${what}: absurd element count`);
    // Storage capacity in elements of the tensor's dtype (v3 reinterprets an untyped storage's bytes).
    const storageBytes = storage.numel * FILE_DTYPES[storage.dtype ?? 'U8'].size;
    const capacity = Math.floor(storageBytes / FILE_DTYPES[dtype].size);
    let last = offset;
    for (let i = 0; i < shape.length; i++) {
      if (shape[i] === 0) break;
      const step = (shape[i]! - 1) * strides[i]!;
      if (!Number.isSafeInteger(step) || !Number.isSafeInteger(last + step)) return fail(`${what}: absurd stride`);
      last += step;
    }
    if (numel === 0 ? offset > capacity : last >= capacity) {
      return fail(
        `a tensor of shape [${shape}] (stride [${strides}], offset ${offset}) reaches element ${numel === 0 ? offset : last} of storage ` +
          `'${storage.key}', which has ${capacity} ${torchDTypeName(dtype)} elements (corrupt or hostile file)`,
      );
    }
    const bytes = numel * FILE_DTYPES[dtype].size;
    if (bytes > storageBytes + MAX_VIEW_EXPANSION) {
      return fail(`a tensor of shape [${shape}] (stride [${strides}]) would expand ${storageBytes} bytes of storage '${storage.key}' to ${bytes} bytes (refused above ${MAX_VIEW_EXPANSION} extra)`);
    }
    return new TorchTensor(o.file, dtype, shape, strides, offset, storage);
  };

  const asTensor = (v: unknown, f: TorchGlobal): TorchTensor | UnsupportedTensor =>
    v instanceof TorchTensor || v instanceof UnsupportedTensor ? v : fail(`${f.path}: the data argument is ${typeName(v)}, not a tensor`);

  const call = (f: unknown, t: PyTuple, how: 'call' | 'new'): unknown => {
    if (!(f instanceof TorchGlobal) || f.role !== 'function') {
      // An allowed global that is not a function (a dtype, a storage class, torch.Tensor) called: inert, like placeholders.
      const g = f instanceof TorchGlobal ? new PyGlobal(f.module, f.name) : new PyGlobal('?', typeName(f));
      return new PyObject(g, t, how);
    }
    switch (f.path) {
      case 'collections.OrderedDict':
      case 'collections.Counter': {
        const a = args(t, f, 0, 1);
        const m = new Map<unknown, unknown>();
        if (a.length === 1 && a[0] !== null) {
          const src = a[0];
          if (src instanceof Map) for (const [k, v] of src) m.set(k, v);
          else if (Array.isArray(src) || src instanceof PyTuple) {
            for (const pair of Array.isArray(src) ? src : src.items) {
              const kv = pair instanceof PyTuple ? pair.items : Array.isArray(pair) ? pair : null;
              if (!kv || kv.length !== 2) fail(`${f.path}: an item is not a (key, value) pair`);
              m.set(kv![0], kv![1]);
            }
          } else fail(`${f.path} of a ${typeName(src)}`);
        }
        return m;
      }
      case 'torch.Size': {
        const dims = indexTuple(args(t, f, 0, 1)[0] ?? new PyTuple([]));
        return dims ? new PyTuple(dims) : fail('torch.Size of something that is not a tuple of sizes');
      }
      case 'torch.device':
        return args(t, f, 1, 2).map(String).join(':');
      case 'torch.serialization._get_layout':
        return String(args(t, f, 1)[0]);
      case '_codecs.encode': {
        const [s, enc] = args(t, f, 1, 2);
        if (typeof s !== 'string') return fail('_codecs.encode of a non-string');
        if (enc !== undefined && enc !== 'latin1' && enc !== 'latin-1') return fail(`_codecs.encode with encoding ${String(enc)}`);
        const b = new Uint8Array(s.length);
        for (let i = 0; i < s.length; i++) {
          const c = s.charCodeAt(i);
          if (c > 0xff) fail('_codecs.encode: a character outside latin-1');
          b[i] = c;
        }
        return b;
      }
      case 'builtins.set':
      case 'builtins.frozenset': {
        const a = args(t, f, 0, 1);
        const src = a[0];
        return new Set(src === undefined ? [] : Array.isArray(src) ? src : src instanceof PyTuple ? src.items : src instanceof Set ? src : fail(`${f.name} of a ${typeName(src)}`));
      }
      case 'builtins.bytearray': {
        const a = args(t, f, 0, 1);
        return a[0] instanceof Uint8Array ? Uint8Array.from(a[0]) : a.length === 0 ? new Uint8Array(0) : fail(`bytearray of a ${typeName(a[0])}`);
      }
      case 'torch._utils._rebuild_tensor':
        return rebuild(f, args(t, f, 4));
      case 'torch._utils._rebuild_tensor_v2':
        return rebuild(f, args(t, f, 6, 7));
      case 'torch._utils._rebuild_tensor_v3': {
        const a = args(t, f, 7, 8);
        return rebuild(f, a, a[6]);
      }
      case 'torch._utils._rebuild_parameter':
        return asTensor(args(t, f, 3)[0], f);
      case 'torch._utils._rebuild_parameter_with_state':
        return asTensor(args(t, f, 4)[0], f);
      case 'torch.nn.parameter.Parameter':
        return asTensor(args(t, f, 0, 2)[0], f);
      case 'torch._tensor._rebuild_from_type_v2': {
        // (func, new_type, args, state): the tensor func(*args) builds; its subclass type and state do not matter here.
        const [func, , fargs] = args(t, f, 4);
        if (!(fargs instanceof PyTuple)) return fail('_rebuild_from_type_v2: arguments are not a tuple');
        if (func instanceof PyGlobal || func instanceof PyObject) return new PyObject(func instanceof PyGlobal ? func : func.callee, fargs, 'call');
        return call(func, fargs, 'call');
      }
    }
    if (f.module === 'torch._utils' && f.name in UNSUPPORTED_REBUILDS) return new UnsupportedTensor(UNSUPPORTED_REBUILDS[f.name]!);
    return new PyObject(new PyGlobal(f.module, f.name), t, how);
  };

  return {
    global(module, name) {
      const m = MODULE_ALIASES[module] ?? module;
      return allowedGlobal(m, name) ?? new PyGlobal(m, name);
    },
    persistentLoad: (pid) => o.storage(pid),
    call,
    // BUILD on an OrderedDict (its `_metadata` attribute), a tensor or a parameter: the state is not needed.
    build() {},
  };
}

export function isStorage(v: unknown): v is TorchStorage {
  return typeof v === 'object' && v !== null && (v as { bytes?: unknown }).bytes !== undefined && typeof (v as TorchStorage).key === 'string';
}

/** A short rendering of a small pickled value for messages. */
function describe(v: unknown): string {
  const items = v instanceof PyTuple ? v.items : Array.isArray(v) ? v : null;
  if (items) return `(${items.slice(0, 8).map((x) => (typeof x === 'number' || typeof x === 'bigint' ? String(x) : typeName(x))).join(', ')}${items.length > 8 ? ', ...' : ''})`;
  return typeof v === 'number' || typeof v === 'bigint' ? String(v) : typeName(v);
}

/** The (storage type, key, location, numel) of a persistent id tuple ('storage', type, key, location, numel, ...). */
export function storagePid(file: string, pid: unknown, arity: readonly number[]): { type: TorchGlobal; key: string; numel: number; rest: readonly unknown[] } {
  const fail = (why: string): never => {
    throw new WeightsError(`${file}: persistent id ${why}`);
  };
  if (!(pid instanceof PyTuple)) return fail(`is a ${typeName(pid)}, not a ('storage', ...) tuple`);
  const [tag, type, key, , numel] = pid.items;
  if (tag !== 'storage') return fail(`of kind ${JSON.stringify(typeof tag === 'string' ? tag : typeName(tag))} (only 'storage' is known)`);
  if (!arity.includes(pid.items.length)) return fail(`has ${pid.items.length} fields`);
  if (!(type instanceof TorchGlobal) || type.role !== 'storage') return fail(`names ${type instanceof PyGlobal ? type.path : typeName(type)}, not a torch storage type`);
  if (typeof key !== 'string' || key === '') return fail(`has a storage key that is a ${typeName(key)}`);
  if (!isIndex(numel)) return fail(`of storage '${key}' has an element count that is not a non-negative integer`);
  return { type, key, numel, rest: pid.items.slice(5) };
}
