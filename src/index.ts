/**
 * mgllava as a library: `import { ... } from 'mgllava'`.
 *
 * What a program composes, in the order it usually does:
 *
 *   selectBackend()                       choose and initialise the tfjs backend (wasm + kernel pack here); first, always
 *   synthDataset() / loadRecords() ...    data: the synthetic set, LLaVA records, boxes, images, templates, tokenizers
 *   loadConfig()                          an experiment YAML (`extends`, `--set`-style overrides), validated
 *   runStage(mgllavaStage('pretrain'))    a training stage into its run directory (resumable checkpoints)
 *   loadRun()                             a trained model from a run directory, with its config and tokenizer
 *   ChatSession / generate() / runEval()  answers, streamed or batched; accuracy on held-out records
 *   exportRun() / openPretrained() ...    export (xtuner, Hugging Face) and import of pretrained weights
 *
 * The README's "Use as a library" section is a complete example, run by the test suite
 * (test/api-package.test.ts). Every failure a caller can cause is a `MgllavaError` (with `category`
 * and `exitCode`); anything else is a bug. Tensors are `tf` tensors of the tfjs instance exported
 * here as `tf` (use it rather than importing another copy of @tensorflow/tfjs).
 */

/** The TensorFlow.js instance mgllava runs on (one engine: tensors of another copy would not mix). */
export * as tf from '@tensorflow/tfjs';

// ---- errors ------------------------------------------------------------------------------------

/** The one user-facing error type, its subclasses, exit codes per category, and the CLI's formatter. */
export { MgllavaError, UsageError, DataError, WeightsError, ResourceError, EXIT, fsError, reportError } from './errors.js';
export type { ErrorCategory, ErrorOptions } from './errors.js';

// ---- backend -----------------------------------------------------------------------------------

/**
 * `selectBackend(name?)`: 'tensorflow' | 'webgpu' | 'wasm' | 'cpu' | 'auto' (default: MGLLAVA_BACKEND, else the
 * best that loads). Call it before building a model: on wasm it registers the kernel pack the models need.
 * `runtimeInfo()` is what `mgllava doctor` prints.
 */
export { selectBackend, currentBackend, describeBackend, parseBackendName, BackendError, BACKEND_NAMES } from './backend/select.js';
export type { BackendChoice, BackendName, BackendAttempt } from './backend/select.js';
export { runtimeInfo } from './backend/info.js';
export type { RuntimeInfo } from './backend/info.js';

// ---- configs -----------------------------------------------------------------------------------

/**
 * `loadConfig(file, sets)`: read an experiment YAML (with `extends`), apply `a.b=value` overrides, validate
 * against the schema; returns `{ config, file, hash }`. `validateConfig` checks an object built in code.
 */
export { loadConfig, validateConfig, dumpConfig, configHash, ConfigError } from './config/load.js';
export type { LoadedConfig } from './config/load.js';
export { experimentSchema } from './config/schema.js';
export type { ExperimentConfig, ModelSection, DataSection, TrainSection, WarmupSection } from './config/schema.js';

// ---- models ------------------------------------------------------------------------------------

/**
 * `buildModel(config)`: a ready-to-train model (random init from the seed, pretrained directories,
 * `init.encoders_from`, `init.from`). `loadRun(runDir, { step })` (= `loadRunModel`): a trained model with
 * its config and tokenizer. The caller disposes models (`model.dispose()`).
 */
export { buildModel, checkpointModel, loadRunModel, loadRun, modelConfigOf, trainableSet } from './model/factory.js';
export type { BuildModelOptions, RunModel } from './model/factory.js';
export { MGLLaVA } from './model/mgllava.js';
export type { MGLLaVAConfig, Stage, FrozenFeatures, MGLLaVALoss } from './model/mgllava.js';

// ---- training ----------------------------------------------------------------------------------

/**
 * The stage runner: `runStage(spec, { configFile, sets, maxSteps, resume, onStep, out })` runs one training
 * stage of a config into its run directory `<output_dir>/<name>` (resumable with `resume: 'auto'`, metrics.jsonl,
 * checkpoints; see the README's "Run directory"). The specs: `mgllavaStage('pretrain' | 'finetune')` (stage 1:
 * fusion + projectors; stage 2: + the LLM) and `warmupStage()` (stage 0, the tiny encoders). `train({ stage, ... })`
 * and `warmup(...)` are the same with the CLI's extras (`dryRun`, the warm-up's held-out report).
 */
export { runStage } from './train/stage.js';
export type { StageSpec, StageResult, StageRun, StageData, Stepper } from './train/stage.js';
export type { RunOptions, LoopResult } from './train/loop.js';
export { mgllavaStage, train, TrainError } from './train/trainer.js';
export type { TrainOptions, TrainResult } from './train/trainer.js';
export { warmupStage, warmup } from './train/warmup.js';
export type { WarmupOptions, WarmupResult } from './train/warmup.js';

/**
 * The tiny-shapes recipe behind `mgllava demo [--ablation]`: synthetic data -> encoder warm-up -> pretrain ->
 * finetune -> eval -> export (`runDemo`), and the fusion / object-token ablation (`runAblation`); progress goes to
 * a `Log` (`{ line(text), stream }`).
 */
export { runDemo } from './recipes/tiny-shapes/demo.js';
export type { DemoOptions, DemoSummary } from './recipes/tiny-shapes/demo.js';
export { runAblation, VARIANTS as ABLATION_VARIANTS } from './recipes/tiny-shapes/ablation.js';
export type { AblationOptions } from './recipes/tiny-shapes/ablation.js';
export type { Log } from './recipes/tiny-shapes/pipeline.js';

