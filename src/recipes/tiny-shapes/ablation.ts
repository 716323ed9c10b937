/**
 * `mgllava demo --ablation`: what each granularity adds, on the demo's data and budget.
 *
 * Three variants (configs/tiny-shapes/ablation/): `lowres` (CLIP ViT tokens only), `fusion` (+ Conv-Gate
 * fusion of the high-resolution ConvNeXt map), `full` (+ object tokens), each trained with two seeds
 * (init + data order; the dataset is the same). Per seed one stage-0 warm-up, shared by the three variants
 * (each loads the encoders it has). Then pretrain -> finetune -> eval on the held-out split. No "train on":
 * every variant gets the same budget. Reports accuracy overall, on small-object colour questions and on
 * large-object shape questions: mean, spread (sample SD) and range over the seeds, and the issue's targets.
 */
import path from 'node:path';
import type { EvalSummary } from '../../infer/eval.js';
import { formatDuration } from '../../train/progress.js';
import { CONFIGS, ensureDataset, evaluate, pct, runSize, secondsSince, sizeSets, trainStage, warmupStage, type Log, type RunSizeOptions, type StageRecord } from './pipeline.js';

export const VARIANTS = ['lowres', 'fusion', 'full'] as const;
export type Variant = (typeof VARIANTS)[number];
const LABEL: Record<Variant, string> = { lowres: 'low-res only', fusion: 'fusion only', full: 'full (fusion + objects)' };

export interface AblationOptions extends RunSizeOptions {
  seeds: number[];
  variants: Variant[];
  resume?: boolean;
  backend: string;
}

interface RunScore {
  variant: Variant;
  seed: number;
  overall: number;
  small: number;
  largeShape: number;
  finetuneLoss: number;
  seconds: number;
  run: string;
}

interface Agg {
  mean: number;
  sd: number;
  min: number;
  max: number;
  runs: number[];
}

const DATA = 'data/tiny-shapes';

