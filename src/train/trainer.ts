/**
 * The two-stage trainer: `mgllava pretrain|finetune`.
 *
 *   config -> run dir (fresh, or resumed from a checkpoint with the same config hash)
 *          -> model (random init from Rng(seed) + pretrained dirs + init.from; or the checkpoint's weights)
 *          -> data (checked dataset, seeded sampler, prefetching loader at the saved cursor)
 *          -> steps (loop.ts, shared with the warm-up): grad_accum micro-batches -> clipped AdamW at lrAt(step)
 *             -> metrics, progress, checkpoints
 *
 * Determinism: the init, the data order (a pure function of seed and epoch) and the cursor are all the
 * random state a run has (no dropout, no augmentation), so the same config gives the same losses, and a
 * resumed run continues exactly where the checkpoint was taken.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { loadConfig } from '../config/load.js';
import type { ExperimentConfig } from '../config/schema.js';
import { memoryCeilingBytes } from '../backend/memory.js';
import type { Batch } from '../data/collate.js';
import type { MGLLaVA, Stage } from '../model/mgllava.js';
import { AdamW } from './adamw.js';
import { buildTrainData, totalStepsOf, type TrainData } from './build-data.js';
import { readOptimizerState } from './checkpoint.js';
import { countParameters } from './param-count.js';
import { estimateMemory, formatBytes, formatCount, formatDryRun } from './dry-run.js';
import { checkMaxSteps, openRunDir, progressFor, resumePoint, runSteps, TrainError, writeLossCurve, type LoopResult, type RunOptions } from './loop.js';
import { BASE_FILE, baseWeightNames, buildModel, checkpointModel, modelConfigOf, resolveCheckpoint, runDirOf } from './run-dir.js';
import { trainStep } from './step.js';
import { featureCacheFor } from './feature-cache.js';
import { writeWeightsFile } from './weights-io.js';

export { TrainError };

export interface TrainOptions extends RunOptions {
  /** The command's stage; the config's `stage` must be the same. */
  stage: Stage;
  dryRun?: boolean;
}

export interface TrainResult extends Omit<LoopResult, 'stopped'> {
  runDir: string;
  totalSteps: number;
  stopped: LoopResult['stopped'] | 'dry-run';
}

/** Longest text, most boxes and longest supervised part of the checked data (for the memory estimate). */
function dataShape(data: TrainData): { maxText: number; maxBoxes: number; maxSupervised: number } {
  let maxText = 1;
  let maxBoxes = 1;
  let maxSupervised = 1;
  for (const it of data.dataset.items) {
    maxText = Math.max(maxText, it.inputIds.length);
    maxBoxes = Math.max(maxBoxes, it.boxes?.boxes.length ?? 1);
    maxSupervised = Math.max(maxSupervised, it.labels.filter((l) => l !== -100).length);
  }
  return { maxText, maxBoxes, maxSupervised };
}

async function dryRun(config: ExperimentConfig, opts: TrainOptions, out: NodeJS.WriteStream): Promise<TrainResult> {
  const mcfg = await modelConfigOf(config);
  const data = await buildTrainData(config, mcfg, { imageWorkers: 0 });
  try {
    const counts = countParameters(mcfg, opts.stage);
    const mem = estimateMemory(mcfg, counts, { batch: config.train.batch_size, gradAccum: config.train.grad_accum, ...dataShape(data) });
    const ceiling = memoryCeilingBytes();
    const total = totalStepsOf(config, data.batchesPerEpoch);
    out.write(
      `data: ${data.dataset.size} records (${data.report.bad.length} problems), ${data.batchesPerEpoch} micro-batches of ${data.batchSize} per epoch, ` +
        `${total} optimizer steps (grad_accum ${config.train.grad_accum})\n`,
    );
    out.write(formatDryRun(counts, mem, ceiling));
    if (ceiling !== null && mem.total > ceiling) {
      throw new TrainError(
        `refusing: the estimated ${formatBytes(mem.total)} exceed the wasm ceiling of ${formatBytes(ceiling)}; ` +
          `use --backend tensorflow, or reduce train.batch_size / data.max_length (raise the ceiling with MGLLAVA_WASM_CEILING_MB at your own risk)`,
      );
    }
    const model = await buildModel(config, { log: (m) => out.write(`${m}\n`) });
    try {
      const built = new Map<string, number>();
      for (const [n, v] of model.weightMap()) {
        const top = n.split('.')[0]!;
        built.set(top, (built.get(top) ?? 0) + v.size);
      }
      const differs = counts.filter((c) => built.get(c.module) !== c.params);
      if (differs.length) throw new TrainError(`internal: parameter count formula differs from the built model for ${differs.map((c) => `${c.module} (${c.params} vs ${built.get(c.module)})`).join(', ')}`);
      out.write(`model built: ${formatCount(model.numParameters())} parameters; dry run only, nothing trained\n`);
    } finally {
      model.dispose();
    }
    return { runDir: path.resolve(runDirOf(config)), step: 0, totalSteps: total, losses: [], stopped: 'dry-run', secondsPerStep: null };
  } finally {
    await data.close();
  }
}

