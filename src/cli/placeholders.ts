/** Commands whose implementation is still tracked in an open issue: they exist, say so, and exit 2. */
import type { CommandModule } from 'yargs';
import { notBuiltYet, type GlobalArgs } from './command.js';

export function planned(command: string, describe: string, issue: number): CommandModule<GlobalArgs, GlobalArgs> {
  return {
    command,
    describe: `${describe} [not implemented yet: issue ${issue}]`,
    builder: (y) => y.strict(false),
    handler: () => notBuiltYet(command.split(' ')[0]!, issue),
  };
}

export const placeholderCommands: CommandModule<GlobalArgs, GlobalArgs>[] = [];
