/**
 * `MgllavaRope` for webgpu: the wasm pack's fused rotary embedding (../kernels/rope.ts) as one WGSL pass,
 * out = x * c + swapHalves(x) * s for x [N, heads, hd] and tables c, s [N, 1, hd] (model/llm/rope.ts picks the
 * tables: forward or gradient). The composite it replaces is a [N*heads, hd] x [hd, hd] matmul plus three
 * elementwise kernels, each a dispatch and a full pass over the activations.
 */
import type { KernelFunc, TensorInfo } from '@tensorflow/tfjs';
import { ROPE_KERNEL, ropeKernelFits } from '../kernels/rope.js';
import { FlatProgram, flat, shaped, type WebgpuBackendLike } from './program.js';

export { ROPE_KERNEL };

export function webgpuRope(args: Parameters<KernelFunc>[0]): TensorInfo {
  const { x, c, s } = args.inputs as Record<'x' | 'c' | 's', TensorInfo>;
  const backend = args.backend as unknown as WebgpuBackendLike;
  const [n, heads, hd] = x.shape as [number, number, number];
  const table = [n, 1, hd].join(',');
  if (x.shape.length !== 3 || c.shape.join(',') !== table || s.shape.join(',') !== table || !ropeKernelFits(hd)) {
    throw new Error(`${ROPE_KERNEL} (webgpu kernel pack): expected x [N,heads,hd] with hd a multiple of 8 and tables [N,1,hd], got [${x.shape}], [${c.shape}], [${s.shape}]`);
  }
  for (const t of [x, c, s]) if (t.dtype !== 'float32') throw new Error(`${ROPE_KERNEL} (webgpu kernel pack): float32 only, got ${t.dtype}`);
  const program = new FlatProgram(
    'rope',
    ['x', 'cosT', 'sinT'],
    n * heads * hd,
    `let hd = uniforms.hd;
          let half = hd / 2;
          let j = index % hd;
          let t = (index / (uniforms.heads * hd)) * hd + j; // table element: row, column j
          let partner = select(index - half, index + half, j < half);
          setOutputAtIndex(index, x[index] * cosT[t] + x[partner] * sinT[t]);`,
    'heads : i32, hd : i32,',
  );
  const out = backend.runWebGPUProgram(program, [flat(x), flat(c), flat(s)], 'float32', [
    { type: 'int32', data: [heads] },
    { type: 'int32', data: [hd] },
  ]);
  return shaped(out, x.shape);
}
