#!/usr/bin/env bash
# The check to run the moment a machine with a GPU is available: from a fresh clone, unattended, prints ONE JSON
# object on stdout (everything else goes to a log folder named in it):
#   adapter     what Dawn offers (`doctor --backend webgpu --json`): vendor, architecture, device, type, software,
#               limits granted
#   golden      pass/fail per piece of the golden set on webgpu (`golden --backend webgpu --json`)
#   tinyE2e     ms per tiny-e2e training step (pretrain / sft) on webgpu and on wasm (`bench step`)
#   llama       tokens/s of the LLM alone, hidden 1024 / 8 layers / 512 positions, on webgpu (`bench llama`)
#   seconds     wall time of each part and in total (npm ci included)
# A part that fails is reported in `errors` and the rest still runs; exit status 0 when every part ran and every
# golden piece passed.
#
#   scripts/gpu-check.sh [--no-install]      (MGLLAVA_GOLDEN_DIR: the golden set, default ../shared/golden/public)
#
# On a software adapter (lavapipe: CPU emulation, ~1 GFLOP/s) the LLaMA part takes one step without warm-up, and
# the whole check takes many minutes; on a GPU it is meant to finish in under 5 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s%N)
LOG=$(mktemp -d "${TMPDIR:-/tmp}/mgllava-gpu-check.XXXXXX")
GOLDEN=${MGLLAVA_GOLDEN_DIR:-../shared/golden/public}
export MGLLAVA_NATIVE_THREADS=${MGLLAVA_NATIVE_THREADS:-$(nproc 2>/dev/null || echo 2)}
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
CLI=(node bin/mgllava.js)

# part NAME COMMAND...: stdout to $LOG/NAME.json, stderr to $LOG/NAME.err, milliseconds to $LOG/NAME.ms, status to $LOG/NAME.rc
part() {
  local name=$1
  shift
  local t=$(date +%s%N)
  "$@" >"$LOG/$name.json" 2>"$LOG/$name.err"
  echo $? >"$LOG/$name.rc"
  ms_since "$t" >"$LOG/$name.ms"
}

if [ "${1:-}" != "--no-install" ]; then
  part npm-ci npm ci --no-audit --no-fund
fi
part doctor "${CLI[@]}" doctor --backend webgpu --json
SOFTWARE=$(node -e 'try { const d = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")); process.stdout.write(String(d.webgpu.adapter.software)); } catch { process.stdout.write("unknown"); }' "$LOG/doctor.json")
if [ -f "$GOLDEN/manifest.json" ]; then
  part golden "${CLI[@]}" golden --backend webgpu --dir "$GOLDEN" --json
fi
part step-webgpu "${CLI[@]}" bench step --backend webgpu --json --warmup 1 --steps 3
part step-wasm "${CLI[@]}" bench step --backend wasm --json --warmup 1 --steps 3
if [ "$SOFTWARE" = "false" ]; then
  part llama "${CLI[@]}" bench llama --backend webgpu --json --warmup 1 --steps 3
else
  part llama "${CLI[@]}" bench llama --backend webgpu --json --warmup 0 --steps 1
fi

node - "$LOG" "$GOLDEN" "$(ms_since "$T0")" <<'NODE'
const fs = require('fs');
const path = require('path');
const [log, golden, total] = process.argv.slice(2);
const read = (name, f) => { try { return fs.readFileSync(path.join(log, `${name}.${f}`), 'utf8').trim(); } catch { return null; } };
const errors = [];
const seconds = {};
// json: false for a part whose output is a log, not a JSON line (npm ci): only its status and time count.
const part = (name, { json = true } = {}) => {
  const rc = read(name, 'rc');
  if (rc == null) return null;
  seconds[name] = Math.round(Number(read(name, 'ms')) / 100) / 10;
  if (rc !== '0') {
    const err = (read(name, 'err') ?? '').split('\n').filter((l) => !/artificially reduced/.test(l)).slice(-3).join(' | ');
    errors.push(`${name}: exit ${rc}: ${err}`);
  }
  const out = json ? read(name, 'json') : null;
  if (!out) return null;
  const lines = out.split('\n').filter((l) => l.startsWith('{'));
  try { return JSON.parse(lines[lines.length - 1]); } catch { errors.push(`${name}: unreadable output`); return null; }
};
part('npm-ci', { json: false });
const doctor = part('doctor');
const g = part('golden');
const stepGpu = part('step-webgpu');
const stepWasm = part('step-wasm');
const llama = part('llama');
const step = (s) => (s ? { pretrainMs: s.pretrainMs, sftMs: s.sftMs, tokensPerS: s.tokensPerS, matmul: s.matmul } : null);
const pieces = g ? Object.fromEntries(Object.entries(g.pieces).map(([n, p]) => [n, p.ok ? 'pass' : `fail: ${p.reason}`])) : null;
const result = {
  ok: errors.length === 0 && g != null && g.ok === true,
  adapter: doctor ? { ...doctor.webgpu.adapter, deviceLimits: doctor.webgpu.deviceLimits, dawn: doctor.webgpu.dawn, tfjsBackendWebgpu: doctor.webgpu.tfjsBackendWebgpu } : null,
  golden: g
    ? { dir: golden, passed: Object.values(g.pieces).filter((p) => p.ok).length, failed: Object.values(g.pieces).filter((p) => !p.ok).length, pieces }
    : read('golden', 'rc') == null ? { skipped: `no golden set at ${golden} (set MGLLAVA_GOLDEN_DIR)` } : null,
  tinyE2e: { webgpu: step(stepGpu), wasm: step(stepWasm) },
  llama: llama ? { hidden: llama.hidden, layers: llama.layers, positions: llama.positions, vocab: llama.vocab, params: llama.params, steps: llama.steps, medianStepMs: llama.medianStepMs, tokensPerS: llama.tokensPerS, loss: [llama.firstLoss, llama.lastLoss] } : null,
  seconds: { ...seconds, total: Math.round(Number(total) / 1000) },
  node: process.version,
  log,
  errors,
};
process.stdout.write(`${JSON.stringify(result)}\n`);
process.exitCode = result.ok ? 0 : 1;
NODE
