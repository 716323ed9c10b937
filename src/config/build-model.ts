/**
 * Experiment config -> the MG-LLaVA module config. Architecture keys come from the YAML, or from the
 * `config.json` of a pretrained directory (`hfConfigs`, read by the caller: this function does no I/O).
 */
import { validateMgllavaConfig, type MGLLaVAConfig } from '../model/mgllava.js';
import { clipVitConfigFromHf, validateClipVitConfig } from '../model/vision/clip-vit.js';
import { convNextConfigFrom } from '../model/vision/convnext.js';
import { fromHfConfig } from '../model/llm/config.js';
import type { ModelSection } from './schema.js';
import { resolveLoraTargets, type LoraConfig } from '../model/llm/lora.js';
import { resolveLoraConfig } from '../io/peft.js';
import { ConfigError } from './load.js';
import { MgllavaError } from '../errors.js';
import { countParameters } from '../train/param-count.js';

/** config.json contents of the pretrained directories named in the model section (when any). */
export interface PretrainedConfigs {
  vision?: Record<string, unknown>;
  visionAux?: Record<string, unknown>;
  llm?: Record<string, unknown>;
  /** adapter_config.json of `model.llm.lora.from` (a PEFT adapter directory). */
  loraAdapter?: LoraConfig;
}

function defined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined && v !== null)) as Partial<T>;
}

/**
 * Build one part's config; the part's own validation (a head count that does not divide the width, a
 * select_layer out of range, an aux image that does not give the ViT grid) becomes a ConfigError naming `key`.
 */
function part<T>(key: string, build: () => T): T {
  try {
    return build();
  } catch (e) {
    if (e instanceof MgllavaError) throw e;
    throw new ConfigError(`${key}: ${(e as Error).message.replace(/:?\s*\n\s*/g, ': ')}`); // one line (a builder may list problems)
  }
}

export function modelConfigFrom(m: ModelSection, hf: PretrainedConfigs = {}): MGLLaVAConfig {
  if (m.vision.pretrained && !hf.vision) throw new ConfigError(`model.vision.pretrained = ${m.vision.pretrained}: its config.json was not read`);
  if (m.llm.pretrained && !hf.llm) throw new ConfigError(`model.llm.pretrained = ${m.llm.pretrained}: its config.json was not read`);
  const v = m.vision;
  // YAML keys win over the pretrained config.json (e.g. select_layer), so a user can say what differs.
  const vision = part('model.vision', () =>
    hf.vision
      ? validateClipVitConfig({ ...clipVitConfigFromHf(hf.vision), ...defined({ imageSize: v.image_size, selectLayer: v.select_layer }) })
      : validateClipVitConfig({
          imageSize: v.image_size!,
          patchSize: v.patch_size!,
          hiddenSize: v.hidden_size!,
          intermediateSize: v.intermediate_size!,
          numLayers: v.num_layers!,
          numHeads: v.num_heads!,
          layerNormEps: v.layer_norm_eps,
          numChannels: 3,
          selectLayer: v.select_layer,
          dropCls: true,
        }),
  );
  const a = m.vision_aux;
  const auxHf = (hf.visionAux?.vision_cfg ?? hf.visionAux ?? {}) as Record<string, unknown>; // open_clip nests it
  const visionAux = part('model.vision_aux', () =>
    a
      ? convNextConfigFrom(
          { ...auxHf, ...defined({ dims: a.dims, depths: a.depths, layer_norm_eps: a.layer_norm_eps }), ...(a.variant ? { timm_model_name: a.variant } : {}) },
          { imageSize: a.image_size },
        )
      : null,
  );
  const l = m.llm;
  const llm = part('model.llm', () =>
    fromHfConfig(
      hf.llm ?? {
        model_type: 'llama',
        ...defined({
          vocab_size: l.vocab_size,
          hidden_size: l.hidden_size,
          intermediate_size: l.intermediate_size,
          num_hidden_layers: l.num_layers,
          num_attention_heads: l.num_heads,
          num_key_value_heads: l.num_kv_heads,
          head_dim: l.head_dim,
        }),
        rms_norm_eps: l.rms_norm_eps,
        rope_theta: l.rope_theta,
        tie_word_embeddings: l.tie_word_embeddings,
        attention_bias: l.attention_bias,
      },
    ),
  );
  const config: MGLLaVAConfig = {
    vision,
    visionAux,
    fusion: m.fusion ? { variant: m.fusion.variant, zeroInit: m.fusion.zero_init } : null,
    objects: m.objects
      ? {
          outputSize: m.objects.output_size,
          samplingRatio: m.objects.sampling_ratio,
          projectorDepth: m.objects.projector_depth,
          multiLevelDim: m.objects.multi_level_dim,
        }
      : null,
    projectorDepth: m.projector_depth,
    llm,
    lora: l.lora
      ? part('model.llm.lora', () => {
          const lora = resolveLoraConfig(l.lora!, hf.loraAdapter ?? null);
          resolveLoraTargets(lora, llm.weightFormat ?? 'llama', llm.tieWordEmbeddings); // a target or saved module this LLM lacks: a config error, not a crash in the builder
          return lora;
        })
      : null,
  };
  part('model', () => validateMgllavaConfig(config));
  // The count is closed-form; building a model of 1e11 layers would loop for hours before any memory check.
  const counts = countParameters(config, 'finetune');
  const total = counts.reduce((n, c) => n + c.params, 0);
  if (!(total <= MAX_PARAMETERS)) {
    const biggest = counts.reduce((a, b) => (b.params > a.params ? b : a));
    throw new ConfigError(`model: ${total.toExponential(2)} parameters (${biggest.module}: ${biggest.params.toExponential(2)}), more than any model mgllava can hold (${MAX_PARAMETERS.toExponential(0)}): a typo in a size or layer count?`);
  }
  return config;
}

/** More parameters than this is a typo, not a model (the largest recipe, Yi-34B, has 3.5e10). */
const MAX_PARAMETERS = 1e12;
