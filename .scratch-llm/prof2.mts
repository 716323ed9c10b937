import * as tf from '@tensorflow/tfjs';
import { selectBackend } from '../src/backend/select.js';
import { LlamaForCausalLM } from '../src/model/llm/llama.js';
import { causalLmLoss } from '../src/model/loss.js';
import { Rng } from '../src/util/rng.js';
await selectBackend('wasm');
const cfg = { vocabSize: 2000, hiddenSize: 256, intermediateSize: 688, numLayers: 4, numHeads: 4, numKvHeads: 4, rmsNormEps: 1e-5, ropeTheta: 10000, tieWordEmbeddings: false };
const m = new LlamaForCausalLM(cfg, { rng: new Rng(1) });
const B = 4, T = 128;
const rng = new Rng(2);
const ids = Array.from({ length: B }, () => Array.from({ length: T }, () => Math.floor(rng.next() * 2000)));
const vars = [...m.namedWeights()].map(([, v]) => v);
const step = () => { const { value, grads } = tf.variableGrads(() => causalLmLoss(m.forward({ inputIds: ids }).logits, ids).loss, vars); tf.dispose([value, ...Object.values(grads)]); };
step();
const prof = await tf.profile(step);
const agg = new Map<string, [number, number]>();
for (const k of prof.kernels) {
  if (k.name === 'BatchMatMul') continue;
  const key = `${k.name} ${k.inputShapes.map((s) => JSON.stringify(s)).join(' ')}`;
  const cur = agg.get(key) ?? [0, 0];
  agg.set(key, [cur[0] + (k.kernelTimeMs as number), cur[1] + 1]);
}
let tot = 0; for (const [, [t]] of agg) tot += t;
console.log('non-matmul total', tot.toFixed(1));
for (const [k, [t, n]] of [...agg].sort((a, b) => b[1][0] - a[1][0]).slice(0, 40)) console.log(k, 'n', n, 'ms', t.toFixed(2));
console.log('kernels', prof.kernels.length, 'sum kernel ms', prof.kernels.reduce((a, k) => a + (k.kernelTimeMs as number), 0).toFixed(1));
const t0 = performance.now(); for (let i = 0; i < 3; i++) step(); console.log('wall per step', ((performance.now() - t0) / 3).toFixed(1));
