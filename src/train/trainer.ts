/**
 * The two MG-LLaVA stages, `mgllava pretrain|finetune`: `mgllavaStage(stage)` is their StageSpec for the
 * stage runner (stage.ts), `train(options)` runs one (or its dry run).
 *
 *   model   random init from Rng(seed) + pretrained dirs + init.encoders_from / init.from (model/factory.ts
 *           buildModel), or the checkpoint's weights when resuming (checkpointModel)
 *   data    checked dataset, seeded sampler, prefetching loader (build-data.ts)
 *   step    grad_accum micro-batches -> clipped AdamW at lrAt(step) (step.ts), the frozen encoders' outputs
 *           from the feature cache when they are frozen (feature-cache.ts)
 *
 * Determinism: the init, the data order (a pure function of seed and epoch), the cursor and LoRA's dropout
 * masks (seeded by seed, optimizer step and micro-batch) are all the random state a run has (no augmentation),
 * so the same config gives the same losses, and a resumed run continues exactly where the checkpoint was taken.
 */
import path from 'node:path';
import { memoryCeilingBytes } from '../backend/memory.js';
import { loadConfig } from '../config/load.js';
import type { Batch } from '../data/collate.js';
import { IGNORE_INDEX } from '../data/constants.js';
import { baseWeightNames, buildModel, checkpointModel, modelConfigOf, trainableSet } from '../model/factory.js';
import type { MGLLaVA, Stage } from '../model/mgllava.js';
import { resolveCheckpoint, runDirOf } from '../run/layout.js';
import { buildTrainData, totalStepsOf, type TrainData } from './build-data.js';
import { countParameters } from './param-count.js';
import { dataAvailable, formatBytes, formatCount, formatDryRun, planJson, planRun, planShape } from './dry-run.js';
import { featureCacheFor, type FeatureCache, type TrainFeatureCache } from './feature-cache.js';
import { heldOutEvaluator } from './held-out.js';
import { checkMaxSteps, runtimeOf, TrainError, type RunOptions } from './loop.js';
import { checkConfigStage, runStage, type StageResult, type StageSpec } from './stage.js';
import { trainStep } from './step.js';
import { trainingPassSeed } from '../model/llm/lora.js';

export { TrainError };

export interface TrainOptions extends RunOptions {
  /** The command's stage; the config's `stage` must be the same. */
  stage: Stage;
  dryRun?: boolean;
  /** With dryRun: print the plan as one JSON line instead of the table. */
  json?: boolean;
  /**
   * The feature cache of an earlier run in this process (`TrainResult.featureCache`): reused when its
   * fingerprint matches (same images, preprocessing and frozen encoder weights), so this run starts filled.
   */
  featureCache?: FeatureCache | null;
}

export type TrainResult = Omit<StageResult<{ featureCache: FeatureCache | null }>, 'stopped'> & {
  stopped: StageResult['stopped'] | 'dry-run';
};

/** Longest text, most boxes and longest supervised part of the checked data (for the memory estimate). */
function dataShape(data: TrainData): { maxText: number; maxBoxes: number; maxSupervised: number } {
  let maxText = 1;
  let maxBoxes = 1;
  let maxSupervised = 1;
  for (const it of data.dataset.items) {
    maxText = Math.max(maxText, it.inputIds.length);
    maxBoxes = Math.max(maxBoxes, it.boxes?.boxes.length ?? 1);
    maxSupervised = Math.max(maxSupervised, it.labels.filter((l) => l !== IGNORE_INDEX).length);
  }
  return { maxText, maxBoxes, maxSupervised };
}

/**
 * The plan of a run without training: parameter counts and the memory of one step (dry-run.ts), from the
 * config and the pretrained directories' config.json files alone (no weight is read, no model built). The step
 * shape comes from the data when its files are there, else from the config's bounds. `json`: one line.
 */
async function dryRun(opts: TrainOptions): Promise<TrainResult> {
  const out = opts.out ?? process.stdout;
  const { config, file } = loadConfig(opts.configFile, opts.sets ?? []);
  checkConfigStage(config, file, opts.stage);
  checkMaxSteps(opts.maxSteps);
  const mcfg = await modelConfigOf(config);
  const data = dataAvailable(config) ? await buildTrainData(config, mcfg, { imageWorkers: 0 }) : null;
  try {
    const plan = planRun(mcfg, opts.stage, planShape(config, data ? dataShape(data) : null), countParameters(mcfg, opts.stage));
    const ceiling = memoryCeilingBytes();
    const total = data ? totalStepsOf(config, data.batchesPerEpoch) : 0;
    if (opts.json) out.write(`${planJson(plan)}\n`);
    else {
      out.write(
        data
          ? `data: ${data.dataset.size} records (${data.report.bad.length} problems), ${data.batchesPerEpoch} micro-batches of ${data.batchSize} per epoch, ` +
              `${total} optimizer steps (grad_accum ${config.train.grad_accum})\n`
          : `data: ${config.data.records} is not there; planning from the config\n`,
      );
      out.write(formatDryRun(plan.counts, plan.memory, ceiling, { checkpointing: plan.shape.checkpointing, from: plan.shape.from, batch: plan.shape.batch }));
      if (ceiling !== null && plan.memory.total > ceiling) {
        out.write(`this does not fit the wasm heap (ceiling ${formatBytes(ceiling)}): a run would stop at the memory guard; use --backend tensorflow, or reduce train.batch_size / data.max_length\n`);
      }
      out.write('dry run only: no weights read, nothing trained\n');
    }
    return {
      runDir: path.resolve(runDirOf(config)),
      step: 0,
      totalSteps: total,
      losses: [],
      stopped: 'dry-run',
      signal: null,
      secondsPerStep: null,
      warnings: [],
      runtime: runtimeOf(),
      heldOut: null,
      featureCache: null,
    };
  } finally {
    await data?.close();
  }
}

