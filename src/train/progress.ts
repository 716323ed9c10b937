/**
 * Training progress: a cli-progress bar on a terminal, plain lines (every log_steps) otherwise.
 * Notes and warnings go through the same object so they never tear the bar.
 */
import cliProgress from 'cli-progress';

export interface ProgressFields {
  step: number;
  total: number;
  /** Loss / grad norm of the last applied step (null: skipped). */
  loss: number | null;
  /**
   * On logged steps: the mean loss of the window that metrics.jsonl just stored for this line, and its length
   * (absent on other steps). The console's `loss` is the last step's; metrics.jsonl keeps window means.
   */
  window?: { loss: number | null; steps: number };
  lr: number;
  gradNorm: number | null;
  tokensPerS: number;
  dataWaitMs: number;
  numTensors: number;
  /** Estimated seconds to the end of this invocation. */
  etaS: number;
}

export interface Progress {
  /** After every step; `logLine` is true on the steps whose metrics are logged. */
  update(f: ProgressFields, logLine: boolean): void;
  note(message: string): void;
  warn(message: string): void;
  stop(): void;
}

export type ProgressMode = 'bar' | 'lines' | 'off';

export function formatDuration(s: number): string {
  if (!Number.isFinite(s) || s < 0) return '?';
  const t = Math.round(s);
  const h = Math.floor(t / 3600);
  const m = Math.floor((t % 3600) / 60);
  const sec = t % 60;
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m` : m > 0 ? `${m}m${String(sec).padStart(2, '0')}s` : `${sec}s`;
}

const num = (x: number | null, digits = 4) => (x === null ? 'skipped' : x.toFixed(digits));

function fieldsText(f: ProgressFields): Record<string, string> {
  return {
    loss: num(f.loss),
    lr: f.lr.toExponential(2),
    gnorm: num(f.gradNorm, 3),
    tps: f.tokensPerS.toFixed(0),
    wait: f.dataWaitMs.toFixed(0),
    tensors: String(f.numTensors),
    remaining: formatDuration(f.etaS),
  };
}

/** `loss 1.2346 last` or, with a window of several steps, `loss 1.2346 last / 1.3001 mean of 10` (the metrics.jsonl value). */
function lossText(f: ProgressFields): string {
  const last = `loss ${num(f.loss)} last`;
  return f.window && f.window.steps > 1 ? `${last} / ${num(f.window.loss)} mean of ${f.window.steps}` : last;
}

export function plainLine(f: ProgressFields): string {
  const t = fieldsText(f);
  return `step ${f.step}/${f.total}  ${lossText(f)}  lr ${t.lr}  gnorm ${t.gnorm}  tok/s ${t.tps}  data-wait ${t.wait} ms  tensors ${t.tensors}  eta ${t.remaining}`;
}

export function createProgress(mode: ProgressMode, out: NodeJS.WriteStream = process.stdout, err: NodeJS.WriteStream = process.stderr): Progress {
  if (mode === 'bar') {
    const multi = new cliProgress.MultiBar(
      {
        // ({eta} is cli-progress's own token; ours is {remaining}: the ETA of this invocation's steps.)
        format: 'step {value}/{total} |{bar}| last loss {loss} lr {lr} gnorm {gnorm} tok/s {tps} wait {wait}ms tensors {tensors} eta {remaining}',
        hideCursor: true,
        clearOnComplete: false,
        stream: out,
        barsize: 24,
      },
      cliProgress.Presets.shades_classic,
    );
    let bar: cliProgress.SingleBar | null = null;
    return {
      update(f) {
        if (!bar) bar = multi.create(f.total, f.step - 1, fieldsText(f));
        bar.update(f.step, fieldsText(f));
      },
      note: (m) => multi.log(`${m}\n`),
      warn: (m) => multi.log(`warning: ${m}\n`),
      stop: () => {
        multi.update(); // flush notes logged after the last redraw
        multi.stop();
      },
    };
  }
  return {
    update(f, logLine) {
      if (mode === 'lines' && logLine) out.write(`${plainLine(f)}\n`);
    },
    note: (m) => {
      if (mode !== 'off') out.write(`${m}\n`);
    },
    warn: (m) => err.write(`warning: ${m}\n`),
    stop: () => undefined,
  };
}
