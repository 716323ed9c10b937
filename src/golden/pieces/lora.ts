/**
 * Golden runner for the LoRA pieces (`lora_llama_all`: every decoder linear, untied, ids path;
 * `lora_llama_qv_rs`: rsLoRA on q/v, tied, inputs_embeds path). The config is HF's plus `lora: {r, alpha,
 * rslora, dropout, targets, scaling}`. Compares the logits and loss with the adapters on, the gradients of
 * the loss with respect to every LoRA weight (the base weights are frozen: the piece has no gradient for
 * them, and none is computed) and to `inputs_embeds`, the merged weights W + scaling * B A, and the logits
 * with every adapter switched off.
 */
import * as tf from '@tensorflow/tfjs';
import type { GoldenPiece } from '../manifest.js';
import { ioTensor } from '../manifest.js';
import { Checks, type CheckResult } from '../compare.js';
import { loadWeights } from '../../nn/module.js';
import { Rng } from '../../util/rng.js';
import { toTf } from '../../io/host-tensor.js';
import { fromHfConfig } from '../../model/llm/config.js';
import { LlamaForCausalLM } from '../../model/llm/llama.js';
import { loraScaling, type LoraConfig, type LoraTarget } from '../../model/llm/lora.js';
import { causalLmLoss } from '../../model/loss.js';

/** The piece's `lora` entry as our LoRA config (its `scaling` must be the one r/alpha/rslora give). */
function loraOf(piece: GoldenPiece): LoraConfig {
  const l = piece.config.lora as { r: number; alpha: number; rslora?: boolean; dropout?: number; targets: string[]; scaling?: number } | undefined;
  if (!l) throw new Error(`golden piece '${piece.name}': config has no 'lora' entry`);
  const config: LoraConfig = { r: l.r, alpha: l.alpha, rslora: l.rslora ?? false, dropout: l.dropout ?? 0, targets: l.targets as LoraTarget[] };
  if (l.scaling !== undefined && Math.abs(loraScaling(config) - l.scaling) > 1e-9 * Math.abs(l.scaling)) {
    throw new Error(`golden piece '${piece.name}': scaling ${l.scaling} is not what r ${l.r}, alpha ${l.alpha}, rslora ${config.rslora} give (${loraScaling(config)})`);
  }
  return config;
}

export async function runLora(piece: GoldenPiece): Promise<CheckResult[]> {
  const { lora: _lora, ...hf } = piece.config;
  const model = new LlamaForCausalLM(fromHfConfig({ model_type: 'llama', ...hf }), { rng: new Rng(0), skipInit: true });
  const checks = new Checks();
  const has = (k: string) => piece.io.has(k);
  const embedsInput = has('input.inputs_embeds') ? tf.tidy(() => tf.variable(toTf(ioTensor(piece, 'input.inputs_embeds')), true)) : null;
  try {
    model.attachLora(loraOf(piece), { rng: new Rng(0), skipInit: true });
    loadWeights(model, piece.params, { origin: `golden piece '${piece.name}' params` });
    // Base weights frozen, adapters trainable: what a LoRA finetune does.
    for (const [name, v] of model.namedWeights()) v.trainable = LlamaForCausalLM.isLoraWeight(name);
    const inputs = {
      ...(embedsInput ? { inputsEmbeds: embedsInput as tf.Tensor3D } : { inputIds: ioTensor(piece, 'input.input_ids') }),
      attentionMask: ioTensor(piece, 'input.attention_mask'),
      positionIds: ioTensor(piece, 'input.position_ids'),
    };
    const labels = ioTensor(piece, 'input.labels');

    const out = model.forward(inputs);
    const { loss } = causalLmLoss(out.logits, labels);
    checks.tensor('output.logits', out.logits, ioTensor(piece, 'output.logits'), piece.forward);
    checks.tensor('output.loss', loss, ioTensor(piece, 'output.loss'), piece.forward);
    tf.dispose([out.logits, loss]);

    const base = model.forward({ ...inputs, adapters: false });
    checks.tensor('output.base_logits', base.logits, ioTensor(piece, 'output.base_logits'), piece.forward);
    base.logits.dispose();

    const merged = model.mergedWeights();
    const expected = [...piece.io.keys()].filter((k) => k.startsWith('output.merged.'));
    for (const key of expected) {
      const name = key.slice('output.merged.'.length);
      const w = merged.get(name);
      if (w) checks.tensor(key, w, ioTensor(piece, key), piece.forward);
      else checks.push({ name: key, ok: false, maxAbsErr: Infinity, maxRelErr: Infinity, note: 'not an adapted weight here' });
    }
    const extra = [...merged.keys()].filter((n) => !piece.io.has(`output.merged.${n}`));
    if (extra.length) checks.push({ name: 'merged weights', ok: false, maxAbsErr: Infinity, maxRelErr: Infinity, note: `adapted here but not in the piece: ${extra.join(', ')}` });
    tf.dispose([...merged.values()]);

    // Gradients of the CE loss with respect to the trainable set (the adapters) and the input embeddings.
    const adapters = [...model.namedWeights()].filter(([, v]) => v.trainable);
    const vars = [...adapters.map(([, v]) => v), ...(embedsInput ? [embedsInput] : [])];
    const { value, grads } = tf.variableGrads(() => causalLmLoss(model.forward(inputs).logits, labels).loss, vars);
    for (const [name, v] of adapters) checks.tensor(`grad.${name}`, grads[v.name]!, ioTensor(piece, `grad.${name}`), piece.grads);
    const unchecked = [...piece.io.keys()].filter((k) => k.startsWith('grad.') && !adapters.some(([n]) => `grad.${n}` === k));
    if (unchecked.length) checks.push({ name: 'gradients', ok: false, maxAbsErr: Infinity, maxRelErr: Infinity, note: `piece has gradients for non-adapter weights: ${unchecked.join(', ')}` });
    if (embedsInput && has('grad_input.inputs_embeds')) {
      checks.tensor('grad_input.inputs_embeds', grads[embedsInput.name]!, ioTensor(piece, 'grad_input.inputs_embeds'), piece.grads);
    }
    tf.dispose([value, ...Object.values(grads)]);
    return await checks.results();
  } catch (e) {
    checks.dispose();
    throw e;
  } finally {
    model.dispose();
    embedsInput?.dispose();
  }
}