// ---- run directories ---------------------------------------------------------------------------

/** Checkpoints of a run directory, its resolved config and per-step state, and its metrics. */
export { resolveCheckpoint, listCheckpoints, readRunConfig, readState, runDirOf, stepDirName, RunDirError } from './run/layout.js';
export type { ResolvedCheckpoint, CheckpointRef, TrainState } from './run/layout.js';
export { readMetrics, readMetricsRecords } from './run/metrics.js';
export type { MetricsLine, MetricsRecord } from './run/metrics.js';

// ---- inference ---------------------------------------------------------------------------------

/**
 * `ChatSession`: a multi-turn conversation about one image (`ask(text, { onToken })`), the template's stop
 * words, refused past the trained length. `generate(model, prompts, options)`: batched generation with the KV
 * cache. Images become visual tokens through `loadImageInput` + `visualTokensFor` (dispose them with
 * `disposeVisual`). `runEval`: normalised exact-match accuracy over records, overall and per category.
 */
export { ChatSession, ChatLengthError } from './infer/chat.js';
export type { ChatOptions, AskOptions } from './infer/chat.js';
export { generate, stopPlan } from './infer/generate.js';
export type { GenerateOptions, GenerationPrompt, Generation, FinishReason, VisualTokens } from './infer/generate.js';
export type { SamplingOptions } from './infer/sampling.js';
export { loadImageInput, visualTokensFor, disposeVisual, imageSizesOf } from './infer/visual.js';
export type { ImageInput } from './infer/visual.js';
export { findBoxEntry } from './infer/box-entry.js';
export { runEval, score, EvalInputError } from './infer/eval.js';
export type { EvalOptions, EvalSummary, CategoryScore, Prediction } from './infer/eval.js';
export { normalizeAnswer, answersMatch } from './infer/normalize.js';

// ---- export and import -------------------------------------------------------------------------

/**
 * `exportRun(run, { format: 'xtuner' | 'hf', out })`: a checkpoint as the PyTorch MG-LLaVA checkpoint or as a
 * Hugging Face LLaMA directory. `openPretrained(dir, kind)` + `writeConverted(source, file)`: a pretrained
 * CLIP / ConvNeXt / LLM directory under MG-LLaVA's checkpoint names (`mgllava import`).
 * `convertTorchCheckpoint(file, out, options)`: a PyTorch `.pth`/`.bin` to safetensors (`mgllava convert`).
 */
export { exportRun, ExportError } from './io/export.js';
export type { ExportOptions, ExportResult, ExportFormat } from './io/export.js';
export { openPretrained, writeConverted, loadPretrained, loadPretrainedPart, PretrainedError } from './io/pretrained.js';
export type { PretrainedSource, PretrainedLoadReport } from './io/pretrained.js';
export { convertTorchCheckpoint } from './io/torch-convert.js';
export type { ConvertOptions, ConvertResult } from './io/torch-convert.js';
export { readSafetensors, writeSafetensors, SafetensorsReader, SafetensorsError } from './io/safetensors.js';

// ---- data --------------------------------------------------------------------------------------

/**
 * The data pipeline's pieces: records and boxes (`loadRecords`, `loadBoxes`), checking (`checkDataset`),
 * images (`prepareImage`: PIL-exact resize + CLIP normalisation), the detector-box pipeline (`preprocessBoxes`),
 * chat templates and tokenizers, one conversation to ids and labels (`encodeConversation`), the checked
 * dataset (`loadDataset`), batching (`collate`, `DataLoader`, samplers), and the synthetic shapes set
 * (`synthDataset`, what `mgllava data synth` writes).
 */
export { loadRecords, parseRecords, loadBoxes, parseBoxes } from './data/records.js';
export type { LlavaRecord, Turn, BoxEntry, BadRecord } from './data/records.js';
export { checkDataset } from './data/check.js';
export type { CheckOptions, CheckReport } from './data/check.js';
export { prepareImage, decodeImage, CLIP_NORM, ImageError } from './data/image.js';
export type { PreparedImage, PrepareOptions, RgbImage, ImageSizes } from './data/image.js';
export { preprocessBoxes } from './data/boxes.js';
export type { Box, BoxInput, BoxOptions, BoxResult } from './data/boxes.js';
export { TEMPLATES, getTemplate, applyTemplate, stopWords } from './data/templates.js';
export type { PromptTemplate, TemplateName } from './data/templates.js';
export { loadTokenizer } from './data/tokenizer.js';
export type { TextTokenizer, TokenizerSpec } from './data/tokenizer.js';
export { encodeConversation, buildChatPrompt } from './data/conversation.js';
export type { EncodedConversation, ChatExchange } from './data/conversation.js';
export { IGNORE_INDEX, IMAGE_TOKEN, IMAGE_TOKEN_INDEX } from './data/constants.js';
export { loadDataset, MgDataset, BadDatasetError } from './data/dataset.js';
export type { LoadDatasetOptions, SampleOptions } from './data/dataset.js';
export { collate } from './data/collate.js';
export type { Batch, Sample } from './data/collate.js';
export { DataLoader } from './data/loader.js';
export type { LoaderOptions, LoadedBatch } from './data/loader.js';
export { SequentialSampler, ShuffleSampler, LengthGroupedSampler } from './data/sampler.js';
export type { Sampler } from './data/sampler.js';
export { synthDataset, SYNTH_FILES } from './data/synth.js';
export type { SynthOptions, SynthSummary } from './data/synth.js';
