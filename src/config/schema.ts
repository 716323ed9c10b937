/**
 * The experiment config: one schema for every YAML file in configs/. Keys are snake_case as in the
 * reference's configs; every object is strict (an unknown key is an error with a suggestion), and
 * defaults are the MG-LLaVA recipe's (REFERENCE.md (j)) unless a key says otherwise.
 *
 * Paths (data files, pretrained weights, init checkpoints) are relative to the working directory.
 */
import { z } from 'zod';

const posInt = z.number().int().positive();
const nonNegInt = z.number().int().nonnegative();
const posNum = z.number().positive();
const path = z.string().min(1);

/** CLIP ViT (low resolution). With `pretrained`, architecture keys come from that HF directory. */
export const visionSchema = z
  .object({
    pretrained: path.nullable().default(null),
    image_size: posInt.optional(),
    patch_size: posInt.optional(),
    hidden_size: posInt.optional(),
    intermediate_size: posInt.optional(),
    num_layers: posInt.optional(),
    num_heads: posInt.optional(),
    layer_norm_eps: posNum.default(1e-5),
    select_layer: z.number().int().default(-2),
  })
  .strict();

/** ConvNeXt (high resolution). With `pretrained`, weights come from an open_clip/timm directory. */
export const visionAuxSchema = z
  .object({
    pretrained: path.nullable().default(null),
    dims: z.array(posInt).min(1).optional(),
    depths: z.array(posInt).min(1).optional(),
    /** timm model name (convnext_large, ...) instead of dims/depths. */
    variant: z.string().optional(),
    image_size: posInt,
    layer_norm_eps: posNum.default(1e-6),
  })
  .strict();

export const fusionSchema = z
  .object({
    /** 0 = DualPathFuse (released), 1 = gate + concat, 2 = concat, 3 = plain concat. */
    variant: z.union([z.literal(0), z.literal(1), z.literal(2), z.literal(3)]).default(0),
    zero_init: z.boolean().default(true),
  })
  .strict();

export const objectsSchema = z
  .object({
    // Bounded: RoI work grows with output_size x sampling_ratio per box (the reference: 56 and adaptive, -1).
    output_size: posInt.max(1024).default(56),
    sampling_ratio: z.number().int().max(1024).default(-1),
    projector_depth: posInt.default(2),
    multi_level_dim: posInt.nullable().default(null),
  })
  .strict();

/**
 * LoRA adapters on the LLM's decoder linears (src/model/llm/lora.ts): a finetune then trains the adapters, the
 * projectors and the fusion, not the LLM. Unset keys come from `from`'s adapter_config.json, else PEFT's
 * defaults (r 8, alpha 8, dropout 0, rslora false) and every linear (`all-linear`, as xtuner).
 */
export const loraSchema = z
  .object({
    r: posInt.optional(),
    alpha: posNum.optional(),
    dropout: z.number().min(0).lt(1).optional(),
    /** Module names (Phi-3: qkv_proj, o_proj, gate_up_proj, down_proj), or all-linear; never lm_head. */
    targets: z
      .union([z.literal('all-linear'), z.array(z.enum(['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj', 'qkv_proj', 'gate_up_proj'])).min(1)])
      .optional(),
    /** scaling = alpha / sqrt(r) instead of alpha / r. */
    rslora: z.boolean().optional(),
    /** Modules trained in full beside the adapters and saved with them (PEFT's modules_to_save). */
    modules_to_save: z.array(z.enum(['lm_head', 'embed_tokens'])).optional(),
    /** A PEFT adapter directory (adapter_config.json + adapter_model.safetensors) whose weights start the adapters. */
    from: path.nullable().optional(),
  })
  .strict();

/** LLaMA-family LLM. With `pretrained` (an HF directory), architecture keys come from its config.json. */
export const llmSchema = z
  .object({
    pretrained: path.nullable().default(null),
    vocab_size: posInt.optional(),
    hidden_size: posInt.optional(),
    intermediate_size: posInt.optional(),
    num_layers: posInt.optional(),
    num_heads: posInt.optional(),
    num_kv_heads: posInt.optional(),
    head_dim: posInt.optional(),
    rms_norm_eps: posNum.default(1e-5),
    rope_theta: posNum.default(10000),
    tie_word_embeddings: z.boolean().default(false),
    attention_bias: z.boolean().default(false),
    /** LoRA adapters (absent: none). */
    lora: loraSchema.optional(),
  })
  .strict();

