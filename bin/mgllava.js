#!/usr/bin/env node
// Launcher: runs the compiled CLI in dist/ (`npm run build`; npm ci and npm test build it).
import { existsSync } from 'node:fs';

const main = new URL('../dist/cli/main.js', import.meta.url);
if (!existsSync(main)) {
  console.error('mgllava: the compiled CLI (dist/cli/main.js) is missing: run `npm run build` in the mgllava checkout');
  process.exit(1);
}
const cli = await import(main.href);
process.exitCode = await cli.main(process.argv.slice(2));
