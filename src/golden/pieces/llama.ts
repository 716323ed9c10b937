/**
 * Golden runner for the LLaMA decoder pieces (`llama_a`: ids path, untied, GQA, padding; `llama_b`: tied,
 * inputs_embeds path). Config keys are HF's (read by `fromHfConfig`); compares logits at every position,
 * the loss, hidden states and RoPE tables when the piece has them, and the gradients of the CE loss with
 * respect to every parameter (`grad.*`) and to `inputs_embeds` (`grad_input.inputs_embeds`).
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
import { causalLmLoss } from '../../model/loss.js';

export async function runLlama(piece: GoldenPiece): Promise<CheckResult[]> {
  const config = fromHfConfig({ model_type: 'llama', ...piece.config });
  const model = new LlamaForCausalLM(config, { rng: new Rng(0), skipInit: true });
  const checks = new Checks();
  const has = (k: string) => piece.io.has(k);
  // inputs_embeds as a variable, so that tf.variableGrads also returns its gradient
  const embedsInput = has('input.inputs_embeds') ? tf.tidy(() => tf.variable(toTf(ioTensor(piece, 'input.inputs_embeds')), true)) : null;
  try {
    loadWeights(model, piece.params, { origin: `golden piece '${piece.name}' params` });
    const inputs = {
      ...(embedsInput ? { inputsEmbeds: embedsInput as tf.Tensor3D } : { inputIds: ioTensor(piece, 'input.input_ids') }),
      attentionMask: ioTensor(piece, 'input.attention_mask'),
      positionIds: ioTensor(piece, 'input.position_ids'),
    };
    const labels = ioTensor(piece, 'input.labels');

    // forward: logits, loss, hidden states, rope tables
    const out = model.forward({ ...inputs, outputHiddenStates: true });
    const { loss } = causalLmLoss(out.logits, labels);
    checks.tensor('output.logits', out.logits, ioTensor(piece, 'output.logits'), piece.forward);
    checks.tensor('output.loss', loss, ioTensor(piece, 'output.loss'), piece.forward);
    out.hiddenStates!.forEach((h, i) => {
      if (has(`intermediate.hidden.${i}`)) checks.tensor(`intermediate.hidden.${i}`, h, ioTensor(piece, `intermediate.hidden.${i}`), piece.forward);
    });
    if (has('intermediate.rope_cos')) {
      const { cos, sin } = model.ropeCosSin(inputs.positionIds);
      checks.tensor('intermediate.rope_cos', cos, ioTensor(piece, 'intermediate.rope_cos'), piece.forward);
      checks.tensor('intermediate.rope_sin', sin, ioTensor(piece, 'intermediate.rope_sin'), piece.forward);
    }
    tf.dispose([out.logits, ...out.hiddenStates!, loss]);

    // gradients of the CE loss
    const named = [...model.namedWeights()];
    const vars = [...named.map(([, v]) => v), ...(embedsInput ? [embedsInput] : [])];
    const { value, grads } = tf.variableGrads(() => {
      const { logits } = model.forward(inputs);
      return causalLmLoss(logits, labels).loss;
    }, vars);
    for (const [name, v] of named) {
      checks.tensor(`grad.${name}`, grads[v.name]!, ioTensor(piece, `grad.${name}`), piece.grads);
    }
    if (embedsInput && has('grad_input.inputs_embeds')) {
      checks.tensor('grad_input.inputs_embeds', grads[embedsInput.name]!, ioTensor(piece, 'grad_input.inputs_embeds'), piece.grads);
    }
    tf.dispose([value, ...Object.values(grads)]);
    return await checks.results();
  } finally {
    model.dispose();
    embedsInput?.dispose();
  }
}
