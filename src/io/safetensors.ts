/**
 * Safetensors I/O (no tfjs dependency; see host-tensor.ts for tf conversions).
 * Format: u64 LE header length N, N bytes of JSON header, then the little-endian data region.
 */
export type { HostDType, HostTensor, FileDType } from './dtype.js';
export { FILE_DTYPES } from './dtype.js';
export { SafetensorsError } from './safetensors-error.js';
export { MAX_HEADER_BYTES } from './safetensors-header.js';
export { SafetensorsReader, readSafetensors, type TensorInfo, type TensorReader } from './safetensors-read.js';
export { writeSafetensors, type LazyTensor, type RawTensor, type TensorSource, type TensorValue } from './safetensors-write.js';
export {
  ShardedReader,
  writeShardedSafetensors,
  shardFileName,
  type ShardedWriteOptions,
  type ShardedWriteResult,
} from './sharded.js';
