/**
 * A tiny OWLv2 detector directory, as Hugging Face lays one out, for the detection tests: the golden set's
 * architecture (vision 32 wide, 8x8 patches of a 32 px image; text 24 wide, vocabulary 100 with BOS 98 / EOS 99,
 * pad "!" = 0) with seeded random weights.
 *
 *   config.json            HF Owlv2Config keys (text_config, vision_config, projection_dim)
 *   model.safetensors      every parameter under its HF Owlv2ForObjectDetection name
 *   tokenizer.json         a CLIP-style byte-level BPE (lowercasing normaliser, CLIP's split regex, "</w>" word ends)
 *   tokenizer_config.json  bos/eos/pad tokens as the OWLv2 checkpoints name them
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import sharp from 'sharp';
import { writeSafetensors, type HostTensor } from '../src/io/safetensors.js';
import { hostTensorFromTf } from '../src/io/host-tensor.js';
import { Owlv2Detector } from '../src/model/detector/owlv2.js';
import type { Owlv2Config } from '../src/model/detector/config.js';
import { Rng } from '../src/util/rng.js';

export const TINY_OWLV2: Owlv2Config = {
  text: { vocabSize: 100, hiddenSize: 24, intermediateSize: 48, numLayers: 2, numHeads: 2, maxPositions: 16, layerNormEps: 1e-5, padTokenId: 0, bosTokenId: 98, eosTokenId: 99 },
  vision: { hiddenSize: 32, intermediateSize: 64, numLayers: 2, numHeads: 2, numChannels: 3, imageSize: 32, patchSize: 4, layerNormEps: 1e-5 },
  projectionDim: 24,
};

/** HF config.json of a config (what save_pretrained writes, minus keys irrelevant here). */
export function hfConfigJson(c: Owlv2Config): Record<string, unknown> {
  return {
    architectures: ['Owlv2ForObjectDetection'],
    model_type: 'owlv2',
    projection_dim: c.projectionDim,
    logit_scale_init_value: 2.6592,
    text_config: {
      model_type: 'owlv2_text_model',
      vocab_size: c.text.vocabSize,
      hidden_size: c.text.hiddenSize,
      intermediate_size: c.text.intermediateSize,
      num_hidden_layers: c.text.numLayers,
      num_attention_heads: c.text.numHeads,
      max_position_embeddings: c.text.maxPositions,
      layer_norm_eps: c.text.layerNormEps,
      hidden_act: 'quick_gelu',
      pad_token_id: c.text.padTokenId,
      bos_token_id: c.text.bosTokenId,
      eos_token_id: c.text.eosTokenId,
    },
    vision_config: {
      model_type: 'owlv2_vision_model',
      hidden_size: c.vision.hiddenSize,
      intermediate_size: c.vision.intermediateSize,
      num_hidden_layers: c.vision.numLayers,
      num_attention_heads: c.vision.numHeads,
      num_channels: c.vision.numChannels,
      image_size: c.vision.imageSize,
      patch_size: c.vision.patchSize,
      layer_norm_eps: c.vision.layerNormEps,
      hidden_act: 'quick_gelu',
    },
  };
}

/** Letters, letters ending a word, and a few merges ("photo</w>", "of</w>") so "a photo of <tag>" stays short. */
export function tinyClipTokenizerJson(): Record<string, unknown> {
  const vocab: Record<string, number> = { '!': 0 };
  const letters = 'abcdefghijklmnopqrstuvwxyz';
  for (const ch of letters) vocab[ch] = Object.keys(vocab).length;
  for (const ch of letters) vocab[`${ch}</w>`] = Object.keys(vocab).length;
  const merges = ['p h', 'ph o', 'pho t', 'phot o</w>', 'o f</w>'];
  for (const m of merges) vocab[m.replace(' ', '')] = Object.keys(vocab).length;
  const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: true, special: true });
  vocab['<|startoftext|>'] = 98;
  vocab['<|endoftext|>'] = 99;
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [special(98, '<|startoftext|>'), special(99, '<|endoftext|>')],
    normalizer: { type: 'Sequence', normalizers: [{ type: 'NFC' }, { type: 'Replace', pattern: { Regex: '\\s+' }, content: ' ' }, { type: 'Lowercase' }] },
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        {
          type: 'Split',
          pattern: { Regex: "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+" },
          behavior: 'Removed',
          invert: true,
        },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    post_processor: { type: 'RobertaProcessing', sep: ['<|endoftext|>', 99], cls: ['<|startoftext|>', 98], trim_offsets: false, add_prefix_space: false },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<|endoftext|>',
      continuing_subword_prefix: '',
      end_of_word_suffix: '</w>',
      fuse_unk: false,
      byte_fallback: false,
      vocab,
      merges,
    },
  };
}

/** Write the detector directory; returns the weights written (HF name -> tensor). */
export async function writeTinyOwlv2Dir(dir: string, seed = 1, config: Owlv2Config = TINY_OWLV2): Promise<Map<string, HostTensor>> {
  await mkdir(dir, { recursive: true });
  const model = new Owlv2Detector(config, { rng: new Rng(seed) });
  const weights = new Map<string, HostTensor>();
  try {
    for (const [name, v] of model.namedWeights()) weights.set(name, await hostTensorFromTf(v));
  } finally {
    model.dispose();
  }
  await writeSafetensors(path.join(dir, 'model.safetensors'), weights);
  await writeFile(path.join(dir, 'config.json'), JSON.stringify(hfConfigJson(config), null, 2));
  await writeFile(path.join(dir, 'tokenizer.json'), JSON.stringify(tinyClipTokenizerJson()));
  await writeFile(
    path.join(dir, 'tokenizer_config.json'),
    JSON.stringify({ bos_token: '<|startoftext|>', eos_token: '<|endoftext|>', pad_token: '!', model_max_length: 16, tokenizer_class: 'CLIPTokenizer' }),
  );
  return weights;
}

/** A seeded noise image with a brighter rectangle (something for the detector to look at), as PNG or JPEG. */
export async function writeTestImage(file: string, width: number, height: number, seed: number): Promise<void> {
  const rng = new Rng(seed);
  const data = Buffer.alloc(width * height * 3);
  for (let i = 0; i < data.length; i++) data[i] = Math.floor(rng.next() * 128);
  for (let y = Math.floor(height / 4); y < Math.floor((3 * height) / 4); y++) {
    for (let x = Math.floor(width / 3); x < Math.floor((2 * width) / 3); x++) data.fill(230, (y * width + x) * 3, (y * width + x) * 3 + 3);
  }
  const img = sharp(data, { raw: { width, height, channels: 3 } });
  await (file.endsWith('.jpg') ? img.jpeg({ quality: 95 }) : img.png()).toFile(file);
}
