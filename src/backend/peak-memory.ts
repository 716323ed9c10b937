/**
 * Measured peak memory of the backend, for a run's metrics and summary (and the dry-run's estimate vs
 * measured table).
 *
 * - wasm: the memory guard's count of live heap bytes (every tensor's data plus XNNPACK's packed copies),
 *   the number that meets the heap limit. Exact at every allocation.
 * - other backends: the most bytes tfjs' engine counted in live tensors, sampled at every tensor it tracks.
 *   The engine counts each tensor object, so views sharing one buffer (reshapes) count more than once:
 *   an upper bound of the backend's own use, without its workspaces.
 */
import * as tf from '@tensorflow/tfjs';
import { resetWasmPeak, wasmPeakBytes } from './memory.js';

export interface PeakMemory {
  bytes: number;
  /** What was measured. */
  source: 'wasm heap' | 'tfjs tensors';
}

interface EngineState {
  state: { numBytes: number };
  trackTensor(a: unknown, backend: unknown): void;
}

let enginePeak = 0;
let engineWrapped = false;

/** Sample the engine's byte count at every new tensor (installed once, on first use). */
function wrapEngine(): EngineState {
  const engine = tf.engine() as unknown as EngineState;
  if (!engineWrapped) {
    engineWrapped = true;
    const track = engine.trackTensor.bind(engine);
    engine.trackTensor = (a, backend) => {
      track(a, backend);
      if (engine.state.numBytes > enginePeak) enginePeak = engine.state.numBytes;
    };
  }
  return engine;
}

/** Start measuring from what is in use now (e.g. at the start of a run). */
export function resetPeakMemory(): void {
  resetWasmPeak();
  enginePeak = wrapEngine().state.numBytes;
}

/** The peak since `resetPeakMemory` (or since the backend started). */
export function peakMemory(): PeakMemory {
  const wasm = wasmPeakBytes();
  if (wasm !== null) return { bytes: wasm, source: 'wasm heap' };
  const engine = wrapEngine();
  return { bytes: Math.max(enginePeak, engine.state.numBytes), source: 'tfjs tensors' };
}
