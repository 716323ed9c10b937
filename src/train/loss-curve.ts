/**
 * The loss curve as a standalone SVG (plain string building, no dependency): loss against step, with
 * "nice" ticks on both axes. Skipped windows (loss null) leave gaps. With held-out evaluations
 * (train.eval_steps) their loss is drawn beside the training loss (orange, with dots) and a legend names both.
 */
export interface CurvePoint {
  step: number;
  loss: number | null;
}

const W = 720;
const H = 360;
const M = { left: 64, right: 20, top: 36, bottom: 44 };

/** About `n` round tick values covering [lo, hi]. */
export function niceTicks(lo: number, hi: number, n = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((k) => k * mag).find((s) => s >= raw)!;
  const out: number[] = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(Number(t.toPrecision(12)));
  return out;
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const fmt = (x: number) => (Math.abs(x) >= 1000 || (x !== 0 && Math.abs(x) < 0.01) ? x.toExponential(1) : String(Number(x.toPrecision(4))));

const TRAIN_COLOUR = '#1f77b4';
const HELD_OUT_COLOUR = '#ff7f0e';

/** `points`: the training loss (metrics.jsonl window means); `heldOut`: held-out losses at their steps. */
export function lossCurveSvg(points: readonly CurvePoint[], title: string, heldOut: readonly CurvePoint[] = []): string {
  const isFinite = (p: CurvePoint): p is { step: number; loss: number } => p.loss !== null && Number.isFinite(p.loss);
  const finite = [...points, ...heldOut].filter(isFinite);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="20" text-anchor="middle" font-size="14">${esc(title)}</text>`,
  ];
  if (finite.length === 0) {
    parts.push(`<text x="${W / 2}" y="${H / 2}" text-anchor="middle">no finite loss logged</text>`, '</svg>');
    return `${parts.join('\n')}\n`;
  }
  const x0 = Math.min(...finite.map((p) => p.step));
  const x1 = Math.max(...finite.map((p) => p.step));
  const ys = finite.map((p) => p.loss);
  let y0 = Math.min(...ys);
  let y1 = Math.max(...ys);
  if (y1 - y0 < 1e-12) {
    y0 -= 0.5;
    y1 += 0.5;
  }
  const xs = x1 > x0 ? [x0, x1] : [x0 - 1, x0 + 1];
  const pw = W - M.left - M.right;
  const ph = H - M.top - M.bottom;
  const sx = (s: number) => M.left + ((s - xs[0]!) / (xs[1]! - xs[0]!)) * pw;
  const sy = (l: number) => M.top + (1 - (l - y0) / (y1 - y0)) * ph;
  // Axes and grid.
  parts.push(`<g stroke="#ddd">`);
  for (const t of niceTicks(y0, y1)) parts.push(`<line x1="${M.left}" x2="${M.left + pw}" y1="${sy(t).toFixed(1)}" y2="${sy(t).toFixed(1)}"/>`);
  parts.push('</g>', `<g stroke="black"><line x1="${M.left}" y1="${M.top}" x2="${M.left}" y2="${M.top + ph}"/><line x1="${M.left}" y1="${M.top + ph}" x2="${M.left + pw}" y2="${M.top + ph}"/></g>`);
  for (const t of niceTicks(y0, y1)) parts.push(`<text x="${M.left - 6}" y="${(sy(t) + 4).toFixed(1)}" text-anchor="end">${fmt(t)}</text>`);
  for (const t of niceTicks(xs[0]!, xs[1]!).filter(Number.isInteger)) {
    parts.push(`<text x="${sx(t).toFixed(1)}" y="${M.top + ph + 16}" text-anchor="middle">${t}</text>`);
  }
  parts.push(
    `<text x="${M.left + pw / 2}" y="${H - 8}" text-anchor="middle">step</text>`,
    `<text x="14" y="${M.top + ph / 2}" text-anchor="middle" transform="rotate(-90 14 ${M.top + ph / 2})">loss</text>`,
  );
  // One polyline per run of consecutive finite points.
  const series = (ps: readonly CurvePoint[], colour: string, dots: boolean) => {
    let run: string[] = [];
    const flush = () => {
      if (run.length > 1) parts.push(`<polyline fill="none" stroke="${colour}" stroke-width="1.5" points="${run.join(' ')}"/>`);
      if (run.length === 1 || dots) {
        for (const xy of run) {
          const [x, y] = xy.split(',');
          parts.push(`<circle cx="${x}" cy="${y}" r="${dots ? 3 : 2}" fill="${colour}"/>`);
        }
      }
      run = [];
    };
    for (const p of ps) {
      if (!isFinite(p)) flush();
      else run.push(`${sx(p.step).toFixed(1)},${sy(p.loss).toFixed(1)}`);
    }
    flush();
  };
  series(points, TRAIN_COLOUR, false);
  if (heldOut.some(isFinite)) {
    series(heldOut, HELD_OUT_COLOUR, true);
    const lx = M.left + pw - 190;
    parts.push(
      `<line x1="${lx}" x2="${lx + 20}" y1="${M.top + 8}" y2="${M.top + 8}" stroke="${TRAIN_COLOUR}" stroke-width="2"/>`,
      `<text x="${lx + 26}" y="${M.top + 12}">training (window mean)</text>`,
      `<line x1="${lx}" x2="${lx + 20}" y1="${M.top + 24}" y2="${M.top + 24}" stroke="${HELD_OUT_COLOUR}" stroke-width="2"/>`,
      `<circle cx="${lx + 10}" cy="${M.top + 24}" r="3" fill="${HELD_OUT_COLOUR}"/>`,
      `<text x="${lx + 26}" y="${M.top + 28}">held-out</text>`,
    );
  }
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}
