/** Conversions between host tensors (safetensors I/O) and tf.Tensors. */
import * as tf from '@tensorflow/tfjs';
import type { HostTensor } from './dtype.js';

/** Copy a float32/int32 tf.Tensor to the host (the copy never aliases backend memory). */
export async function hostTensorFromTf(t: tf.Tensor): Promise<HostTensor> {
  if (t.dtype !== 'float32' && t.dtype !== 'int32') {
    throw new Error(`hostTensorFromTf: dtype '${t.dtype}' is not float32 or int32 (cast first)`);
  }
  const values = await t.data();
  const data = t.dtype === 'float32' ? new Float32Array(values as Float32Array) : new Int32Array(values as Int32Array);
  return { dtype: t.dtype, shape: [...t.shape], data };
}

/**
 * A tf.Tensor with the host tensor's values; the caller owns (disposes) it. Some backends (cpu) keep
 * `h.data` itself as the tensor's storage, so do not mutate `h.data` afterwards.
 */
export function toTf(h: HostTensor): tf.Tensor {
  return tf.tensor(h.data, h.shape, h.dtype);
}
