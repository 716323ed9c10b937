/** `npm run demo [-- options]`: a thin wrapper around `mgllava demo` (src/cli/demo.ts, src/recipes/tiny-shapes/). */
import { main } from '../src/cli/main.js';

process.exitCode = await main(['demo', ...process.argv.slice(2).filter((a) => a !== '--')]);
