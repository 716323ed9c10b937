/**
 * Throwaway measurement: one training step of a LLaMA-style decoder built inline from plain tf ops
 * (4 layers, hidden 256, 4 heads, SwiGLU 688, RoPE, causal attention, vocab 2000, seq 128, batch 4,
 * Adam), on the backend of MGLLAVA_BACKEND (default wasm, with the kernel pack). Prints tokens/s
 * and where the time goes (tf.profile, kernel time summed by kernel name; with --by-shape,
 * BatchMatMul is split by input shapes).
 *
 *   npx tsx scripts/llama-step.ts [steps=5] [--by-shape]
 */
import * as tf from '@tensorflow/tfjs';
import { selectBackend } from '../src/backend/select.js';

const cfg = { vocab: 2000, hidden: 256, layers: 4, heads: 4, inter: 688, seq: 128, batch: 4 };
const headDim = cfg.hidden / cfg.heads;

function param(shape: number[], scale = 0.02): tf.Variable {
  return tf.variable(tf.randomNormal(shape, 0, scale));
}

const ones = (n: number) => tf.variable(tf.ones([n]));

function buildParams() {
  const layers = Array.from({ length: cfg.layers }, () => ({
    attnNorm: ones(cfg.hidden),
    wq: param([cfg.hidden, cfg.hidden]),
    wk: param([cfg.hidden, cfg.hidden]),
    wv: param([cfg.hidden, cfg.hidden]),
    wo: param([cfg.hidden, cfg.hidden]),
    mlpNorm: ones(cfg.hidden),
    wGate: param([cfg.hidden, cfg.inter]),
    wUp: param([cfg.hidden, cfg.inter]),
    wDown: param([cfg.inter, cfg.hidden]),
  }));
  return { emb: param([cfg.vocab, cfg.hidden]), layers, finalNorm: ones(cfg.hidden), lmHead: param([cfg.hidden, cfg.vocab]) };
}

type Params = ReturnType<typeof buildParams>;

const rmsNorm = (x: tf.Tensor, g: tf.Tensor) => tf.mul(tf.mul(x, tf.rsqrt(tf.add(tf.mean(tf.square(x), -1, true), 1e-6))), g);

/** RoPE tables [S, headDim/2]. */
function ropeTables(): [tf.Tensor, tf.Tensor] {
  const half = headDim / 2;
  const inv = Array.from({ length: half }, (_, i) => 1 / 10000 ** ((2 * i) / headDim));
  const ang = tf.outerProduct(tf.range(0, cfg.seq), tf.tensor1d(inv));
  return [tf.cos(ang), tf.sin(ang)];
}

function rope(x: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor): tf.Tensor {
  const [x1, x2] = tf.split(x, 2, -1); // [B,H,S,Dh/2] each
  return tf.concat([tf.sub(tf.mul(x1!, cos), tf.mul(x2!, sin)), tf.add(tf.mul(x2!, cos), tf.mul(x1!, sin))], -1);
}

function loss(p: Params, ids: tf.Tensor, targets: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor, mask: tf.Tensor): tf.Scalar {
  const { batch: B, seq: S, hidden: D, heads: H } = cfg;
  let x = tf.gather(p.emb, tf.reshape(ids, [B * S])); // [B*S, D]
  const heads = (t: tf.Tensor) => tf.transpose(tf.reshape(t, [B, S, H, headDim]), [0, 2, 1, 3]); // [B,H,S,Dh]
  for (const l of p.layers) {
    const h = rmsNorm(x, l.attnNorm);
    const q = rope(heads(tf.matMul(h, l.wq)), cos, sin);
    const k = rope(heads(tf.matMul(h, l.wk)), cos, sin);
    const v = heads(tf.matMul(h, l.wv));
    const scores = tf.add(tf.mul(tf.matMul(q, k, false, true), 1 / Math.sqrt(headDim)), mask); // [B,H,S,S]
    const o = tf.matMul(tf.softmax(scores), v); // [B,H,S,Dh]
    x = tf.add(x, tf.matMul(tf.reshape(tf.transpose(o, [0, 2, 1, 3]), [B * S, D]), l.wo));
    const h2 = rmsNorm(x, l.mlpNorm);
    const gate = tf.matMul(h2, l.wGate);
    x = tf.add(x, tf.matMul(tf.mul(tf.mul(gate, tf.sigmoid(gate)), tf.matMul(h2, l.wUp)), l.wDown));
  }
  const logits = tf.matMul(rmsNorm(x, p.finalNorm), p.lmHead); // [B*S, V]
  const logp = tf.logSoftmax(logits);
  return tf.neg(tf.mean(tf.sum(tf.mul(tf.oneHot(tf.reshape(targets, [B * S]), cfg.vocab), logp), -1))) as tf.Scalar;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const steps = Number(args.find((a) => /^\d+$/.test(a)) ?? 5);
  const byShape = args.includes('--by-shape');
  const choice = await selectBackend(process.env.MGLLAVA_BACKEND ?? 'wasm');
  const p = buildParams();
  const [cos, sin] = ropeTables();
  const mask = tf.mul(tf.sub(1, tf.linalg.bandPart(tf.ones([cfg.seq, cfg.seq]), -1, 0)), -1e9);
  const ids = tf.randomUniform([cfg.batch, cfg.seq], 0, cfg.vocab, 'int32');
  const targets = tf.randomUniform([cfg.batch, cfg.seq], 0, cfg.vocab, 'int32');
  const opt = tf.train.adam(1e-3);
  const step = () => {
    const l = opt.minimize(() => loss(p, ids, targets, cos, sin, mask), true);
    const v = l!.dataSync()[0]!;
    l!.dispose();
    return v;
  };
  step(); // warm-up (kernel setup, heap growth)
  const before = tf.memory().numTensors;
  const t0 = performance.now();
  let last = 0;
  for (let i = 0; i < steps; i++) last = step();
  const ms = (performance.now() - t0) / steps;
  const tokens = cfg.batch * cfg.seq;
  console.log(
    JSON.stringify({ backend: choice.name, stepMs: Math.round(ms), tokensPerSec: Math.round((tokens / ms) * 1000), loss: last, leakedTensors: tf.memory().numTensors - before }),
  );

  const prof = await tf.profile(() => {
    step();
  });
  const byKernel = new Map<string, { ms: number; calls: number }>();
  let total = 0;
  for (const k of prof.kernels) {
    const t = typeof k.kernelTimeMs === 'number' ? k.kernelTimeMs : 0;
    const key = byShape && k.name === 'BatchMatMul' ? `BatchMatMul ${JSON.stringify(k.inputShapes)}` : k.name;
    const e = byKernel.get(key) ?? { ms: 0, calls: 0 };
    e.ms += t;
    e.calls += 1;
    byKernel.set(key, e);
    total += t;
  }
  console.log(`profiled step: ${total.toFixed(0)} ms in ${prof.kernels.length} kernel calls (profiling adds overhead)`);
  for (const [name, e] of [...byKernel].sort((a, b) => b[1].ms - a[1].ms).slice(0, 20)) {
    console.log(`  ${name.padEnd(byShape ? 48 : 24)} ${e.ms.toFixed(1).padStart(8)} ms ${((100 * e.ms) / total).toFixed(1).padStart(5)} %  ${e.calls} calls`);
  }
}

await main();
