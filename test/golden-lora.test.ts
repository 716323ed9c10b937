// LoRA golden parity (../shared/golden/lora-public): logits, loss, LoRA gradients, input-embedding gradients,
// merged weights and base logits on the test backend, through the same code path as `mgllava golden`.
import { copyFile, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { runGolden } from '../src/golden/run.js';
import { RUNNERS } from '../src/golden/pieces/index.js';
import { readSafetensors, writeSafetensors } from '../src/io/safetensors.js';

const GOLDEN = path.resolve(import.meta.dirname, '../../shared/golden/lora-public');
const PIECES = ['lora_llama_all', 'lora_llama_qv_rs'];

/** A copy of one piece whose io file is changed by `edit` (and whose manifest entry by `editEntry`). */
async function perturbed(piece: string, edit: (io: Map<string, { data: Float32Array | Int32Array }>) => void, editEntry?: (e: Record<string, unknown>) => void): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'mgllava-golden-lora-'));
  const manifest = JSON.parse(await readFile(path.join(GOLDEN, 'manifest.json'), 'utf8'));
  const entry = manifest.pieces[piece];
  await copyFile(path.join(GOLDEN, entry.params_file), path.join(dir, entry.params_file));
  const io = await readSafetensors(path.join(GOLDEN, entry.io_file));
  edit(io);
  await writeSafetensors(path.join(dir, entry.io_file), io);
  editEntry?.(entry);
  manifest.pieces = { [piece]: entry };
  await writeFile(path.join(dir, 'manifest.json'), JSON.stringify(manifest));
  return dir;
}

describe('golden set (lora-public)', () => {
  it('both pieces pass: forward, LoRA and input gradients, merged weights, base logits', async () => {
    const report = await runGolden(GOLDEN, RUNNERS);
    for (const name of PIECES) {
      const p = report.pieces[name];
      expect(p, `piece ${name} missing from the manifest`).toBeDefined();
      expect({ name, ok: p!.ok, reason: p!.reason }).toEqual({ name, ok: true, reason: undefined });
      const checked = p!.checks.map((c) => c.name);
      expect(checked).toEqual(expect.arrayContaining(['output.logits', 'output.loss', 'output.base_logits']));
      expect(checked.filter((c) => c.startsWith('grad.') && c.includes('.lora_')).length).toBeGreaterThan(0);
      expect(checked.filter((c) => c.startsWith('output.merged.')).length).toBeGreaterThan(0);
    }
    expect(report.pieces.lora_llama_qv_rs!.checks.map((c) => c.name)).toContain('grad_input.inputs_embeds');
    // every lora gradient and merged weight of the pieces is compared
    expect(report.pieces.lora_llama_all!.checks.filter((c) => c.name.startsWith('grad.')).length).toBe(28);
    expect(report.pieces.lora_llama_all!.checks.filter((c) => c.name.startsWith('output.merged.')).length).toBe(14);
    expect(report.ok).toBe(true);
  });

  it('fails when a merged weight, a LoRA gradient or the base logits are off', async () => {
    const bump = (key: string) => (io: Map<string, { data: Float32Array | Int32Array }>) => {
      (io.get(key)!.data as Float32Array)[5]! += 1e-2;
    };
    for (const key of ['output.merged.model.layers.1.mlp.down_proj.weight', 'grad.model.layers.0.self_attn.o_proj.lora_B.weight', 'output.base_logits']) {
      const dir = await perturbed('lora_llama_all', bump(key));
      const report = await runGolden(dir, RUNNERS);
      expect(report.pieces.lora_llama_all!.ok, key).toBe(false);
      expect(report.pieces.lora_llama_all!.reason).toContain(key);
    }
  });

  it('refuses a piece whose scaling does not follow from r, alpha and rslora', async () => {
    const dir = await perturbed('lora_llama_qv_rs', () => {}, (e) => {
      (e.config as { lora: { scaling: number } }).lora.scaling = 2; // alpha / r, but the piece is rsLoRA
    });
    const report = await runGolden(dir, RUNNERS);
    expect(report.pieces.lora_llama_qv_rs!.ok).toBe(false);
    expect(report.pieces.lora_llama_qv_rs!.reason).toMatch(/scaling 2 is not what r 8, alpha 16, rslora true give/);
  });
});
