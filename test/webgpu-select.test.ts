// Automatic selection never takes a software adapter; `--backend webgpu` takes any; doctor reports the adapter.
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { probeAdapter, softwareReason } from '../src/backend/webgpu/adapter.js';
import { REQUIRE_WEBGPU } from './webgpu-helpers.js';

const CLI = path.join(import.meta.dirname, '..', 'bin', 'mgllava.js');
const probe = await probeAdapter();
if (!probe.ok) {
  if (REQUIRE_WEBGPU) throw new Error(`MGLLAVA_REQUIRE_WEBGPU=1 but Dawn offers no adapter: ${probe.detail}`);
  console.warn(`\n*** SKIPPING webgpu selection tests: ${probe.detail}\n`);
}

describe('software adapters', () => {
  it('are recognised by fallback flag, architecture or name; GPUs are not', () => {
    expect(softwareReason({ vendor: 'mesa', architecture: 'software', device: 'llvmpipe', isFallbackAdapter: true })).toMatch(/fallback/);
    expect(softwareReason({ vendor: 'mesa', architecture: 'software', device: 'llvmpipe' })).toMatch(/software/);
    expect(softwareReason({ vendor: 'google', architecture: '', description: 'SwiftShader Device (Subzero)' })).toMatch(/swiftshader/i);
    expect(softwareReason({ vendor: 'microsoft', description: 'Microsoft Basic Render Driver' })).toMatch(/basic render/i);
    expect(softwareReason({ vendor: 'nvidia', architecture: 'hopper', device: '', description: 'NVIDIA H100 80GB HBM3' })).toBeNull();
    expect(softwareReason({ vendor: 'amd', architecture: 'rdna-3', description: 'AMD Radeon RX 7900 XTX (RADV NAVI31)' })).toBeNull();
  });
});

describe.runIf(probe.ok)('webgpu selection', () => {
  it('doctor --backend webgpu --json reports the adapter, its type and limits', () => {
    const r = spawnSync(process.execPath, [CLI, 'doctor', '--backend', 'webgpu', '--json'], { encoding: 'utf8', timeout: 120_000 });
    expect(r.status, r.stderr).toBe(0);
    const info = JSON.parse(r.stdout) as { backend: string; gpu: boolean; webgpu: { adapter: Record<string, unknown>; deviceLimits: Record<string, number>; maxTensorBytes: number; kernelPack: boolean } };
    expect(info.backend).toBe('webgpu');
    const a = info.webgpu.adapter;
    for (const k of ['vendor', 'architecture', 'device', 'description', 'type', 'software', 'limits']) expect(a, k).toHaveProperty(k);
    expect(a.software).toBe(probe.ok && probe.adapter.software);
    expect(info.gpu).toBe(!a.software);
    expect(info.webgpu.deviceLimits.maxStorageBufferBindingSize).toBe((a.limits as Record<string, number>).maxStorageBufferBindingSize); // the adapter's maximum was requested
    expect(info.webgpu.maxTensorBytes).toBeGreaterThan(0);
    expect(info.webgpu.kernelPack).toBe(true);
  });

  it('auto takes webgpu only on a hardware adapter (with lavapipe: wasm, saying why, without Dawn noise)', () => {
    const doctor = (json: boolean) =>
      spawnSync(process.execPath, [CLI, 'doctor', ...(json ? ['--json'] : [])], { encoding: 'utf8', timeout: 120_000, env: { ...process.env, MGLLAVA_BACKEND: '' } });
    const r = doctor(true);
    expect(r.status, r.stderr).toBe(0);
    const info = JSON.parse(r.stdout) as { backend: string; attempts: { name: string; ok: boolean; detail: string }[] };
    const tried = info.attempts.find((a) => a.name === 'webgpu')!;
    if (probe.ok && probe.adapter.software) {
      expect(info.backend).toBe('wasm');
      expect(tried.ok).toBe(false);
      expect(tried.detail).toMatch(/software adapter: never chosen automatically/);
      const text = doctor(false);
      expect(text.stdout).toMatch(/tried webgpu +failed: adapter .* is a software adapter/);
      expect(text.stderr).not.toMatch(/artificially reduced/); // the probe's Dawn noise stays in the child
    } else {
      expect(info.backend).toBe('webgpu');
    }
  });
});
