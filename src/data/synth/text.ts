/**
 * Text of the synthetic dataset: pretraining captions and the question kinds of DEMO-STUDY.md.
 * Small-object questions ask the colour only (small-object shape was not learnable at demo resolution).
 * Words are separated by spaces, punctuation included (" ?", " ."), so a word-level tokenizer sees
 * exactly the words listed in the vocabulary.
 */
import { IMAGE_TOKEN } from '../constants.js';
import type { Rng } from '../../util/rng.js';
import { intIn, pick } from '../random.js';
import type { Turn } from '../records.js';
import { objectOfSize, smallestFirst, type Scene } from './scene.js';

export const QUESTION_CATEGORIES = ['small_color', 'large_color', 'large_shape'] as const;
export type QuestionCategory = (typeof QUESTION_CATEGORIES)[number];

export interface QA {
  category: QuestionCategory;
  question: string;
  answer: string;
}

export function askAbout(scene: Scene, category: QuestionCategory): QA {
  const small = objectOfSize(scene, 'small');
  const large = objectOfSize(scene, 'large');
  switch (category) {
    case 'small_color':
      return { category, question: `what color is the small ${small.shape} ?`, answer: small.color };
    case 'large_color':
      return { category, question: `what color is the large ${large.shape} ?`, answer: large.color };
    case 'large_shape':
      return { category, question: `what shape is the large ${large.color} object ?`, answer: large.shape };
  }
}

const CAPTION_PROMPTS = ['describe the image .', 'what is in the image ?'];

/** Every object, smallest first (the order of the boxes), with its size class. */
export function caption(scene: Scene): string {
  const parts = smallestFirst(scene).map((o) => `a ${o.size} ${o.color} ${o.shape}`);
  return `${parts.slice(0, -1).join(' , ')} and ${parts[parts.length - 1]} .`;
}

export function captionConversation(rng: Rng, scene: Scene): Turn[] {
  return [
    { from: 'human', value: `${IMAGE_TOKEN}\n${pick(rng, CAPTION_PROMPTS)}` },
    { from: 'gpt', value: caption(scene) },
  ];
}

/** QAs as one conversation; the image placeholder goes in the first human turn. */
export function qaConversation(qas: QA[]): Turn[] {
  return qas.flatMap((qa, i) => [
    { from: 'human' as const, value: i === 0 ? `${IMAGE_TOKEN}\n${qa.question}` : qa.question },
    { from: 'gpt' as const, value: qa.answer },
  ]);
}

/**
 * Split the image's three QAs into records: one 3-turn conversation, a 2-turn + a 1-turn, or three
 * single-turn ones (equally likely), in a random question order.
 */
export function finetuneConversations(rng: Rng, scene: Scene): Turn[][] {
  const qas = rng.shuffle(QUESTION_CATEGORIES.map((c) => askAbout(scene, c)));
  const split = intIn(rng, 0, 2);
  if (split === 0) return [qaConversation(qas)];
  if (split === 1) return [qaConversation(qas.slice(0, 2)), qaConversation(qas.slice(2))];
  return qas.map((qa) => qaConversation([qa]));
}

/** Words (Whitespace pre-tokenizer pieces) in a text: `\w+` runs and runs of other non-space characters. */
export function words(text: string): string[] {
  return text.match(/\w+|[^\w\s]+/gu) ?? [];
}
