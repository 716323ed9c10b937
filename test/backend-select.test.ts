import { spawnSync } from 'node:child_process';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { BackendError, currentBackend, parseBackendName, selectBackend } from '../src/backend/select.js';
import { runtimeInfo } from '../src/backend/info.js';

describe('backend selection', () => {
  it('runs the tests on the backend setup asked for and reports it', () => {
    const want = process.env.MGLLAVA_BACKEND ?? 'wasm';
    expect(tf.getBackend()).toBe(want);
    expect(currentBackend()?.name).toBe(want);
    const info = runtimeInfo();
    expect(info.backend).toBe(want);
    expect(info.tfjsVersion).toBe(tf.version.tfjs);
    expect(typeof info.gpu).toBe('boolean');
  });

  it('parses names and rejects unknown ones', () => {
    expect(parseBackendName('WASM')).toBe('wasm');
    expect(parseBackendName('auto')).toBeNull();
    expect(parseBackendName(undefined)).toBeNull();
    expect(() => parseBackendName('gpu')).toThrow(/unknown backend 'gpu'/);
  });

  it('an explicitly requested backend that cannot load is an error, not a fallback', async () => {
    const before = tf.getBackend();
    let installed = true;
    try {
      await import('@tensorflow/tfjs-node-gpu' as string);
    } catch {
      installed = false;
    }
    if (installed) return; // a machine with libtensorflow: nothing to refuse here
    await expect(selectBackend('tensorflow')).rejects.toThrow(BackendError);
    await expect(selectBackend(null, { MGLLAVA_BACKEND: 'tensorflow' })).rejects.toThrow(/MGLLAVA_BACKEND/);
    expect(tf.getBackend()).toBe(before);
  });

  it('the doctor names where matrix products run; MGLLAVA_NATIVE=on without the addon, or a bad value, is an error', () => {
    const cli = path.join(import.meta.dirname, '..', 'bin', 'mgllava.js');
    const doctor = (env: Record<string, string>) =>
      spawnSync(process.execPath, [cli, 'doctor', '--backend', 'wasm'], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 60_000 });
    const off = doctor({ MGLLAVA_NATIVE: 'off' });
    expect(off.status).toBe(0);
    expect(off.stdout).toMatch(/matmul +BatchMatMul on XNNPACK \(native addon switched off\) \(MGLLAVA_NATIVE=off\)/);
    const missing = doctor({ MGLLAVA_NATIVE: 'on', MGLLAVA_NATIVE_ADDON: '/nonexistent/mgllava_native.node' });
    expect(missing.status).not.toBe(0);
    expect(missing.stderr).toMatch(/MGLLAVA_NATIVE=on but the native matmul is unusable: addon not built/);
    const bad = doctor({ MGLLAVA_NATIVE: 'maybe' });
    expect(bad.status).not.toBe(0);
    expect(bad.stderr).toMatch(/MGLLAVA_NATIVE='maybe': expected auto, on or off/);
  });

  it('the flag wins over the environment', async () => {
    const choice = await selectBackend('cpu', { MGLLAVA_BACKEND: 'tensorflow' });
    expect(choice.name).toBe('cpu');
    expect(choice.reason).toMatch(/--backend/);
    const back = await selectBackend(process.env.MGLLAVA_BACKEND ?? 'wasm');
    expect(tf.getBackend()).toBe(back.name);
  });
});
