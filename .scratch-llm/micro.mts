import * as tf from '@tensorflow/tfjs';
import { selectBackend } from '../src/backend/select.js';
await selectBackend('wasm');
const x = tf.randomNormal([512, 2000]);
const idx = tf.tensor1d(Array.from({ length: 508 }, (_, i) => i), 'int32');
function time(name: string, f: () => tf.Tensor) { for (let i = 0; i < 2; i++) f().dispose(); const t0 = performance.now(); for (let i = 0; i < 5; i++) { const y = f(); y.dataSync(); y.dispose(); } console.log(name, ((performance.now() - t0) / 5).toFixed(2), 'ms'); }
time('gather rows', () => tf.gather(x, idx));
time('exp', () => tf.exp(x));
time('sigmoid', () => tf.sigmoid(x));
time('mul', () => tf.mul(x, x));
time('sum', () => tf.sum(x, -1));
time('max', () => tf.max(x, -1));
time('logSoftmax', () => tf.logSoftmax(x));
time('softmax', () => tf.softmax(x));
time('oneHot', () => tf.oneHot(idx, 2000));
const e = tf.randomNormal([2000, 256]); const ids = tf.tensor1d(Array.from({ length: 512 }, (_, i) => (i * 7) % 2000), 'int32');
time('embed gather', () => tf.gather(e, ids));
time('oneHot -1', () => tf.oneHot(tf.tensor1d([-1, 3], 'int32'), 5));
tf.oneHot(tf.tensor1d([-1, 3, 7], 'int32'), 5).print();
