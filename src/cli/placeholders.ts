/** Commands whose implementation is still tracked in an open issue: they exist, say so, and exit 2. */
import type { CommandModule } from 'yargs';
import { notBuiltYet, type GlobalArgs } from './command.js';

function planned(command: string, describe: string, issue: number): CommandModule<GlobalArgs, GlobalArgs> {
  return {
    command,
    describe: `${describe} [not implemented yet: issue ${issue}]`,
    builder: (y) => y.strict(false),
    handler: () => notBuiltYet(command.split(' ')[0]!, issue),
  };
}

export const placeholderCommands = [
  planned('warmup', 'Stage 0: warm up tiny encoders on synthetic annotations', 6),
  planned('pretrain', 'Stage 1: train fusion + projectors with frozen encoders and LLM', 5),
  planned('finetune', 'Stage 2: train fusion + projectors + LLM', 5),
  planned('chat', 'Answer a prompt about an image with a trained run', 5),
  planned('eval', 'Accuracy of a trained run on an eval set', 5),
  planned('export', 'Export a run to the PyTorch MG-LLaVA/XTuner or Hugging Face layout', 5),
  planned('import', 'Import Hugging Face weights (CLIP, OpenCLIP ConvNeXt, LLaMA family)', 5),
];
