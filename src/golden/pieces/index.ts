/** The golden pieces this build can check, by manifest name. */
import type { RunnerTable } from '../run.js';
import { runBoxes, runConversation, runSchedule } from './json-cases.js';
import { runE2e } from './e2e.js';
import { runFusion } from './fusion.js';
import { runObjectFeatures, runRoiAlign } from './objects.js';
import { runClipVit } from './clip-vit.js';
import { runConvNext } from './convnext.js';
import { runProjector } from './projector.js';
import { runLlama } from './llama.js';
import { runSplice } from './splice.js';
import { runOwlv2BoxHead, runOwlv2ClassHead, runOwlv2Detector, runOwlv2ImageEmbedder, runOwlv2Objectness, runOwlv2TextEncoder, runOwlv2VisionEncoder } from './owlv2.js';
import { runOwlv2MgllavaBoxes, runOwlv2PostProcess, runOwlv2Preprocess } from './owlv2-data.js';
import { runLora } from './lora.js';

export const RUNNERS: RunnerTable = {
  'boxes.json': runBoxes,
  'conversation.json': runConversation,
  'schedule.json': runSchedule,
  e2e: runE2e,
  fuse_v0: runFusion,
  fuse_v1: runFusion,
  fuse_v2: runFusion,
  fuse_v3: runFusion,
  roi_align: runRoiAlign,
  object_features: runObjectFeatures,
  object_features_multilevel: runObjectFeatures,
  clip_vit: runClipVit,
  convnext: runConvNext,
  projector: runProjector,
  llama_a: runLlama,
  llama_b: runLlama,
  splice: runSplice,
  splice_textonly: runSplice,
  // OWLv2 (../shared/golden/owlv2-public)
  text_encoder: runOwlv2TextEncoder,
  vision_encoder: runOwlv2VisionEncoder,
  image_embedder: runOwlv2ImageEmbedder,
  class_head: runOwlv2ClassHead,
  box_head: runOwlv2BoxHead,
  objectness: runOwlv2Objectness,
  detector: runOwlv2Detector,
  preprocess: runOwlv2Preprocess,
  post_process: runOwlv2PostProcess,
  mgllava_boxes: runOwlv2MgllavaBoxes,
  lora_llama_all: runLora,
  lora_llama_qv_rs: runLora,
};
