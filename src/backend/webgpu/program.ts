/**
 * How the pack's kernels run WGSL: a program object of the shape `@tensorflow/tfjs-backend-webgpu` compiles
 * (`WebGPUBackend.runWebGPUProgram`: it declares the inputs as `array<f32>` storage buffers named after
 * `variableNames`, the output as `result`, a `uniforms` struct with the shapes, `size` and the program's own
 * fields, and calls `main(index)` once per output element).
 */
import type { DataType, TensorInfo } from '@tensorflow/tfjs';

/** The parts of the package's WebGPUBackend the pack uses (declared here: the package is optional). */
export interface WebgpuBackendLike {
  device: { limits: Record<string, number> };
  runWebGPUProgram(program: FlatProgram, inputs: TensorInfo[], outputDtype: DataType, uniforms?: ProgramUniform[]): TensorInfo;
  disposeData(dataId: object): boolean;
}

/** A program-defined uniform value, in the order of the `uniforms` field declarations. */
export interface ProgramUniform {
  type: 'float32' | 'int32';
  data: number[];
}

const WORKGROUP = 64;

/**
 * One invocation per element of a flat output of `size` elements. `body` is WGSL run with `index : i32`
 * (< uniforms.size), reading the inputs by name and writing with `setOutputAtIndex(index, value)`.
 */
export class FlatProgram {
  readonly outputShape: number[];
  readonly dispatchLayout: { x: number[] };
  readonly dispatch: [number, number, number];
  readonly workgroupSize: [number, number, number] = [WORKGROUP, 1, 1];
  readonly size = true;
  shaderKey: string;

  constructor(
    key: string,
    readonly variableNames: string[],
    size: number,
    private readonly body: string,
    readonly uniforms?: string,
  ) {
    this.outputShape = [size];
    this.dispatchLayout = { x: [0] };
    this.dispatch = [Math.ceil(size / WORKGROUP), 1, 1];
    this.shaderKey = `mgllava_${key}`;
  }

  getUserCode(): string {
    return `
      fn main(index : i32) {
        if (index < uniforms.size) {
          ${this.body}
        }
      }`;
  }
}

/** The same tensor seen as a flat vector (no copy: the data id is shared, as the Reshape kernel does). */
export function flat(t: TensorInfo): TensorInfo {
  return { dataId: t.dataId, dtype: t.dtype, shape: [t.shape.reduce((a, b) => a * b, 1)] };
}

/** A flat kernel output given back in `shape` (same element count). */
export function shaped(t: TensorInfo, shape: number[]): TensorInfo {
  return { dataId: t.dataId, dtype: t.dtype, shape };
}
