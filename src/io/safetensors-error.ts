import { WeightsError } from '../errors.js';
/** Every error about a safetensors file (or an index/shard set) names the file and, when relevant, the tensor. */
export class SafetensorsError extends WeightsError {
  constructor(
    readonly file: string,
    readonly reason: string,
    readonly tensor?: string,
  ) {
    super(tensor === undefined ? `${file}: ${reason}` : `${file}: tensor '${tensor}': ${reason}`);
    this.name = 'SafetensorsError';
  }
}
