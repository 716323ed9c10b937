/**
 * Configuration of the LLaMA-family decoder (LLaMA-2 / Vicuna, Llama-3, Yi, Phi-3) and its reading
 * from a Hugging Face `config.json`. The architecture is the same for all of them here; Phi-3 differs
 * only in how its checkpoint stores q/k/v and gate/up (fused), which `weight-map.ts` handles.
 */

/** How the checkpoint names/stores the weights (affects import/export only, never the math). */
export type LlamaWeightFormat = 'llama' | 'phi3';

export interface LlamaConfig {
  /** Vocabulary size V (rows of `model.embed_tokens.weight`). */
  vocabSize: number;
  /** Model width H. */
  hiddenSize: number;
  /** SwiGLU inner width I. */
  intermediateSize: number;
  numLayers: number;
  /** Query heads. */
  numHeads: number;
  /** Key/value heads (GQA); must divide numHeads. kv head j serves query heads j*r .. j*r+r-1. */
  numKvHeads: number;
  /** Per-head width; default hiddenSize / numHeads. */
  headDim?: number;
  /** RMSNorm epsilon (1e-5 Vicuna-1.5 / Llama-3; 1e-6 LLaMA-1-era models). */
  rmsNormEps: number;
  /** RoPE base (10000 LLaMA-2, 500000 Llama-3, 5e6 Yi-1.5). */
  ropeTheta: number;
  /** lm_head shares `model.embed_tokens.weight` (no `lm_head.weight`). */
  tieWordEmbeddings: boolean;
  /** Longest position the checkpoint was trained for (informational; RoPE tables grow on demand). */
  maxPositionEmbeddings?: number;
  /** HF `attention_bias`: q/k/v/o projections carry biases (HF LlamaAttention puts it on all four). */
  attentionBias?: boolean;
  /** Std of the normal initialiser for Linear/Embedding weights (HF `initializer_range`, default 0.02). */
  initializerRange?: number;
  /** Checkpoint layout for import/export (default 'llama'). */
  weightFormat?: LlamaWeightFormat;
}

export function headDimOf(c: LlamaConfig): number {
  return c.headDim ?? c.hiddenSize / c.numHeads;
}

/** Throw with every problem of a config (called by the model constructor). */
export function validateLlamaConfig(c: LlamaConfig): void {
  const problems: string[] = [];
  const posInt = (k: keyof LlamaConfig) => {
    const v = c[k];
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) problems.push(`${k} must be a positive integer (got ${String(v)})`);
  };
  for (const k of ['vocabSize', 'hiddenSize', 'intermediateSize', 'numLayers', 'numHeads', 'numKvHeads'] as const) posInt(k);
  if (c.headDim !== undefined) posInt('headDim');
  else if (c.hiddenSize % c.numHeads !== 0) problems.push(`hiddenSize ${c.hiddenSize} is not divisible by numHeads ${c.numHeads}; set headDim`);
  const hd = headDimOf(c);
  if (Number.isInteger(hd) && hd % 2 !== 0) problems.push(`head dim ${hd} must be even for RoPE`);
  if (c.numHeads % c.numKvHeads !== 0) problems.push(`numHeads ${c.numHeads} is not a multiple of numKvHeads ${c.numKvHeads}`);
  if (!(c.rmsNormEps > 0)) problems.push(`rmsNormEps must be > 0 (got ${c.rmsNormEps})`);
  if (!(c.ropeTheta > 0)) problems.push(`ropeTheta must be > 0 (got ${c.ropeTheta})`);
  if (c.weightFormat !== undefined && c.weightFormat !== 'llama' && c.weightFormat !== 'phi3') {
    problems.push(`weightFormat must be 'llama' or 'phi3' (got ${String(c.weightFormat)})`);
  }
  if (problems.length) throw new Error(`invalid LLaMA config:\n  ${problems.join('\n  ')}`);
}

/** Model types read by `fromHfConfig` and the checkpoint layout each implies. */
const HF_MODEL_TYPES: Record<string, LlamaWeightFormat> = { llama: 'llama', phi3: 'phi3' };

