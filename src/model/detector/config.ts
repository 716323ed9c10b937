/**
 * Configuration of the OWLv2 open-vocabulary detector (HF `Owlv2ForObjectDetection`) and its reading from a
 * Hugging Face `config.json` (`text_config`, `vision_config`, `projection_dim`). HF leaves keys equal to its
 * defaults out of a saved config, so absent keys take `Owlv2TextConfig` / `Owlv2VisionConfig` defaults.
 */
import { MgllavaError } from '../../errors.js';

export interface Owlv2TextConfig {
  vocabSize: number;
  /** Text width Dt (also the output width of the class head's dense0). */
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  /** Position embeddings = the longest query in tokens (16), BOS and EOS included. */
  maxPositions: number;
  layerNormEps: number;
  /** The tokenizer pads with "!" = id 0; a query whose FIRST id is 0 is masked. */
  padTokenId: number;
  bosTokenId: number;
  eosTokenId: number;
}

export interface Owlv2VisionConfig {
  /** Vision width Dv. */
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numChannels: number;
  /** Side of the square model input (960 base, 1008 large) = the image processor's size. */
  imageSize: number;
  patchSize: number;
  layerNormEps: number;
}

export interface Owlv2Config {
  text: Owlv2TextConfig;
  vision: Owlv2VisionConfig;
  /** Width P of the text/visual projections; must equal text hiddenSize (see validateOwlv2Config). */
  projectionDim: number;
}

/** HF defaults of Owlv2TextConfig / Owlv2VisionConfig / Owlv2Config (what an absent key means). */
export const OWLV2_HF_DEFAULTS: Owlv2Config = {
  text: {
    vocabSize: 49408,
    hiddenSize: 512,
    intermediateSize: 2048,
    numLayers: 12,
    numHeads: 8,
    maxPositions: 16,
    layerNormEps: 1e-5,
    padTokenId: 0,
    bosTokenId: 49406,
    eosTokenId: 49407,
  },
  vision: {
    hiddenSize: 768,
    intermediateSize: 3072,
    numLayers: 12,
    numHeads: 12,
    numChannels: 3,
    imageSize: 768,
    patchSize: 16,
    layerNormEps: 1e-5,
  },
  projectionDim: 512,
};

/** The two public checkpoints' architectures (for benchmarks with random weights; real use reads config.json). */
export const OWLV2_PRESETS: Record<'base' | 'large', Owlv2Config> = {
  // google/owlv2-base-patch16-ensemble: 154,966,792 parameters
  base: { ...OWLV2_HF_DEFAULTS, vision: { ...OWLV2_HF_DEFAULTS.vision, imageSize: 960, patchSize: 16 } },
  // google/owlv2-large-patch14-ensemble: 437,610,760 parameters
  large: {
    text: { ...OWLV2_HF_DEFAULTS.text, hiddenSize: 768, intermediateSize: 3072, numHeads: 12 },
    vision: { ...OWLV2_HF_DEFAULTS.vision, hiddenSize: 1024, intermediateSize: 4096, numLayers: 24, numHeads: 16, imageSize: 1008, patchSize: 14 },
    projectionDim: 768,
  },
};

/** Patches per side of the vision grid (Hp = Wp). */
export function gridOf(v: Owlv2VisionConfig): number {
  return Math.floor(v.imageSize / v.patchSize);
}

type Json = Record<string, unknown>;

