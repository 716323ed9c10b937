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
const agg = new Map<string, [number, number, number]>();
for (const k of prof.kernels) {
  if (k.name !== 'BatchMatMul') continue;
  const key = `${k.inputShapes.map((s) => JSON.stringify(s)).join('x')} ${JSON.stringify((k as any).extraInfo ?? '')}`;
  const [a, b2] = k.inputShapes as number[][];
  const out = k.outputShapes[0] as number[];
  const kdim = a!.length === 3 ? (a![2] === (out[1]) ? a![1] : a![2]) : 0;
  const flops = 2 * out.reduce((x, y) => x * y, 1) * (a!.length === 3 ? Math.max(...[a![1], a![2]].filter((d) => d !== out[1]), 0) || a![2]! : 0);
  const cur = agg.get(key) ?? [0, 0, 0];
  agg.set(key, [cur[0] + (k.kernelTimeMs as number), cur[1] + 1, flops]);
}
for (const [k, [t, n, f]] of [...agg].sort((a, b) => b[1][0] - a[1][0])) console.log(k, 'n', n, 'ms', t.toFixed(1), 'GF/s~', (f * n / t / 1e6).toFixed(1));
