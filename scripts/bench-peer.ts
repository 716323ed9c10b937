/**
 * `npm run bench:peer`: our tiny-e2e training step (`mgllava bench step --json`) against the PyTorch peer
 * (../shared/torch-reference/timing_ref.py, Debian's /usr/bin/python3 + python3-torch), run alternately
 * in this one command so both see the same machine load. Prints, per mode, each pair (ours ms, PyTorch
 * ms, ratio ours/PyTorch) and the median of the pair ratios.
 *
 *   npx tsx scripts/bench-peer.ts [--runs 3] [--threads 1,2] [--json] [--backend wasm]
 *                                 [--python /usr/bin/python3] [--peer-dir ../shared/torch-reference]
 *
 * --threads: ours once per listed thread count in every round: the threads of the native matmul
 * addon (MGLLAVA_NATIVE_THREADS; the rest of the step runs single-threaded in wasm), or, with
 * MGLLAVA_NATIVE=off, of the threaded wasm build (MGLLAVA_WASM_THREADS; 1 = the stock build). The
 * peer always uses 2 threads. Default 1,2. Each round runs the peer and every variant of ours in a
 * rotating order.
 *
 * Without python3 or torch the peer is skipped with a message and only our numbers are printed.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseNativeMode } from '../src/backend/native.js';

const ROOT = path.resolve(import.meta.dirname, '..');
const MODES = ['pretrain', 'sft'] as const;
type Mode = (typeof MODES)[number];

interface Args {
  runs: number;
  json: boolean;
  backend: string | null;
  threads: number[];
  python: string;
  peerDir: string;
}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    runs: 3,
    json: false,
    backend: null,
    threads: [1, 2],
    python: process.env.MGLLAVA_PYTHON ?? '/usr/bin/python3',
    peerDir: process.env.MGLLAVA_TORCH_REFERENCE ?? path.resolve(ROOT, '../shared/torch-reference'),
  };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!;
    const val = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`bench-peer: ${k} needs a value`);
      return v;
    };
    if (k === '--json') a.json = true;
    else if (k === '--runs') a.runs = Number(val());
    else if (k === '--backend') a.backend = val();
    else if (k === '--threads') a.threads = val().split(',').map(Number);
    else if (k === '--python') a.python = val();
    else if (k === '--peer-dir') a.peerDir = path.resolve(val());
    else throw new Error(`bench-peer: unknown argument '${k}' (known: --runs N, --json, --backend NAME, --threads N, --python PATH, --peer-dir DIR)`);
  }
  if (!a.threads.length || a.threads.some((t) => !(Number.isInteger(t) && t >= 1))) {
    throw new Error(`bench-peer: --threads must be a comma-separated list of positive integers, got ${a.threads.join(',')}`);
  }
  if (!Number.isInteger(a.runs) || a.runs < 1) throw new Error(`bench-peer: --runs must be a positive integer, got ${a.runs}`);
  return a;
}

/** Why the peer cannot run here, or null when it can. */
function peerUnavailable(a: Args): string | null {
  const script = path.join(a.peerDir, 'timing_ref.py');
  if (!fs.existsSync(script)) return `${script} not found (--peer-dir)`;
  if (!fs.existsSync(a.python)) return `${a.python} not found (install Debian's python3, or pass --python)`;
  // The peer's object features use torchvision's roi_align.
  const r = spawnSync(a.python, ['-c', 'import torch, torchvision'], { encoding: 'utf8' });
  if (r.status !== 0) {
    const why = (r.stderr || r.error?.message || '').trim().split('\n').pop();
    return `${a.python} cannot import torch and torchvision (${why}); apt-get install -y python3-torch python3-torchvision python3-numpy libopenblas0-pthread`;
  }
  return null;
}

/** Last line of a child's stdout parsed as JSON; a clear error with its stderr otherwise. */
function runJson(what: string, cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = process.env): Record<string, unknown> {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', maxBuffer: 64 << 20, env });
  const line = (r.stdout ?? '').trim().split('\n').pop() ?? '';
  if (r.status !== 0 || !line.startsWith('{')) {
    throw new Error(`bench-peer: ${what} failed (exit ${r.status ?? r.signal}): ${(r.stderr || r.error?.message || line).trim().slice(-2000)}`);
  }
  return JSON.parse(line) as Record<string, unknown>;
}

type PerMode = Record<Mode, number>;

interface Round {
  /** ours[v]: the variant with a.threads[v] threads. */
  ours: { ms: PerMode; rssMB: number; phases: unknown; matmul: string }[];
  peer: { ms: PerMode; phases: unknown } | null;
}

function runOurs(a: Args, threads: number): Round['ours'][number] {
  const args = [path.join(ROOT, 'bin/mgllava.js'), 'bench', 'step', '--json'];
  if (a.backend) args.push('--backend', a.backend);
  const nativeOff = parseNativeMode(process.env.MGLLAVA_NATIVE) === 'off';
  const env = nativeOff
    ? { ...process.env, MGLLAVA_WASM_THREADS: String(threads) }
    : { ...process.env, MGLLAVA_NATIVE_THREADS: String(threads), MGLLAVA_WASM_THREADS: '1' };
  const r = runJson(`mgllava bench step --json (${threads} thread(s))`, process.execPath, args, ROOT, env);
  return { ms: { pretrain: Number(r.pretrainMs), sft: Number(r.sftMs) }, rssMB: Number(r.rssMB), phases: r.phases, matmul: String(r.matmul) };
}

