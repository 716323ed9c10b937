/**
 * The MLP projector (xtuner `ProjectorModel`): visual features -> LLM embedding width.
 * depth 1: `model.0` Linear(in->out); depth d: Linear(in->out) then (GELU(erf), Linear(out->out)) x (d-1),
 * the Linears at `model.0`, `model.2`, `model.4`, ... (the GELUs take the odd indices and hold no weights).
 * Used twice in MG-LLaVA: `projector.*` (image tokens) and `bbox_projector.*` (object tokens).
 */
import * as tf from '@tensorflow/tfjs';
import { Module, type InitContext } from '../nn/module.js';
import { Linear } from '../nn/linear.js';
import { geluErf } from '../nn/activations.js';

export interface ProjectorConfig {
  /** Input feature width (1024 for the image projector, 2880 for the bbox projector). */
  inDim: number;
  /** Output width = the LLM hidden size. */
  outDim: number;
  /** Number of Linear layers (MG-LLaVA: 2). */
  depth: number;
  /** Linear biases (default true, as xtuner). */
  bias?: boolean;
}

/** ProjectorConfig from the golden / xtuner keys (`in_dim`, `out_dim`, `depth`, `bias`). */
export function projectorConfigFrom(json: Record<string, unknown>): ProjectorConfig {
  const get = (snake: string, camel: string): unknown => json[snake] ?? json[camel];
  const num = (snake: string, camel: string, fallback?: number): number => {
    const v = get(snake, camel) ?? fallback;
    if (typeof v !== 'number') throw new Error(`projector config: '${snake}' must be a number, got ${JSON.stringify(v)}`);
    return v;
  };
  const bias = get('bias', 'bias') ?? true;
  if (typeof bias !== 'boolean') throw new Error(`projector config: 'bias' must be a boolean, got ${JSON.stringify(bias)}`);
  return validateProjectorConfig({ inDim: num('in_dim', 'inDim'), outDim: num('out_dim', 'outDim'), depth: num('depth', 'depth', 2), bias });
}

export function validateProjectorConfig(c: ProjectorConfig): ProjectorConfig {
  for (const k of ['inDim', 'outDim', 'depth'] as const) {
    if (!Number.isInteger(c[k]) || c[k] < 1) throw new Error(`projector config: ${k} must be a positive integer, got ${c[k]}`);
  }
  return c;
}

export class Projector extends Module<ProjectorConfig> {
  readonly linears: Linear[] = [];

  constructor(config: ProjectorConfig, ctx: InitContext) {
    super(validateProjectorConfig({ ...config, bias: config.bias ?? true }));
    const { inDim, outDim, depth, bias = true } = this.config;
    for (let i = 0; i < depth; i++) {
      const lin = new Linear({ inFeatures: i === 0 ? inDim : outDim, outFeatures: outDim, bias }, ctx);
      this.linears.push(this.addChild(`model.${2 * i}`, lin));
    }
  }

  /** x [..., inDim] -> [..., outDim] */
  apply(x: tf.Tensor): tf.Tensor {
    const inDim = this.config.inDim;
    if (x.shape[x.rank - 1] !== inDim) throw new Error(`Projector.apply: expected last axis ${inDim}, got [${x.shape}]`);
    return tf.tidy(() => {
      let h = this.linears[0]!.apply(x);
      for (const lin of this.linears.slice(1)) h = lin.apply(geluErf(h));
      return h;
    });
  }
}
