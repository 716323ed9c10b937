/**
 * `AddN` for webgpu with any number of inputs. The package's AddN binds every input in one shader, and a
 * device allows `maxStorageBuffersPerShaderStage` storage buffers (16 on lavapipe and many GPUs): the
 * gradient of a tensor used in more places than that (global-norm clipping sums one square per parameter)
 * failed pipeline validation and left garbage. Here the inputs are summed in groups that fit, then the
 * partial sums.
 */
import type { KernelFunc, TensorInfo } from '@tensorflow/tfjs';
import type { WebgpuBackendLike } from './program.js';

export function chunkedAddN(stock: KernelFunc): KernelFunc {
  const addN = (args: Parameters<KernelFunc>[0]): TensorInfo => {
    const inputs = args.inputs as unknown as TensorInfo[];
    const backend = args.backend as unknown as WebgpuBackendLike;
    const perShader = Math.max(2, (backend.device.limits.maxStorageBuffersPerShaderStage ?? 8) - 1); // one binding is the output
    if (inputs.length <= perShader) return stock(args) as TensorInfo;
    const partials: TensorInfo[] = [];
    for (let i = 0; i < inputs.length; i += perShader) {
      const group = inputs.slice(i, i + perShader);
      // A group of one would be an Identity (a new reference to the input): keep the input itself instead.
      partials.push(group.length === 1 ? group[0]! : (stock({ ...args, inputs: group as unknown as typeof args.inputs }) as TensorInfo));
    }
    try {
      return addN({ ...args, inputs: partials as unknown as typeof args.inputs });
    } finally {
      for (const t of partials) if (!inputs.includes(t)) backend.disposeData(t.dataId);
    }
  };
  return addN as KernelFunc;
}