export const modelSchema = z
  .object({
    vision: visionSchema,
    /** null: low-res only (no fusion, no object tokens). */
    vision_aux: visionAuxSchema.nullable().default(null),
    fusion: fusionSchema.nullable().default(null),
    objects: objectsSchema.nullable().default(null),
    projector_depth: posInt.default(2),
    llm: llmSchema,
  })
  .strict();

export const tokenizerSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('hf'), path }).strict(),
  z.object({ type: z.literal('llama2') }).strict(),
  z.object({ type: z.literal('byte') }).strict(),
]);

export const dataSchema = z
  .object({
    /** LLaVA records (JSON array or JSONL). */
    records: path,
    /** Offline-detector boxes JSON (required when the model makes object tokens). */
    boxes: path.nullable().default(null),
    /** Folder the records' `image` paths are relative to. */
    images: path.nullable().default(null),
    template: z.enum(['vicuna', 'llama3_chat', 'phi3_chat', 'qwen_chat']).default('vicuna'),
    tokenizer: tokenizerSchema,
    /** 2048 - image tokens at full size (1472). */
    max_length: posInt.default(1472),
    nms_threshold: z.number().min(0).max(1).default(0.2),
    /** Per-category box cap trigger (null: only the close-to-max-length rule). */
    limit_num: posInt.nullable().default(100),
    /** Skip bad records, writing them to this JSONL report; null: a bad record stops the run. */
    skip_bad: path.nullable().default(null),
    /** Batches loaded ahead of the training step (each holds its images in memory: bounded). */
    prefetch: nonNegInt.max(64).default(2),
    /** Worker threads preparing images beside the training step; 0 = on the main thread (decoding still uses libuv threads). Capped at the cores. */
    image_workers: nonNegInt.default(1),
    /**
     * EXIF orientation of photos: `ignore` (the stored pixels, as the reference's PIL `Image.open`; boxes are in
     * that frame) or `apply` (rotated; boxes must be in the rotated frame). Training, eval, chat and tools alike.
     */
    exif_orientation: z.enum(['ignore', 'apply']).default('ignore'),
    /** Pixel budget of one image's padded square (longer side²); larger images are refused. null: sharp's limit (268 MP). Default: PIL's MAX_IMAGE_PIXELS. */
    max_image_pixels: posInt.nullable().default(89_478_485),
  })
  .strict();

export const trainSchema = z
  .object({
    batch_size: posInt.default(32),
    grad_accum: posInt.default(1),
    epochs: posNum.default(1),
    /** Overrides `epochs` when set. */
    max_steps: posInt.nullable().default(null),
    lr: posNum.default(1e-3),
    warmup_ratio: z.number().min(0).max(1).default(0.03),
    start_factor: posNum.max(1).default(1e-5),
    weight_decay: z.number().min(0).default(0),
    betas: z.tuple([z.number().min(0).lt(1), z.number().min(0).lt(1)]).default([0.9, 0.999]),
    eps: posNum.default(1e-8),
    /** Global L2 gradient clipping over the trainable set. */
    max_norm: posNum.default(1),
    sampler: z.enum(['shuffle', 'length_grouped']).default('shuffle'),
    save_steps: posInt.default(500),
    save_total_limit: posInt.default(2),
    log_steps: posInt.default(10),
    /** Cache frozen-encoder outputs per image: auto = on when the encoders are frozen (exact). */
    feature_cache: z.enum(['auto', 'on', 'off']).default('auto'),
    /** Host memory for the feature cache, MB; images past it are recomputed each time (exact either way). */
    feature_cache_mb: posInt.default(2048),
    /**
     * Recompute each LLM decoder layer (and encoder block, when those train) in the backward pass instead of
     * keeping its activations: much less memory, ~1/3 more compute, identical gradients (not in the config hash).
     */
    activation_checkpointing: z.boolean().default(false),
    /** Consecutive non-finite steps before the run aborts. */
    max_bad_steps: posInt.default(5),
    /** Held-out evaluation during training: LLaVA records scored for loss and exact-match accuracy (src/train/held-out.ts). */
    eval_records: path.nullable().default(null),
    /** Box JSON and image folder of eval_records (default: data.boxes; data.images, else the records' folder). */
    eval_boxes: path.nullable().default(null),
    eval_images: path.nullable().default(null),
    /** Evaluate every N optimizer steps and after the last one (default: only after the last one). */
    eval_steps: posInt.nullable().default(null),
    /** Answer length budget of the held-out accuracy (greedy). */
    eval_max_new_tokens: posInt.default(32),
  })
  .strict();