export async function train(opts: TrainOptions): Promise<TrainResult> {
  const out = opts.out ?? process.stdout;
  const { config, hash, file } = loadConfig(opts.configFile, opts.sets ?? []);
  if (config.stage !== opts.stage) throw new TrainError(`${file} is a '${config.stage}' config; run it with 'mgllava ${config.stage}'`);
  checkMaxSteps(opts.maxSteps);
  if (opts.dryRun) return dryRun(config, opts, out);

  const log = progressFor(opts);
  const runDir = path.resolve(runDirOf(config));
  const stage = opts.stage;
  const resumed = await resumePoint(opts, stage, runDir, hash, file, log);

  let model: MGLLaVA | null = null;
  let data: TrainData | null = null;
  let optimizer: AdamW | null = null;
  let loader: ReturnType<TrainData['loader']> | null = null;
  try {
    model = resumed ? await checkpointModel(config, resumed.ck) : await buildModel(config, { log: (m) => log.note(m) });
    data = await buildTrainData(config, model.config, { imageWorkers: opts.imageWorkers });
    const totalSteps = totalStepsOf(config, data.batchesPerEpoch);
    const state = resumed?.state ?? null;
    if (state && state.totalSteps !== totalSteps) throw new TrainError(`cannot resume: the checkpoint's run has ${state.totalSteps} steps, this data gives ${totalSteps}`);
    const stopAt = Math.min(totalSteps, opts.maxSteps ?? totalSteps);

    // Run dir: config, metrics cut back to the checkpoint, base weights (once).
    const metrics = await openRunDir(runDir, config, state, log);
    if (!state || !existsSync(path.join(runDir, BASE_FILE))) {
      const all = model.weightMap();
      await writeWeightsFile(path.join(runDir, BASE_FILE), new Map(baseWeightNames(model, config).map((n) => [n, all.get(n)!])), { config_hash: hash });
    }

    const trainable = model.trainableWeights(stage);
    const t = config.train;
    optimizer = new AdamW(trainable, { betas: t.betas, eps: t.eps, weightDecay: t.weight_decay });
    if (resumed) optimizer.loadState(resumed.state.optimizerStep, await readOptimizerState(resumed.ck.stepDir));
    loader = data.loader(state?.loader);
    const where = async (src: string | null) => (src ? resolveCheckpoint(src).then((c) => ({ runDir: c.runDir, step: c.step })) : null);
    const provenance = state
      ? { initFrom: state.initFrom, encodersFrom: state.encodersFrom ?? null }
      : { initFrom: await where(config.init.from), encodersFrom: await where(config.init.encoders_from) };

    const encodersTrain = [...trainable.keys()].some((n) => n.startsWith('visual_encoder'));
    if (encodersTrain && t.feature_cache === 'on') throw new TrainError('train.feature_cache=on needs frozen encoders, but this run trains encoder weights; use auto or off');
    const cache = t.feature_cache === 'off' || encodersTrain ? null : featureCacheFor(config, model, data, log);
    const nTrain = [...trainable.values()].reduce((n, v) => n + v.size, 0);
    log.note(
      `${stage} ${config.name}: ${data.dataset.size} records, ${data.batchesPerEpoch} micro-batches/epoch, ` +
        `${totalSteps} steps of ${t.batch_size}x${t.grad_accum}, ${formatCount(nTrain)} trainable of ${formatCount(model.numParameters())} parameters; ` +
        `${state ? `resuming at step ${state.step} from ${resumed!.ck.stepDir}` : 'fresh start'}; run dir ${runDir}`,
    );

    const m = model;
    const o = optimizer;
    const r = await runSteps<Batch>({
      config,
      stage,
      hash,
      runDir,
      totalSteps,
      stopAt,
      state,
      loader,
      optimizer,
      checkpointWeights: trainable,
      provenance,
      metrics,
      log,
      runStep: (batches, lr) => trainStep({ model: m, trainable, optimizer: o, batches, lr, maxNorm: t.max_norm, frozen: cache?.frozen }),
      idsOf: (b) => b.ids,
      onStep: opts.onStep,
      summary: cache ? () => cache.summary() : undefined,
    });
    return { runDir, totalSteps, ...r };
  } finally {
    await loader?.close();
    await data?.close();
    optimizer?.dispose();
    model?.dispose();
    await writeLossCurve(runDir, config, log);
    log.stop();
  }
}
