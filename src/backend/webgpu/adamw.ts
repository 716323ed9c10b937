/**
 * `MgllavaAdamW` for webgpu: the wasm pack's fused AdamW update (../kernels/adamw.ts, same constants, same
 * order of operations as nn/adamw-update.ts's composite) as WGSL. A program writes one output, so the update is
 * three passes (m', v', p'; p' recomputes m' and v' in registers): 3 dispatches per parameter instead of the
 * composite's ~10.
 */
import * as tf from '@tensorflow/tfjs';
import type { KernelFunc, TensorInfo } from '@tensorflow/tfjs';
import { ADAMW_KERNEL, type AdamWKernelAttrs } from '../kernels/adamw.js';
import { FlatProgram, flat, shaped, type WebgpuBackendLike } from './program.js';

export { ADAMW_KERNEL };

const UNIFORMS = 'b1 : f32, omb1 : f32, b2 : f32, omb2 : f32, bc2 : f32, eps : f32, stepSize : f32, decay : f32, gscale : f32,';

/**
 * Per output: the inputs it reads (a shader's unused inputs would be dropped from its bind group layout) and its
 * WGSL. m' and v' as in the composite; p' recomputes both.
 */
const M = 'let mi = m[index] * uniforms.b1 + (g[index] * uniforms.gscale) * uniforms.omb1;';
const V = 'let gv = g[index] * uniforms.gscale;\n          let vi = v[index] * uniforms.b2 + (gv * gv) * uniforms.omb2;';
const PROGRAMS = {
  p: { reads: ['p', 'm', 'v', 'g'], body: `${M}\n          ${V}\n          let den = sqrt(vi) / uniforms.bc2 + uniforms.eps;\n          setOutputAtIndex(index, p[index] * uniforms.decay - (mi / den) * uniforms.stepSize);` },
  m: { reads: ['m', 'g'], body: `${M}\n          setOutputAtIndex(index, mi);` },
  v: { reads: ['v', 'g'], body: `${V}\n          setOutputAtIndex(index, vi);` },
} as const;

export function webgpuAdamW(args: Parameters<KernelFunc>[0]): TensorInfo[] {
  const { p, m, v, g } = args.inputs as Record<'p' | 'm' | 'v' | 'g', TensorInfo>;
  const { consts } = args.attrs as unknown as AdamWKernelAttrs;
  const backend = args.backend as unknown as WebgpuBackendLike;
  const n = tf.util.sizeFromShape(p.shape);
  for (const [name, t] of [['p', p], ['m', m], ['v', v], ['g', g]] as const) {
    if (t.dtype !== 'float32' || tf.util.sizeFromShape(t.shape) !== n) {
      throw new Error(`${ADAMW_KERNEL} (webgpu kernel pack): ${name} must be float32 of ${n} elements like p [${p.shape}], got ${t.dtype} [${t.shape}]`);
    }
  }
  if (consts.length !== 9) throw new Error(`${ADAMW_KERNEL} (webgpu kernel pack): expected 9 constants, got ${consts.length}`);
  const inputs: Record<string, TensorInfo> = { p: flat(p), m: flat(m), v: flat(v), g: flat(g) };
  const uniforms = consts.map((c) => ({ type: 'float32' as const, data: [c] }));
  return (['p', 'm', 'v'] as const).map((which) => {
    const { reads, body } = PROGRAMS[which];
    const program = new FlatProgram(`adamw_${which}`, [...reads], n, body, UNIFORMS);
    return shaped(backend.runWebGPUProgram(program, reads.map((r) => inputs[r]!), 'float32', uniforms), p.shape);
  });
}
