// The webgpu kernel pack (src/backend/webgpu/) against the cpu backend and the composites it replaces, and the
// backend's own checks (tensor too big for a binding, synchronous reads, device errors). Runs on any adapter
// (lavapipe in CI); see webgpu-helpers.ts for when it skips.
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { ResourceError, MgllavaError } from '../src/errors.js';
import { ADAMW_KERNEL } from '../src/backend/kernels/adamw.js';
import { ROPE_KERNEL } from '../src/backend/kernels/rope.js';
import { maxTensorBytes, webgpuDeviceLimits } from '../src/backend/webgpu/backend.js';
import { FlatProgram, type WebgpuBackendLike } from '../src/backend/webgpu/program.js';
import { adamwComposite, adamwUpdate, type AdamWStep } from '../src/nn/adamw-update.js';
import { applyRope, ropeKernelTables, rotateHalfMatrix, RopeTable, type RopeOperands } from '../src/model/llm/rope.js';
import { rand, relErr, runOn } from './kernels-compare.js';
import { useWebgpu, webgpuVsCpu } from './webgpu-helpers.js';

const gpu = await useWebgpu();

describe.runIf(gpu)('webgpu kernel pack', () => {
  it('is registered: AddN replaced, the fused RoPE and AdamW kernels present', () => {
    expect(tf.getBackend()).toBe('webgpu');
    for (const k of [tf.AddN, ROPE_KERNEL, ADAMW_KERNEL]) expect(tf.getKernel(k, 'webgpu'), k).toBeDefined();
  });

  for (const n of [1, 2, 15, 16, 40]) {
    it(`AddN of ${n} inputs equals cpu (more inputs than one shader may bind are summed in groups)`, async () => {
      const inputs = Array.from({ length: n }, (_, i) => rand([3, 5], i + 1));
      const [err] = await webgpuVsCpu((...xs) => tf.addN(xs), inputs);
      expect(err).toBeLessThan(1e-6);
    });
  }

  it('the gradient of a tensor used 40 times (an AddN of 40) equals cpu', async () => {
    const f = (x: tf.Tensor) => tf.grad((t: tf.Tensor) => tf.addN(Array.from({ length: 40 }, (_, i) => tf.sum(tf.mul(t, i + 1)))))(x);
    const [err] = await webgpuVsCpu(f, [rand([7], 3)]);
    expect(err).toBeLessThan(1e-6);
  });

  function ropeOperands(n: number, hd: number): { composite: RopeOperands; kernel: RopeOperands } {
    const { cos, sin } = new RopeTable(hd, 10000).rows(Array.from({ length: n }, (_, i) => (i * 7) % 50));
    const composite = { cos: tf.tensor3d(cos, [n, 1, hd]), sin: tf.tensor3d(sin, [n, 1, hd]), rotate: rotateHalfMatrix(hd) };
    return { composite, kernel: { ...composite, kernelTables: ropeKernelTables(sin, n, hd) } };
  }

  for (const [n, heads, hd] of [[5, 3, 8], [12, 4, 64], [1, 1, 16]] as const) {
    it(`MgllavaRope forward and gradient equal the composite on cpu ([${n},${heads},${hd}])`, async () => {
      const x = rand([n, heads, hd], 1);
      const dy = rand([n, heads, hd], 2);
      const run = (useKernel: boolean) => (xt: tf.Tensor, dyt: tf.Tensor) => {
        const ops = ropeOperands(n, hd);
        const o = useKernel ? ops.kernel : ops.composite;
        if (useKernel) expect(o.kernelTables).toBeDefined();
        const y = applyRope(xt as tf.Tensor3D, o);
        const g = tf.grad((t: tf.Tensor) => tf.sum(tf.mul(applyRope(t as tf.Tensor3D, o), dyt)))(xt);
        return [y, g];
      };
      const errs = await webgpuVsCpu(run(true), [x, dy], run(false));
      for (const e of errs) expect(e).toBeLessThan(1e-6);
    });
  }

  function adamStep(t: number, wd: number, gradScale?: number): AdamWStep {
    const [b1, b2, lr] = [0.9, 0.999, 1e-3];
    return { beta1: b1, beta2: b2, bc2Sqrt: Math.sqrt(1 - b2 ** t), eps: 1e-8, stepSize: lr / (1 - b1 ** t), decay: 1 - lr * wd, gradScale };
  }

  for (const n of [1, 3, 1000, 4099]) {
    it(`MgllavaAdamW equals the composite on cpu over 3 steps (${n} elements; weight decay; gradient scale)`, async () => {
      for (const [wd, scale] of [[0, undefined], [0.1, undefined], [0, 0.37]] as const) {
        const grads = [1, 2, 3].map((t) => {
          const g = rand([n], 10 + t);
          if (t === 2) g.data.forEach((v, i) => (g.data[i] = v * 1e-6)); // tiny gradients, like real ones
          return g;
        });
        const f = (kernel: boolean) => (p0: tf.Tensor, ...gs: tf.Tensor[]) => {
          let s = { p: p0, m: tf.zerosLike(p0), v: tf.zerosLike(p0) };
          gs.forEach((g, i) => {
            s = kernel ? adamwUpdate(s.p, s.m, s.v, g, adamStep(i + 1, wd, scale)) : adamwComposite(s.p, s.m, s.v, g, adamStep(i + 1, wd, scale));
          });
          return [s.p, s.m, s.v];
        };
        const errs = await webgpuVsCpu(f(true), [rand([n], 1), ...grads], f(false));
        for (const e of errs) expect(e).toBeLessThan(2e-6);
      }
    });
  }
});

