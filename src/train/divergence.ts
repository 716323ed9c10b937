/**
 * Divergence warnings: a loss spike (the step's loss above SPIKE_FACTOR x the median of the recent applied
 * steps) or a gradient-norm explosion (the norm before clipping above NORM_FACTOR x its recent median). Each
 * warns once per episode: a condition that holds for several steps in a row is one warning, and it may warn
 * again after a step without it. Advisory only: nothing about the training changes.
 *
 * The history is this invocation's (a resumed run starts a fresh one), and needs MIN_HISTORY applied steps
 * before anything is judged: the first steps of a run move too much to have a "normal".
 */

/** Loss above this multiple of its recent median: a spike. */
export const SPIKE_FACTOR = 4;
/** Gradient norm above this multiple of its recent median: an explosion. */
export const NORM_FACTOR = 10;
/** Applied steps in the median window. */
export const WINDOW = 20;
/** Applied steps seen before anything is judged. */
export const MIN_HISTORY = 5;

export type DivergenceKind = 'loss_spike' | 'grad_norm';

export interface DivergenceWarning {
  kind: DivergenceKind;
  step: number;
  /** The step's loss or gradient norm, and the median it is compared with. */
  value: number;
  median: number;
  ratio: number;
  lr: number;
  /** Ids of the records in the step's micro-batches. */
  records: string[];
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export class DivergenceMonitor {
  private readonly losses: number[] = [];
  private readonly norms: number[] = [];
  private readonly inEpisode: Record<DivergenceKind, boolean> = { loss_spike: false, grad_norm: false };
  /** Every warning of this invocation (the end-of-run summary repeats them). */
  readonly warnings: DivergenceWarning[] = [];

  /** Judge one step against the history before it; returns the warnings that start an episode here. */
  observe(s: { step: number; loss: number; gradNorm: number; applied: boolean; lr: number; records: () => string[] }): DivergenceWarning[] {
    // Non-finite steps are skipped by the loop and reported there.
    if (!s.applied || !Number.isFinite(s.loss) || !Number.isFinite(s.gradNorm)) return [];
    const out: DivergenceWarning[] = [];
    const judge = (kind: DivergenceKind, value: number, history: number[], factor: number) => {
      const m = history.length >= MIN_HISTORY ? median(history) : NaN;
      const over = m > 0 && value > factor * m;
      if (over && !this.inEpisode[kind]) out.push({ kind, step: s.step, value, median: m, ratio: value / m, lr: s.lr, records: s.records() });
      this.inEpisode[kind] = over;
      history.push(value);
      if (history.length > WINDOW) history.shift();
    };
    judge('loss_spike', s.loss, this.losses, SPIKE_FACTOR);
    judge('grad_norm', s.gradNorm, this.norms, NORM_FACTOR);
    this.warnings.push(...out);
    return out;
  }
}

/** The warning as printed when it fires. */
export function formatDivergence(w: DivergenceWarning): string {
  const what =
    w.kind === 'loss_spike'
      ? `loss spike: ${w.value.toPrecision(4)} is ${w.ratio.toFixed(1)}x the median of the recent steps (${w.median.toPrecision(4)})`
      : `gradient norm explosion: ${w.value.toPrecision(4)} is ${w.ratio.toFixed(1)}x the median of the recent steps (${w.median.toPrecision(4)})`;
  return `step ${w.step}: ${what}; lr ${w.lr.toExponential(2)}; records: ${w.records.join(', ')}`;
}

/** The end-of-run summary line, or null without warnings. */
export function summarizeDivergence(ws: readonly DivergenceWarning[]): string | null {
  if (ws.length === 0) return null;
  const one = (w: DivergenceWarning) => `step ${w.step} (${w.kind === 'loss_spike' ? 'loss' : 'grad norm'} ${w.ratio.toFixed(1)}x, lr ${w.lr.toExponential(2)})`;
  return `${ws.length} divergence warning(s) in this run: ${ws.map(one).join(', ')}`;
}
