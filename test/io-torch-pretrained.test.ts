/**
 * Pretrained directories holding PyTorch pickles load exactly like their safetensors twins: HF `.bin` shards +
 * index (the hf_sharded_bin fixture, written by torch, and generated ones), HF CLIP `pytorch_model.bin`, open_clip
 * `open_clip_pytorch_model.bin`; the same LLM logits; safetensors win when a directory has both.
 */
import { copyFile, readFile, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { modelConfigFrom } from '../src/config/build-model.js';
import { modelSchema } from '../src/config/schema.js';
import { findWeightsFile, loadPretrained, readPretrainedConfigs } from '../src/io/pretrained.js';
import type { HostTensor } from '../src/io/safetensors.js';
import { MGLLaVA } from '../src/model/mgllava.js';
import { Rng } from '../src/util/rng.js';
import { tempRoot } from './temp-root.js';
import { e2eModelSection, renamePrefix, toBf16Bits, toHalfBits, writeE2eDirs, type Weights } from './io-fixtures.js';
import { zipCheckpoint, type DType, type GenTensor } from './torch-gen.js';
import { runCli } from './cli-harness.js';
import { FIXTURES, rawSafetensors } from './torch-helpers.js';

const { fresh } = tempRoot('torch-pretrained');

/** Host tensors as torch tensors over their own storages, stored as `dtype` (F32 raw, F16/BF16 rounded). */
function asTorch(w: Weights, dtype: 'F32' | 'F16' | 'BF16'): GenTensor[] {
  return [...w].map(([name, t], i) => {
    const bytes =
      dtype === 'F32'
        ? new Uint8Array(Float32Array.from(t.data).buffer)
        : new Uint8Array(Uint16Array.from(t.data, (x) => (dtype === 'F16' ? toHalfBits(x) : toBf16Bits(x))).buffer);
    const shape = [...t.shape];
    const stride = shape.map((_, k) => shape.slice(k + 1).reduce((a, b) => a * b, 1));
    return { name, storage: { key: String(i), dtype: dtype as DType, numel: t.data.length, bytes }, offset: 0, shape, stride, how: 'v2' as const };
  });
}

/** `weights` as HF `.bin` shards + `pytorch_model.bin.index.json` (or one `file` when shards = 1). */
async function writeBin(dir: string, w: Weights, dtype: 'F32' | 'F16' | 'BF16', shards: number, file = 'pytorch_model.bin'): Promise<void> {
  const all = asTorch(w, dtype);
  if (shards === 1) {
    await writeFile(path.join(dir, file), zipCheckpoint(all, { prefix: file.replace(/\.bin$/, '') }));
    return;
  }
  const names = Array.from({ length: shards }, (_, i) => `pytorch_model-${String(i + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.bin`);
  const weightMap: Record<string, string> = {};
  for (let s = 0; s < shards; s++) {
    const part = all.filter((_, i) => i % shards === s);
    for (const t of part) weightMap[t.name] = names[s]!;
    await writeFile(path.join(dir, names[s]!), zipCheckpoint(part, { prefix: names[s]!.replace(/\.bin$/, ''), style: s % 2 ? 4 : 2 }));
  }
  await writeFile(path.join(dir, 'pytorch_model.bin.index.json'), JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }));
}

type Section = ReturnType<typeof modelSchema.parse>;

async function loaded(section: Section): Promise<MGLLaVA> {
  const model = new MGLLaVA(modelConfigFrom(section, readPretrainedConfigs(section)), { rng: new Rng(3), skipInit: true });
  await loadPretrained(model, section);
  return model;
}

async function expectSameWeights(a: MGLLaVA, b: MGLLaVA, prefixes: string[]): Promise<number> {
  let count = 0;
  const wb = b.weightMap();
  for (const [name, v] of a.weightMap()) {
    if (!prefixes.some((p) => name.startsWith(p))) continue;
    expect(Array.from(await v.data()), name).toEqual(Array.from(await wb.get(name)!.data()));
    count++;
  }
  return count;
}

async function logits(model: MGLLaVA, ids: number[][]): Promise<Float32Array> {
  const out = tf.tidy(() => model.llm.forward({ inputIds: ids }).logits);
  const data = (await out.data()) as Float32Array;
  out.dispose();
  return data;
}