describe.runIf(gpu)('webgpu backend checks', () => {
  it('refuses a tensor larger than one storage binding with a ResourceError naming shape, size and limits', () => {
    const limits = webgpuDeviceLimits()!;
    expect(limits.maxStorageBufferBindingSize).toBeGreaterThan(0);
    const elements = Math.floor(maxTensorBytes(limits) / 4) + 1;
    const before = tf.memory().numTensors;
    let err: unknown;
    try {
      tf.zeros([elements]);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ResourceError);
    expect((err as Error).message).toMatch(new RegExp(`float32 tensor \\[${elements}\\] needs .* MiB.*maxStorageBufferBindingSize`));
    expect((err as ResourceError).hint).toMatch(/doctor --backend webgpu/);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('a synchronous read of GPU data says to read asynchronously; data() works', async () => {
    // Large enough that the package does not compute it on the CPU (WEBGPU_CPU_FORWARD: < 1000 elements).
    const t = tf.tidy(() => tf.add(tf.ones([4096]), 1));
    expect(() => t.dataSync()).toThrow(/synchronous read .* \[4096\] float32 .* await tensor\.data\(\)/);
    expect((await t.data()).every((v) => v === 2)).toBe(true);
    expect(t.dataSync().every((v) => v === 2)).toBe(true); // cached on the host after the read
    t.dispose();
  });

  it('an error the device reports asynchronously (an invalid shader) fails the next read', async () => {
    const backend = tf.backend() as unknown as WebgpuBackendLike;
    const x = tf.ones([8]);
    const bad = new FlatProgram('deliberately_invalid', ['x'], 8, 'setOutputAtIndex(index, x[index] + undefinedName);');
    const out = backend.runWebGPUProgram(bad, [x], 'float32');
    const t = tf.engine().makeTensorFromTensorInfo(out);
    await expect(t.data()).rejects.toThrow(MgllavaError);
    tf.dispose([x, t]);
    // The device is still usable afterwards.
    expect(Array.from((await runOn('webgpu', (a) => tf.mul(a, 2), [rand([3], 5)]))[0]!.data)).toEqual(Array.from(rand([3], 5).data.map((v) => v * 2)));
  });

  it('relErr helper sanity', () => {
    expect(relErr([1, 2], [1, 2])).toBe(0);
  });
});