/** Run the ablation; progress goes to `log`. Returns the summary object (`--json`) and its table as text. */
export async function runAblation(o: AblationOptions, log: Log): Promise<{ summary: object; text: string }> {
  const T0 = performance.now();
  const size = runSize(o);
  const { seeds, variants } = o;
  const resume = o.resume === true;
  log.line(`MG-LLaVA ablation: ${variants.join(' / ')} x seeds ${seeds.join(', ')}, backend ${o.backend}${size.smoke ? ' (smoke: a few steps)' : ''}, in ${process.cwd()}`);

  const stages: StageRecord[] = [];
  stages.push(await ensureDataset({ dir: DATA, seed: 0, train: size.trainImages, eval: size.evalImages }, log));
  const scores: RunScore[] = [];
  const cat = (s: EvalSummary, k: string) => s.byCategory[k]?.accuracy ?? NaN;
  let questions = 0;

  for (const seed of seeds) {
    const warm = await warmupStage({ file: path.join(CONFIGS, 'warmup.yaml'), sets: [`name=ablation-warmup-s${seed}`, `seed=${seed}`, ...sizeSets(size, size.warmupSteps)] }, log, { resume });
    stages.push({ ...warm.record, stage: `warmup s${seed}` });
    const encoders = path.relative(process.cwd(), warm.result.runDir);
    for (const v of variants) {
      const t0 = performance.now();
      const pre = await trainStage(
        'pretrain',
        `${v} s${seed} pretrain`,
        { file: path.join(CONFIGS, 'ablation', `${v}-pretrain.yaml`), sets: [`name=ablation-${v}-pretrain-s${seed}`, `seed=${seed}`, `init.encoders_from=${encoders}`, ...sizeSets(size, size.pretrainSteps)] },
        log,
        { resume },
      );
      stages.push(pre.record);
      const ft = await trainStage(
        'finetune',
        `${v} s${seed} finetune`,
        {
          file: path.join(CONFIGS, 'ablation', `${v}-finetune.yaml`),
          sets: [`name=ablation-${v}-finetune-s${seed}`, `seed=${seed}`, `init.from=${path.relative(process.cwd(), pre.result.runDir)}`, 'init.encoders_from=null', ...sizeSets(size, size.finetuneSteps)],
        },
        log,
        { resume, featureCache: pre.result.featureCache },
      );
      stages.push(ft.record);
      const ev = await evaluate(ft.result.runDir, { label: 'held-out', dir: DATA, limit: size.evalLimit ?? undefined }, log);
      stages.push({ ...ev.record, stage: `${v} s${seed} eval` });
      const s = ev.summary;
      questions = s.count;
      scores.push({
        variant: v,
        seed,
        overall: s.accuracy,
        small: cat(s, 'small_color'),
        largeShape: cat(s, 'large_shape'),
        finetuneLoss: ft.record.loss!,
        seconds: secondsSince(t0),
        run: path.relative(process.cwd(), ft.result.runDir),
      });
    }
  }

  // ---------------------------------------------------------------------------------------------- summary
  const agg = (xs: number[]): Agg => {
    const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
    const sd = xs.length > 1 ? Math.sqrt(xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (xs.length - 1)) : 0;
    return { mean, sd, min: Math.min(...xs), max: Math.max(...xs), runs: xs };
  };
  const metrics = ['overall', 'small', 'largeShape'] as const;
  const table = Object.fromEntries(
    variants.map((v) => {
      const rs = scores.filter((r) => r.variant === v);
      return [v, Object.fromEntries(metrics.map((m) => [m, agg(rs.map((r) => r[m]))])) as Record<(typeof metrics)[number], Agg>];
    }),
  ) as Partial<Record<Variant, Record<(typeof metrics)[number], Agg>>>;
  const fmt = (a: Agg) => `${pct(a.mean)} ± ${(100 * a.sd).toFixed(1)} (${(100 * a.min).toFixed(1)}-${(100 * a.max).toFixed(1)})`;
  const targets: { name: string; value: number | null; need: number; met: boolean | null }[] = [];
  const target = (name: string, value: number | null, need: number) => targets.push({ name, value, need, met: value === null ? null : value >= need });
  target('full overall >= 90 %', table.full ? table.full.overall.mean : null, 0.9);
  target('full small-object colour >= 90 %', table.full ? table.full.small.mean : null, 0.9);
  target('full - low-res on small-object colour >= 50 points', table.full && table.lowres ? table.full.small.mean - table.lowres.small.mean : null, 0.5);
  target('fusion - low-res on large-object shape >= 5 points', table.fusion && table.lowres ? table.fusion.largeShape.mean - table.lowres.largeShape.mean : null, 0.05);

  const seconds = secondsSince(T0);
  const w = Math.max(...variants.map((v) => LABEL[v].length));
  const lines = [
    '',
    `MG-LLaVA ablation (tiny-shapes, ${seeds.length} seed(s): ${seeds.join(', ')}, backend ${o.backend}; ${questions} held-out questions per run; mean ± SD (min-max))`,
    `  ${'variant'.padEnd(w)}  ${'overall'.padEnd(26)}  ${'small-object colour'.padEnd(26)}  large-object shape`,
    ...variants.map((v) => `  ${LABEL[v].padEnd(w)}  ${fmt(table[v]!.overall).padEnd(26)}  ${fmt(table[v]!.small).padEnd(26)}  ${fmt(table[v]!.largeShape)}`),
    '',
    '  per run:',
    ...scores.map(
      (r) =>
        `    ${r.variant.padEnd(7)} seed ${r.seed}: overall ${pct(r.overall)}, small ${pct(r.small)}, large shape ${pct(r.largeShape)}, finetune loss ${r.finetuneLoss.toFixed(4)}, ${formatDuration(r.seconds)} (${r.run})`,
    ),
    '',
    '  targets (issue 6):',
    ...targets.map((t) => `    ${t.met === null ? 'n/a ' : t.met ? 'MET ' : 'MISS'}  ${t.name}: ${t.value === null ? '-' : t.name.includes('points') ? `${(100 * t.value).toFixed(1)} points` : pct(t.value)}`),
    `  total ${formatDuration(seconds)}`,
  ];
  return { summary: { variants: table, runs: scores, targets, seeds, seconds, backend: o.backend, warmup: true, stages }, text: lines.join('\n') };
}