/**
 * Read an HF `config.json` object of a LLaMA-architecture model (`model_type` llama: LLaMA-2, Vicuna,
 * Llama-3, Yi; or phi3). Anything this decoder would compute differently is refused, never ignored:
 * RoPE scaling, non-SiLU activations, MLP biases.
 *
 * Not modelled: Phi-3's `sliding_window` (2047 for Phi-3-mini-4k). It only affects queries more than
 * `sliding_window` tokens after a key, i.e. sequences longer than MG-LLaVA's 2048-token budget.
 */
export function fromHfConfig(json: Record<string, unknown>): LlamaConfig {
  const where = 'HF config';
  const modelType = json.model_type;
  if (typeof modelType !== 'string' || !(modelType in HF_MODEL_TYPES)) {
    throw new Error(`${where}: model_type ${JSON.stringify(modelType)} is not supported (expected one of ${Object.keys(HF_MODEL_TYPES).join(', ')})`);
  }
  const num = (key: string, fallback?: number): number => {
    const v = json[key];
    if (v === undefined || v === null) {
      if (fallback !== undefined) return fallback;
      throw new Error(`${where}: missing '${key}'`);
    }
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`${where}: '${key}' must be a number (got ${JSON.stringify(v)})`);
    return v;
  };
  const bool = (key: string, fallback: boolean): boolean => {
    const v = json[key];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'boolean') throw new Error(`${where}: '${key}' must be a boolean (got ${JSON.stringify(v)})`);
    return v;
  };
  const act = json.hidden_act ?? 'silu';
  if (act !== 'silu') throw new Error(`${where}: hidden_act '${String(act)}' is not supported (LLaMA MLP uses silu)`);
  if (json.rope_scaling != null) {
    throw new Error(`${where}: rope_scaling ${JSON.stringify(json.rope_scaling)} is not supported (plain RoPE only)`);
  }
  if (bool('mlp_bias', false)) throw new Error(`${where}: mlp_bias = true is not supported`);
  const numHeads = num('num_attention_heads');
  const hiddenSize = num('hidden_size');
  const config: LlamaConfig = {
    vocabSize: num('vocab_size'),
    hiddenSize,
    intermediateSize: num('intermediate_size'),
    numLayers: num('num_hidden_layers'),
    numHeads,
    numKvHeads: num('num_key_value_heads', numHeads),
    headDim: num('head_dim', hiddenSize / numHeads),
    rmsNormEps: num('rms_norm_eps'),
    ropeTheta: num('rope_theta', 10000),
    tieWordEmbeddings: bool('tie_word_embeddings', false),
    attentionBias: bool('attention_bias', false),
    initializerRange: num('initializer_range', 0.02),
    weightFormat: HF_MODEL_TYPES[modelType],
  };
  if (json.max_position_embeddings != null) config.maxPositionEmbeddings = num('max_position_embeddings');
  validateLlamaConfig(config);
  return config;
}

/** The HF `config.json` fields of a config (for export next to the weights). */
export function toHfConfig(c: LlamaConfig): Record<string, unknown> {
  const phi3 = c.weightFormat === 'phi3';
  return {
    architectures: [phi3 ? 'Phi3ForCausalLM' : 'LlamaForCausalLM'],
    model_type: phi3 ? 'phi3' : 'llama',
    vocab_size: c.vocabSize,
    hidden_size: c.hiddenSize,
    intermediate_size: c.intermediateSize,
    num_hidden_layers: c.numLayers,
    num_attention_heads: c.numHeads,
    num_key_value_heads: c.numKvHeads,
    head_dim: headDimOf(c),
    hidden_act: 'silu',
    rms_norm_eps: c.rmsNormEps,
    rope_theta: c.ropeTheta,
    rope_scaling: null,
    tie_word_embeddings: c.tieWordEmbeddings,
    attention_bias: c.attentionBias ?? false,
    initializer_range: c.initializerRange ?? 0.02,
    ...(c.maxPositionEmbeddings !== undefined ? { max_position_embeddings: c.maxPositionEmbeddings } : {}),
  };
}
