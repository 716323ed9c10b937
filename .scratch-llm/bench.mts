import * as tf from '@tensorflow/tfjs';
import { selectBackend } from '../src/backend/select.js';
import { LlamaForCausalLM } from '../src/model/llm/llama.js';
import { causalLmLoss, causalLmLossOnRows, shiftedTargets } from '../src/model/loss.js';
import { Rng } from '../src/util/rng.js';
await selectBackend(process.env.B ?? 'wasm');
const cfg = { vocabSize: 2000, hiddenSize: 256, intermediateSize: 688, numLayers: 4, numHeads: 4, numKvHeads: Number(process.env.KV ?? 4), rmsNormEps: 1e-5, ropeTheta: 10000, tieWordEmbeddings: false };
const m = new LlamaForCausalLM(cfg, { rng: new Rng(1) });
const B = 4, T = 128;
const rng = new Rng(2);
const ids = Array.from({ length: B }, () => Array.from({ length: T }, () => Math.floor(rng.next() * 2000)));
const labels = ids.map((r) => r.map((x, i) => (i < 8 ? -100 : x)));
const vars = [...m.namedWeights()].map(([, v]) => v);
const rows = process.env.ROWS === '1';
const plan = shiftedTargets(labels);
function step() {
  const { value, grads } = tf.variableGrads(() => {
    if (rows) return causalLmLossOnRows(m.forward({ inputIds: ids, logitRows: plan.rows }).logits, plan).loss;
    return causalLmLoss(m.forward({ inputIds: ids }).logits, labels).loss;
  }, vars);
  const l = value.dataSync()[0];
  tf.dispose([value, ...Object.values(grads)]);
  return l;
}
for (let i = 0; i < 2; i++) step();
const times: number[] = [];
for (let i = 0; i < Number(process.env.N ?? 5); i++) { const t0 = performance.now(); step(); times.push(performance.now() - t0); }
times.sort((a, b) => a - b);
const med = times[Math.floor(times.length / 2)]!;
console.log(tf.getBackend(), 'median ms', med.toFixed(1), 'tok/s', ((B * T) / med * 1000).toFixed(0), times.map((x) => x.toFixed(0)).join(' '));
if (process.env.PROF) {
  const prof = await tf.profile(() => { step(); });
  const agg = new Map<string, number>();
  for (const k of prof.kernels) agg.set(k.name, (agg.get(k.name) ?? 0) + (k.kernelTimeMs as number));
  console.log([...agg].sort((a, b) => b[1] - a[1]).slice(0, 25).map(([n, t]) => `${n}: ${t.toFixed(1)}`).join('\n'));
}
