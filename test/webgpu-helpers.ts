/**
 * Shared by test/webgpu-*.test.ts: switch the test process to the webgpu backend (any adapter, lavapipe in CI),
 * and compare computations with the cpu backend (kernels-compare.ts).
 *
 * Without an adapter the webgpu tests skip with a visible message, unless MGLLAVA_REQUIRE_WEBGPU=1 (set by
 * .ci/run): then a missing adapter fails them.
 */
import { selectBackend } from '../src/backend/select.js';
import { backendVsCpu, type Fn, type Host } from './kernels-compare.js';

export const REQUIRE_WEBGPU = process.env.MGLLAVA_REQUIRE_WEBGPU === '1';

/** Select webgpu for this test file. Returns false (after saying why) when it cannot load and is not required. */
export async function useWebgpu(): Promise<boolean> {
  try {
    await selectBackend('webgpu');
    return true;
  } catch (e) {
    const why = (e as Error).message;
    if (REQUIRE_WEBGPU) throw new Error(`MGLLAVA_REQUIRE_WEBGPU=1 but the webgpu backend does not load: ${why}`);
    console.warn(`\n*** SKIPPING webgpu tests: ${why.split('\n').join(' ')}\n*** (install Mesa >= 25 lavapipe: scripts/install-lavapipe.sh; MGLLAVA_REQUIRE_WEBGPU=1 makes this a failure)\n`);
    return false;
  }
}

/** Relative error of each output of `f` on webgpu vs cpu (`fCpu` on cpu when given); ends on webgpu. */
export function webgpuVsCpu(f: Fn, inputs: Host[], fCpu: Fn = f): Promise<number[]> {
  return backendVsCpu('webgpu', f, inputs, fCpu);
}