describe('pretrained directories with PyTorch pickles', () => {
  it('hf_sharded_bin (torch.save shards): same weights and logits as its safetensors twin', async () => {
    const src = path.join(FIXTURES, 'hf_sharded_bin');
    const bin = await fresh('bin');
    for (const f of ['pytorch_model-00001-of-00002.bin', 'pytorch_model-00002-of-00002.bin', 'pytorch_model.bin.index.json', 'config.json']) await copyFile(path.join(src, f), path.join(bin, f));
    const twin = await fresh('twin');
    await copyFile(path.join(src, 'config.json'), path.join(twin, 'config.json'));
    await copyFile(path.join(src, 'expected.safetensors'), path.join(twin, 'model.safetensors'));
    expect(findWeightsFile(bin, 'llm')).toBe(path.join(bin, 'pytorch_model.bin.index.json'));

    const before = tf.memory().numTensors;
    const a = await loaded(modelSchema.parse(e2eModelSection({ clip: null, aux: null, llm: bin })));
    const b = await loaded(modelSchema.parse(e2eModelSection({ clip: null, aux: null, llm: twin })));
    const vocab = (JSON.parse(await readFile(path.join(src, 'config.json'), 'utf8')) as { vocab_size: number }).vocab_size;
    expect(await expectSameWeights(a, b, ['llm.'])).toBe(rawSafetensors(path.join(src, 'expected.safetensors')).size);
    const ids = [Array.from({ length: 7 }, (_, i) => (i * 5 + 1) % vocab), Array.from({ length: 7 }, (_, i) => (i * 3 + 2) % vocab)];
    const la = await logits(a, ids);
    expect(la.length).toBe(2 * 7 * vocab);
    expect(Array.from(la)).toEqual(Array.from(await logits(b, ids)));
    expect(la.some((x) => x !== 0)).toBe(true);
    a.dispose();
    b.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  for (const [dtype, shards] of [['F16', 3], ['BF16', 2], ['F32', 1]] as const) {
    it(`generated: CLIP pytorch_model.bin, open_clip_pytorch_model.bin, LLM ${dtype} in ${shards} .bin shard(s) = the safetensors dirs`, async () => {
      const st = await writeE2eDirs(await fresh('st'), { llmDtype: dtype });
      const bin = { clip: await fresh('clip-bin'), aux: await fresh('aux-bin'), llm: await fresh('llm-bin') };
      await writeBin(bin.clip, renamePrefix(st.params, 'visual_encoder.', ''), 'F32', 1);
      await writeBin(bin.aux, renamePrefix(st.params, 'visual_encoder_aux.', 'visual.trunk.'), 'F32', 1, 'open_clip_pytorch_model.bin');
      await writeBin(bin.llm, renamePrefix(st.params, 'llm.', ''), dtype, shards);
      await copyFile(path.join(st.clip, 'config.json'), path.join(bin.clip, 'config.json'));
      await copyFile(path.join(st.aux, 'open_clip_config.json'), path.join(bin.aux, 'open_clip_config.json'));
      await copyFile(path.join(st.llm, 'config.json'), path.join(bin.llm, 'config.json'));
      expect(findWeightsFile(bin.aux, 'convnext')).toBe(path.join(bin.aux, 'open_clip_pytorch_model.bin'));

      const a = await loaded(modelSchema.parse(e2eModelSection(bin)));
      const b = await loaded(modelSchema.parse(e2eModelSection(st)));
      expect(await expectSameWeights(a, b, ['visual_encoder.', 'visual_encoder_aux.', 'llm.'])).toBeGreaterThan(100);
      const ids = [[1, 5, 9, 2, 33, 7]];
      expect(Array.from(await logits(a, ids))).toEqual(Array.from(await logits(b, ids)));
      a.dispose();
      b.dispose();
    });
  }

  it('safetensors are preferred when a directory has both', async () => {
    const st = await writeE2eDirs(await fresh('both'));
    const shifted: Weights = new Map([...renamePrefix(st.params, 'llm.', '')].map(([k, t]): [string, HostTensor] => [k, { ...t, data: Float32Array.from(t.data, (x) => x + 1) }]));
    await writeBin(st.llm, shifted, 'F32', 1);
    expect(findWeightsFile(st.llm, 'llm')).toBe(path.join(st.llm, 'model.safetensors'));
    const model = await loaded(modelSchema.parse(e2eModelSection(st)));
    const w = model.weightMap().get('llm.model.norm.weight')!;
    expect(Array.from(await w.data())).toEqual(Array.from(st.params.get('llm.model.norm.weight')!.data));
    model.dispose();
    // Without the safetensors file, the .bin is used.
    await unlink(path.join(st.llm, 'model.safetensors'));
    expect(findWeightsFile(st.llm, 'llm')).toBe(path.join(st.llm, 'pytorch_model.bin'));
  });

  it('mgllava import --kind llm reads a .bin directory (--list and --out)', async () => {
    const st = await writeE2eDirs(await fresh('imp'), { llmDtype: 'F16' });
    const bin = await fresh('imp-bin');
    await writeBin(bin, renamePrefix(st.params, 'llm.', ''), 'F16', 2);
    await copyFile(path.join(st.llm, 'config.json'), path.join(bin, 'config.json'));
    const list = await runCli(['import', '--kind', 'llm', '--from', bin, '--list']);
    expect(list.code, list.err).toBe(0);
    expect(list.out).toContain('model.norm.weight');
    expect(list.out).toContain('F16');
    const out = path.join(bin, 'llm.safetensors');
    const r = await runCli(['import', '--kind', 'llm', '--from', bin, '--out', out]);
    expect(r.code, r.err).toBe(0);
    const fromBin = rawSafetensors(out);
    const outSt = path.join(st.llm, 'llm.safetensors');
    expect((await runCli(['import', '--kind', 'llm', '--from', st.llm, '--out', outSt])).code).toBe(0);
    const fromSt = rawSafetensors(outSt);
    expect([...fromBin.keys()].sort()).toEqual([...fromSt.keys()].sort());
    for (const [k, t] of fromSt) expect(Buffer.compare(fromBin.get(k)!.bytes, t.bytes), k).toBe(0);
  });
});
