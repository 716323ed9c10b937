/**
 * Golden runner for `splice` and `splice_textonly`: the multimodal splice with the piece's embedding table,
 * image and per-sample object embeddings. Integer outputs must match exactly, embeddings within the forward
 * tolerance. When the piece has `output_official_phantom.*`, the official phantom-row behaviour is run too.
 */
import * as tf from '@tensorflow/tfjs';
import type { GoldenPiece } from '../manifest.js';
import { ioTensor } from '../manifest.js';
import { compareExact, Checks, type CheckResult } from '../compare.js';
import { toTf } from '../../io/host-tensor.js';
import { spliceMultimodal, type SpliceOptions } from '../../model/splice.js';

export async function runSplice(piece: GoldenPiece): Promise<CheckResult[]> {
  const checks = new Checks();
  const table = toTf(ioTensor(piece, 'input.embed_tokens'));
  const images = toTf(ioTensor(piece, 'input.image_embeds')) as tf.Tensor3D;
  const objects: tf.Tensor2D[] = [];
  for (let i = 0; piece.io.has(`input.object_embeds_${i}`); i++) objects.push(toTf(ioTensor(piece, `input.object_embeds_${i}`)) as tf.Tensor2D);
  try {
    const variants: [string, SpliceOptions][] = [['output', {}]];
    if (piece.io.has('output_official_phantom.labels')) variants.push(['output_official_phantom', { phantomRowForTextOnly: true }]);
    for (const [prefix, options] of variants) {
      const out = spliceMultimodal(
        {
          inputIds: ioTensor(piece, 'input.input_ids'),
          labels: ioTensor(piece, 'input.labels'),
          attentionMask: ioTensor(piece, 'input.attention_mask'),
          embedTokens: (ids) => tf.gather(table, ids),
          imageEmbeds: images,
          objectEmbeds: objects,
          vocabSize: table.shape[0],
        },
        options,
      );
      checks.tensor(`${prefix}.inputs_embeds`, out.inputsEmbeds, ioTensor(piece, `${prefix}.inputs_embeds`), piece.forward);
      out.inputsEmbeds.dispose();
      for (const [key, m] of [['labels', out.labels], ['attention_mask', out.attentionMask], ['position_ids', out.positionIds]] as const) {
        const expected = ioTensor(piece, `${prefix}.${key}`);
        const shapeOk = expected.shape.length === 2 && expected.shape[0] === m.shape[0] && expected.shape[1] === m.shape[1];
        checks.push(
          shapeOk
            ? compareExact(`${prefix}.${key}`, m.data, expected)
            : { name: `${prefix}.${key}`, ok: false, maxAbsErr: Infinity, maxRelErr: Infinity, note: `shape [${m.shape}] != golden [${expected.shape}]` },
        );
      }
    }
    return await checks.results();
  } finally {
    tf.dispose([table, images, ...objects]);
  }
}
