/** `npm run demo:ablation [-- options]`: a thin wrapper around `mgllava demo --ablation` (src/recipes/tiny-shapes/ablation.ts). */
import { main } from '../src/cli/main.js';

process.exitCode = await main(['demo', '--ablation', ...process.argv.slice(2).filter((a) => a !== '--')]);