const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * An HF OWLv2 `config.json` object -> Owlv2Config. `where` names the file in errors. Activations other than
 * quick_gelu in the towers are refused (the heads' GELU/ELU are fixed by the architecture).
 */
export function owlv2ConfigFromHf(json: Json, where = 'OWLv2 config'): Owlv2Config {
  if (json.model_type !== undefined && json.model_type !== 'owlv2') {
    throw new MgllavaError(`${where}: model_type ${JSON.stringify(json.model_type)} is not owlv2`, 'config', {
      hint: 'point --detector at a Hugging Face OWLv2 directory (e.g. google/owlv2-large-patch14-ensemble)',
    });
  }
  const section = (key: string): Json => {
    const v = json[key];
    if (v === undefined || v === null) return {};
    if (!isObject(v)) throw new MgllavaError(`${where}: '${key}' must be an object`, 'config');
    return v;
  };
  const text = section('text_config');
  const vision = section('vision_config');
  const num = (src: Json, prefix: string, key: string, fallback: number): number => {
    const v = src[key];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new MgllavaError(`${where}: '${prefix}${key}' must be a number, got ${JSON.stringify(v)}`, 'config');
    return v;
  };
  for (const [src, prefix] of [[text, 'text_config.'], [vision, 'vision_config.']] as const) {
    const act = src.hidden_act ?? 'quick_gelu';
    if (act !== 'quick_gelu') throw new MgllavaError(`${where}: '${prefix}hidden_act' = ${JSON.stringify(act)} is not supported (OWLv2 uses quick_gelu)`, 'config');
  }
  const d = OWLV2_HF_DEFAULTS;
  const t = (key: string, fallback: number) => num(text, 'text_config.', key, fallback);
  const v = (key: string, fallback: number) => num(vision, 'vision_config.', key, fallback);
  return validateOwlv2Config(
    {
      text: {
        vocabSize: t('vocab_size', d.text.vocabSize),
        hiddenSize: t('hidden_size', d.text.hiddenSize),
        intermediateSize: t('intermediate_size', d.text.intermediateSize),
        numLayers: t('num_hidden_layers', d.text.numLayers),
        numHeads: t('num_attention_heads', d.text.numHeads),
        maxPositions: t('max_position_embeddings', d.text.maxPositions),
        layerNormEps: t('layer_norm_eps', d.text.layerNormEps),
        padTokenId: t('pad_token_id', d.text.padTokenId),
        bosTokenId: t('bos_token_id', d.text.bosTokenId),
        eosTokenId: t('eos_token_id', d.text.eosTokenId),
      },
      vision: {
        hiddenSize: v('hidden_size', d.vision.hiddenSize),
        intermediateSize: v('intermediate_size', d.vision.intermediateSize),
        numLayers: v('num_hidden_layers', d.vision.numLayers),
        numHeads: v('num_attention_heads', d.vision.numHeads),
        numChannels: v('num_channels', d.vision.numChannels),
        imageSize: v('image_size', d.vision.imageSize),
        patchSize: v('patch_size', d.vision.patchSize),
        layerNormEps: v('layer_norm_eps', d.vision.layerNormEps),
      },
      projectionDim: num(json, '', 'projection_dim', d.projectionDim),
    },
    where,
  );
}

/** Throw one error listing every problem; returns the config unchanged. */
export function validateOwlv2Config(c: Owlv2Config, where = 'OWLv2 config'): Owlv2Config {
  const problems: string[] = [];
  const posInt = (name: string, x: number) => {
    if (!Number.isInteger(x) || x < 1) problems.push(`${name} must be a positive integer (got ${x})`);
  };
  for (const [k, x] of Object.entries(c.text)) if (k !== 'layerNormEps' && !k.endsWith('TokenId')) posInt(`text.${k}`, x);
  for (const [k, x] of Object.entries(c.vision)) if (k !== 'layerNormEps') posInt(`vision.${k}`, x);
  posInt('projectionDim', c.projectionDim);
  for (const k of ['padTokenId', 'bosTokenId', 'eosTokenId'] as const) {
    const id = c.text[k];
    if (!Number.isInteger(id) || id < 0 || id >= c.text.vocabSize) problems.push(`text.${k} ${id} is not an id of the ${c.text.vocabSize}-entry vocabulary`);
  }
  if (c.text.hiddenSize % c.text.numHeads !== 0) problems.push(`text hiddenSize ${c.text.hiddenSize} is not a multiple of numHeads ${c.text.numHeads}`);
  if (c.vision.hiddenSize % c.vision.numHeads !== 0) problems.push(`vision hiddenSize ${c.vision.hiddenSize} is not a multiple of numHeads ${c.vision.numHeads}`);
  if (c.vision.patchSize > c.vision.imageSize) problems.push(`vision patchSize ${c.vision.patchSize} > imageSize ${c.vision.imageSize}`);
  // HF sizes class_head.dense0 by the text width but feeds it projection-width queries: it only runs when equal.
  if (c.projectionDim !== c.text.hiddenSize) problems.push(`projectionDim ${c.projectionDim} must equal text hiddenSize ${c.text.hiddenSize} (the class head compares them)`);
  if (!(c.text.layerNormEps > 0) || !(c.vision.layerNormEps > 0)) problems.push('layerNormEps must be > 0');
  if (problems.length) throw new MgllavaError(`${where}: ${problems.join('; ')}`, 'config');
  return c;
}