/**
 * The StageSpec of MG-LLaVA pretrain / finetune for `runStage`. Its trainable set is `trainableSet(model,
 * config)`; with frozen encoders it uses the feature cache (`previousCache`: one of an earlier run, reused
 * when it fits) and returns it in the result.
 */
export function mgllavaStage(stage: Stage, o: { featureCache?: FeatureCache | null } = {}): StageSpec<MGLLaVA, TrainData, Batch, { featureCache: FeatureCache | null }> {
  let cache: TrainFeatureCache | null = null;
  return {
    stage,
    buildData: (config, mcfg, b) => buildTrainData(config, mcfg, b),
    buildModel: async (config, _mcfg, _data, resumed, log) => {
      const model = resumed ? await checkpointModel(config, resumed.ck) : await buildModel(config, { log: (m) => log.note(m) });
      model.setActivationCheckpointing(config.train.activation_checkpointing);
      return model;
    },
    trainable: (model, config) => trainableSet(model, config),
    checkpointFiles: (_model, trainable) => ({ model: trainable }),
    baseWeights: (model, config) => {
      const all = model.weightMap();
      return new Map(baseWeightNames(model, config).map((n) => [n, all.get(n)!]));
    },
    async provenance(config, state) {
      if (state) return { initFrom: state.initFrom, encodersFrom: state.encodersFrom ?? null };
      const where = async (src: string | null) => (src ? resolveCheckpoint(src).then((c) => ({ runDir: c.runDir, step: c.step })) : null);
      return { initFrom: await where(config.init.from), encodersFrom: await where(config.init.encoders_from) };
    },
    describe({ config, data, model, totalSteps, trainable, resumed, runDir }) {
      const t = config.train;
      const nTrain = [...trainable.values()].reduce((n, v) => n + v.size, 0);
      return (
        `${stage} ${config.name}: ${data.dataset.size} records, ${data.batchesPerEpoch} micro-batches/epoch, ` +
        `${totalSteps} steps of ${t.batch_size}x${t.grad_accum}, ${formatCount(nTrain)} trainable of ${formatCount(model.numParameters())} parameters; ` +
        `${resumed ? `resuming at step ${resumed.state.step} from ${resumed.ck.stepDir}` : 'fresh start'}; run dir ${runDir}`
      );
    },
    async stepper({ config, model, data, trainable, log }, optimizer) {
      const t = config.train;
      const encodersTrain = [...trainable.keys()].some((n) => n.startsWith('visual_encoder'));
      if (encodersTrain && t.feature_cache === 'on') throw new TrainError('train.feature_cache=on needs frozen encoders, but this run trains encoder weights; use auto or off');
      cache = t.feature_cache === 'off' || encodersTrain ? null : await featureCacheFor(config, model, data, log, o.featureCache ?? null);
      const frozen = cache?.frozen;
      return {
        // LoRA dropout masks from (seed, optimizer step, micro-batch): a resumed run draws the same ones.
        run: (batches, lr) => trainStep({ model, trainable, optimizer, batches, lr, maxNorm: t.max_norm, frozen, dropoutSeed: (k) => trainingPassSeed(config.seed, optimizer.step, k) }),
        summary: cache ? () => cache!.summary() : undefined,
      };
    },
    heldOut: ({ config, model, data, runDir }) => heldOutEvaluator({ config, model, tokenizer: data.tokenizer, runDir, frozenFor: cache ? (d) => cache!.frozenFor(d) : undefined }),
    idsOf: (b) => b.ids,
    finish: async () => ({ featureCache: cache?.cache ?? null }),
  };
}

/** `mgllava pretrain|finetune`: run the stage (or, with `dryRun`, only check and estimate it). */
export async function train(opts: TrainOptions): Promise<TrainResult> {
  if (opts.dryRun) return dryRun(opts);
  return runStage(mgllavaStage(opts.stage, { featureCache: opts.featureCache }), opts);
}
