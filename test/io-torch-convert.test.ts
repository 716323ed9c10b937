/**
 * `mgllava convert`: our own `.pth` export round-trips to the same tensors; large outputs are sharded with an index;
 * the state dict is found (or named with --key); DeepSpeed directories; tensors stream one at a time; bad command
 * lines and bad inputs are one line.
 */
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import type { HostTensor } from '../src/io/safetensors.js';
import { convertTorchCheckpoint } from '../src/io/torch-convert.js';
import { writeTorchPth } from '../src/io/torch-pth.js';
import { TorchTensor } from '../src/io/torch-tensor.js';
import { Rng } from '../src/util/rng.js';
import { tempRoot } from './temp-root.js';
import { P, randomStateDict, expectedBytes, zipArchive, zipCheckpoint } from './torch-gen.js';
import { expectOneLineError, runCli } from './cli-harness.js';
import { rawSafetensors } from './torch-helpers.js';

const { fresh } = tempRoot('torch-convert');

function randomWeights(seed: number): Map<string, HostTensor> {
  const rng = new Rng(seed);
  const w = new Map<string, HostTensor>();
  for (let i = 0; i < 6; i++) {
    const shape = [1 + rng.int(9), 1 + rng.int(5)];
    const numel = shape[0]! * shape[1]!;
    if (i === 4) w.set(`counts.${i}`, { dtype: 'int32', shape, data: Int32Array.from({ length: numel }, () => rng.int(2000) - 1000) });
    else w.set(`projector.model.${i}.weight`, { dtype: 'float32', shape, data: Float32Array.from({ length: numel }, () => rng.normal()) });
  }
  w.set('scalar', { dtype: 'float32', shape: [], data: Float32Array.from([rng.normal()]) });
  return w;
}