function runPeer(a: Args): NonNullable<Round['peer']> {
  const r = runJson('timing_ref.py', a.python, ['timing_ref.py'], a.peerDir);
  const phases = (m: Mode) => (r[m] as Record<string, unknown>).breakdown_median_ms;
  return { ms: { pretrain: Number(r.pretrain_ms_per_step), sft: Number(r.sft_ms_per_step) }, phases: { pretrain: phases('pretrain'), sft: phases('sft') } };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((x, y) => x - y);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const r3 = (x: number) => Math.round(x * 1000) / 1000;

function main(): void {
  const a = parseArgs(process.argv.slice(2));
  const skip = peerUnavailable(a);
  if (skip && !a.json) process.stdout.write(`PyTorch peer skipped: ${skip}\n`);
  const rounds: Round[] = [];
  for (let i = 0; i < a.runs; i++) {
    // Rotate the order (peer, ours variants) so no side always runs right after another's warm-up.
    const jobs: (() => void)[] = [];
    const round: Round = { ours: [], peer: null };
    if (!skip) jobs.push(() => (round.peer = runPeer(a)));
    a.threads.forEach((t, v) => jobs.push(() => (round.ours[v] = runOurs(a, t))));
    for (let j = 0; j < jobs.length; j++) jobs[(i + j) % jobs.length]!();
    rounds.push(round);
    if (!a.json) process.stderr.write(`round ${i + 1}/${a.runs} done\n`);
  }
  const machine = `${os.cpus().length} x ${os.cpus()[0]?.model ?? '?'}`;
  const variants = a.threads.map((threads, v) => ({
    threads,
    ...Object.fromEntries(
      MODES.map((m) => {
        const ratios = skip ? null : rounds.map((r) => r.ours[v]!.ms[m] / r.peer!.ms[m]);
        return [m, { oursMs: rounds.map((r) => r.ours[v]!.ms[m]), ratios: ratios?.map(r3) ?? null, medianRatio: ratios ? r3(median(ratios)) : null }];
      }),
    ),
  })) as ({ threads: number } & Record<Mode, { oursMs: number[]; ratios: number[] | null; medianRatio: number | null }>)[];
  const peerMs = skip ? null : Object.fromEntries(MODES.map((m) => [m, rounds.map((r) => r.peer!.ms[m])]));
  const peakRssMB = Math.max(...rounds.flatMap((r) => r.ours.map((o) => o.rssMB)));
  if (a.json) {
    const phases = rounds.map((r) => ({ ours: r.ours.map((o) => o.phases), peer: r.peer?.phases ?? null }));
    const matmul = rounds[0]?.ours.map((o) => o.matmul) ?? [];
    process.stdout.write(`${JSON.stringify({ backend: a.backend ?? 'wasm', matmul, machine, runs: a.runs, peer: skip ? { skipped: skip } : 'timing_ref.py', peerMs, variants, peakRssMB, phases })}\n`);
    return;
  }
  const label = (t: number) => `${t}t`;
  const matmuls = [...new Set(rounds.flatMap((r) => r.ours.map((o) => o.matmul)))].join(', ');
  const out = [
    `tiny-e2e training step: ours (${a.backend ?? 'wasm'}, matmul ${matmuls}) vs PyTorch (timing_ref.py, 2 threads)`,
    `${a.runs} rounds in rotating order on ${machine}; ms per step (median of 10 steps after 3 warm-up); ratio = ours / PyTorch of the same round`,
  ];
  for (const m of MODES) {
    const cols = [...a.threads.map((t) => `ours ${label(t)}`), 'PyTorch', ...a.threads.map((t) => `ratio ${label(t)}`)];
    out.push('', `${m}:`, `${'round'.padEnd(6)}${cols.map((c) => c.padStart(11)).join('')}`);
    rounds.forEach((r, i) => {
      const cells = [
        ...r.ours.map((o) => o.ms[m].toFixed(1)),
        r.peer ? r.peer.ms[m].toFixed(1) : '-',
        ...r.ours.map((o) => (r.peer ? (o.ms[m] / r.peer.ms[m]).toFixed(2) : '-')),
      ];
      out.push(`${String(i + 1).padEnd(6)}${cells.map((c) => c.padStart(11)).join('')}`);
    });
    for (const v of variants) {
      const med = v[m].medianRatio;
      out.push(`median of the pair ratios, ${label(v.threads)}: ${med == null ? '- (peer skipped)' : med.toFixed(2)}`);
    }
  }
  out.push('', `our peak RSS ${peakRssMB} MB`, '');
  process.stdout.write(out.join('\n'));
}

try {
  main();
} catch (e) {
  process.stderr.write(`${(e as Error).message}\n`);
  process.exitCode = 1;
}
