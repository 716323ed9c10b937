/**
 * The learning-rate schedule of the reference recipe (REFERENCE.md (j)), iteration based:
 * mmengine LinearLR(start_factor) over the first W = int(warmup_ratio * N) iterations, then
 * CosineAnnealingLR(eta_min) from W to N.
 */
export interface ScheduleConfig {
  baseLr: number;
  totalIters: number;
  warmupRatio: number;
  startFactor: number;
  etaMin: number;
}

export const DEFAULT_SCHEDULE = { warmupRatio: 0.03, startFactor: 1e-5, etaMin: 0 } as const;

/** Warm-up length: recent mmengine truncates the converted boundary with int(). */
export function warmupIters(cfg: Pick<ScheduleConfig, 'totalIters' | 'warmupRatio'>): number {
  return Math.trunc(cfg.warmupRatio * cfg.totalIters); // exactly Python int(), float rounding included
}

/** The learning rate used at iteration `step` (0-based). */
export function lrAt(step: number, cfg: ScheduleConfig): number {
  const w = warmupIters(cfg);
  if (step < w) {
    // Linear from start_factor to 1, reaching 1 on the last warm-up iteration.
    if (w <= 1) return cfg.baseLr * cfg.startFactor;
    return cfg.baseLr * (cfg.startFactor + ((1 - cfg.startFactor) * step) / (w - 1));
  }
  const t = cfg.totalIters - w;
  if (t <= 0) return cfg.baseLr;
  return cfg.etaMin + ((cfg.baseLr - cfg.etaMin) * (1 + Math.cos((Math.PI * (step - w)) / t))) / 2;
}