export const initSchema = z
  .object({
    /** A checkpoint (run dir or step dir) whose weights initialise the model (finetune <- pretrain). */
    from: path.nullable().default(null),
    /** A stage-0 warm-up checkpoint with encoder weights. */
    encoders_from: path.nullable().default(null),
  })
  .strict();

/**
 * Stage 0 (`mgllava warmup`): the encoders (ViT and ConvNeXt, every weight) learn from object annotations
 * through throw-away linear heads, a stand-in for pretrained CLIP/ConvNeXt weights (DEMO-STUDY.md). The loop,
 * optimizer and schedule are the `train` section's; `data.images` is the image folder; records, boxes and
 * the tokenizer of `data` are not used by this stage.
 */
const presenceAt = z.enum(['image', 'cell']);

export const warmupSchema = z
  .object({
    /** Annotations JSON (`data synth` writes annotations.json): per image, its objects' boxes and attributes. */
    annotations: path,
    /** The `split` of the annotated images trained on. */
    train_split: z.string().min(1).default('train'),
    /** Held-out split for the final per-head accuracies; null: report them on training images. */
    eval_split: z.string().min(1).nullable().default('eval'),
    /** At most this many images in that report. */
    eval_images: posInt.default(400),
    /** Attributes classified per box from its RoI mean of the ConvNeXt concat map. */
    box_heads: z.array(z.string().min(1)).default(['color', 'shape', 'size']),
    /** Attributes classified as "present" (multi-label) on every ConvNeXt last-map cell and every ViT token. */
    presence_heads: z.array(z.string().min(1)).default(['color', 'shape']),
    /**
     * Where presence is judged: `image` = anywhere in the image (the same targets at every cell); `cell` =
     * the objects in that cell's part of the image (covering >= 1/4 of the cell, or centred in it), so every
     * token learns what is where. One value for every presence head, or one per head ({shape: cell});
     * heads not named are `image`. README "Ablation" has the measured trade-offs.
     */
    presence_at: z.union([presenceAt, z.record(z.string(), presenceAt)]).default('image'),
    box_weight: z.number().min(0).default(1),
    presence_weight: z.number().min(0).default(1),
  })
  .strict();

export const experimentSchema = z
  .object({
    /** Run name: the run directory is `<output_dir>/<name>`. */
    name: z
      .string()
      .regex(/^[\w.-]+$/, 'letters, digits, _ . - only')
      .refine((n) => !/^\.+$/.test(n), "not '.' or '..' (the run directory must be inside output_dir)"),
    stage: z.enum(['warmup', 'pretrain', 'finetune']),
    seed: nonNegInt.default(2024),
    output_dir: path.default('checkpoints'),
    model: modelSchema,
    init: initSchema.default({ from: null, encoders_from: null }),
    data: dataSchema,
    train: trainSchema.default(trainSchema.parse({})),
    /** Stage 0 only (optional: absent from the other stages' configs and their hashes). */
    warmup: warmupSchema.optional(),
  })
  .strict();

export type ExperimentConfig = z.infer<typeof experimentSchema>;
export type ModelSection = z.infer<typeof modelSchema>;
export type DataSection = z.infer<typeof dataSchema>;
export type TrainSection = z.infer<typeof trainSchema>;
export type WarmupSection = z.infer<typeof warmupSchema>;