describe('mgllava convert', () => {
  for (const zip64 of [false, true]) {
    it(`round trip of our own .pth export${zip64 ? ' (ZIP64)' : ''}: the same tensors, dtypes and bytes`, async () => {
      const dir = await fresh('rt');
      const w = randomWeights(zip64 ? 2 : 1);
      const pth = path.join(dir, 'model.pth');
      await writeTorchPth(pth, w, { meta: { iter: 7, seed: 1 }, forceZip64: zip64 });
      const out = path.join(dir, 'model.safetensors');
      const r = await runCli(['convert', pth, '--out', out, '--json']);
      expect(r.code, r.err).toBe(0);
      const line = JSON.parse(r.out) as Record<string, unknown>;
      expect(line).toEqual({ tensors: w.size, bytes: [...w.values()].reduce((s, t) => s + t.data.byteLength, 0), key: 'state_dict', skipped: 0 });
      const got = rawSafetensors(out);
      expect([...got.keys()].sort()).toEqual([...w.keys()].sort());
      for (const [k, t] of w) {
        const g = got.get(k)!;
        expect([g.dtype, g.shape]).toEqual([t.dtype === 'float32' ? 'F32' : 'I32', t.shape]);
        expect(Buffer.compare(g.bytes, Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength)), k).toBe(0);
      }
    });
  }

  it('a large output is sharded with an index (the existing sharded writer), a small one is one file', async () => {
    const dir = await fresh('shard');
    const tensors = randomStateDict(77);
    const input = path.join(dir, 'in.pth');
    await writeFile(input, zipCheckpoint(tensors));
    const total = tensors.reduce((s, t) => s + expectedBytes(t).length, 0);
    const out = path.join(dir, 'out.safetensors');
    const r = await convertTorchCheckpoint(input, out, { maxShardBytes: Math.max(1, Math.floor(total / 3)) });
    expect(r.index).toBe(path.join(dir, 'out.safetensors.index.json'));
    expect(r.files.length).toBeGreaterThanOrEqual(2);
    expect(r.files.every((f) => /out-\d{5}-of-\d{5}\.safetensors$/.test(f))).toBe(true);
    expect(existsSync(out)).toBe(false);
    const got = rawSafetensors(r.index!);
    for (const t of tensors) expect(Buffer.compare(got.get(t.name)!.bytes, Buffer.from(expectedBytes(t))), t.name).toBe(0);
    expect(r.bytes).toBe(total);
    // Converting again into one file removes the shards and the index (one consistent checkpoint per name).
    const again = await convertTorchCheckpoint(input, out, { maxShardBytes: 2e9, overwrite: true });
    expect(again.index).toBeNull();
    expect(existsSync(r.index!)).toBe(false);
    expect(rawSafetensors(out).size).toBe(tensors.length);
  });

  it('streams: one tensor read at a time, each only when it is written', async () => {
    const dir = await fresh('stream');
    const input = path.join(dir, 'in.pth');
    const tensors = randomStateDict(78);
    await writeFile(input, zipCheckpoint(tensors));
    let live = 0;
    let peak = 0;
    const read = TorchTensor.prototype.read;
    const spy = vi.spyOn(TorchTensor.prototype, 'read').mockImplementation(async function (this: TorchTensor, into?: Uint8Array) {
      live++;
      peak = Math.max(peak, live);
      try {
        return await read.call(this, into);
      } finally {
        live--;
      }
    });
    let calls: number;
    try {
      await convertTorchCheckpoint(input, path.join(dir, 'o.safetensors'), { maxShardBytes: 2e9 });
      calls = spy.mock.calls.length;
    } finally {
      spy.mockRestore();
    }
    expect(calls).toBe(tensors.length);
    expect(peak).toBe(1);
  });

  it('--key picks the state dict; a wrong key lists the keys there are', async () => {
    const dir = await fresh('key');
    const tensors = randomStateDict(79);
    const input = path.join(dir, 'ck.pt');
    await writeFile(input, zipCheckpoint(tensors, { wrap: 'model' }));
    const ok = await runCli(['convert', input, '--out', path.join(dir, 'a.safetensors'), '--key', 'model', '--json']);
    expect(JSON.parse(ok.out)).toMatchObject({ tensors: tensors.length, key: 'model' });
    const line = expectOneLineError(await runCli(['convert', input, '--out', path.join(dir, 'b.safetensors'), '--key', 'weights']));
    expect(line).toContain("no key 'weights'");
    expect(line).toContain("'epoch'");
  });

  it('DeepSpeed directories: the step dir, the parent with `latest`, and a ZeRO-3 dir without weights', async () => {
    const parent = await fresh('ds');
    let outputs = 0;
    const step = path.join(parent, 'global_step100');
    await mkdir(step);
    const tensors = randomStateDict(80);
    await writeFile(path.join(step, 'mp_rank_00_model_states.pt'), zipCheckpoint(tensors, { wrap: 'module', prefix: 'mp_rank_00_model_states' }));
    for (const input of [step, parent]) {
      const r = await convertTorchCheckpoint(input, path.join(parent, `o${outputs++}.safetensors`), { maxShardBytes: 2e9 });
      expect([r.key, r.tensors]).toEqual(['module', tensors.length]);
    }
    await writeFile(path.join(parent, 'latest'), 'global_step100\n');
    expect((await convertTorchCheckpoint(parent, path.join(parent, `o${outputs++}.safetensors`), { maxShardBytes: 2e9 })).tensors).toBe(tensors.length);
    // ZeRO-3: module holds no weights, the partitions are in zero_pp_rank_* files.
    const z3 = await fresh('zero3');
    const empty = new P().proto().raw(0x7d).mark().str('module').none().str('ds_version').str('0.12.6').raw(0x75).stop();
    await writeFile(path.join(z3, 'mp_rank_00_model_states.pt'), zipArchive([{ name: 'a/data.pkl', data: empty }]));
    await writeFile(path.join(z3, 'zero_pp_rank_0_mp_rank_00_optim_states.pt'), 'x');
    const line = expectOneLineError(await runCli(['convert', z3, '--out', path.join(z3, 'o.safetensors')]));
    expect(line).toContain('zero_to_fp32.py');
  });

  it('bad command lines and outputs are one line', async () => {
    const dir = await fresh('bad');
    const input = path.join(dir, 'in.pth');
    await writeFile(input, zipCheckpoint(randomStateDict(81)));
    expect(expectOneLineError(await runCli(['convert', input, '--out', path.join(dir, 'x.bin')]))).toContain('.safetensors');
    const out = path.join(dir, 'o.safetensors');
    expect((await runCli(['convert', input, '--out', out])).code).toBe(0);
    expect(expectOneLineError(await runCli(['convert', input, '--out', out]))).toContain('--overwrite');
    expect((await runCli(['convert', input, '--out', out, '--overwrite'])).code).toBe(0);
    expect(expectOneLineError(await runCli(['convert', path.join(dir, 'nope.pth'), '--out', path.join(dir, 'n.safetensors')]))).toContain('nope.pth');
    await writeFile(path.join(dir, 'other.pt'), zipCheckpoint(randomStateDict(82)));
    expect(expectOneLineError(await runCli(['convert', dir, '--out', path.join(dir, 'd.safetensors')]))).toContain('several checkpoint files');
    expect(expectOneLineError(await runCli(['convert', out, '--out', path.join(dir, 's.safetensors')]))).toContain('safetensors file');
    expect(expectOneLineError(await runCli(['convert', input, '--out', path.join(dir, 'z.safetensors'), '--max-shard-mb', '0']))).toContain('--max-shard-mb');
  });
});
