/**
 * The stock wasm kernels the pack wraps or builds on, captured before the pack replaces any of them
 * (after replacement `tf.getKernel(name, 'wasm')` returns the pack's kernel).
 */
import * as tf from '@tensorflow/tfjs';
import type { KernelConfig, KernelFunc, TensorInfo } from '@tensorflow/tfjs';
import type { Scratch } from './heap.js';

/** Stock kernels by name, null for the ones stock wasm lacks (captured before registering the pack's). */
const captured = new Map<string, KernelConfig | null>();

/** Remember the stock kernel `name` (call before replacing it); undefined when wasm has none. */
export function captureStock(name: string): KernelConfig | undefined {
  if (!captured.has(name)) captured.set(name, tf.getKernel(name, 'wasm') ?? null);
  return captured.get(name) ?? undefined;
}

/** The stock kernel function `name`; an error when the stock wasm backend has none. */
export function stockKernel(name: string): KernelFunc {
  const k = captured.has(name) ? captured.get(name) : tf.getKernel(name, 'wasm');
  if (!k) throw new Error(`wasm kernel pack: the stock wasm backend has no '${name}' kernel`);
  return k.kernelFunc;
}

/** `x` with its axes permuted by the stock (C++) Transpose kernel; the result belongs to `s`. */
export function transposeOn(s: Scratch, x: TensorInfo, perm: number[]): TensorInfo {
  const out = stockKernel(tf.Transpose)({ inputs: { x }, backend: s.be as never, attrs: { perm } }) as TensorInfo;
  return s.adopt(out);
}
