#!/usr/bin/env node
// Builds the native matmul addon (native/) with node-gyp; run by `npm ci` / `npm install` (the
// package's "install" script) and by `npm run build:native`.
//
// The addon is optional: without python3/make/a C++ compiler the build fails, this prints why and
// exits 0, and BatchMatMul runs on XNNPACK (`mgllava doctor` says so). MGLLAVA_NATIVE=on makes a
// failed build fail the install (CI sets it); MGLLAVA_NATIVE=off skips the build.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const mode = (process.env.MGLLAVA_NATIVE ?? 'auto').trim().toLowerCase();
if (mode === 'off' || mode === '0' || mode === 'false') {
  console.log('mgllava: MGLLAVA_NATIVE=off, native matmul addon not built');
  process.exit(0);
}
const required = mode === 'on' || mode === '1' || mode === 'true';

// node-gyp: the copy npm ships (npm names it to install scripts), else the one beside Node's npm.
function nodeGyp() {
  const candidates = [
    process.env.npm_config_node_gyp,
    path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  ];
  const js = candidates.find((c) => c && existsSync(c));
  return js ? [process.execPath, js] : ['node-gyp'];
}

// Node's own headers when npm has not named a directory: node-gyp would otherwise download them.
function nodedirArgs() {
  if (process.env.npm_config_nodedir) return [];
  const prefix = path.join(path.dirname(process.execPath), '..');
  return existsSync(path.join(prefix, 'include', 'node', 'node_api.h')) ? [`--nodedir=${prefix}`] : [];
}

const [cmd, ...pre] = nodeGyp();
const started = Date.now();
const r = spawnSync(cmd, [...pre, 'rebuild', ...nodedirArgs(), '--directory', path.join(root, 'native')], { encoding: 'utf8' });
const built = r.status === 0 && existsSync(path.join(root, 'native', 'build', 'Release', 'mgllava_native.node'));
if (built) {
  console.log(`mgllava: native matmul addon built in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  process.exit(0);
}
// The compiler's own error lines first (node-gyp's stack trace after them says little), then the tail.
const lines = `${r.stdout ?? ''}\n${r.stderr ?? ''}`.trim().split('\n');
const errors = lines.filter((l) => /\berror\b/i.test(l) && !l.startsWith('gyp ERR!')).slice(0, 10);
const why = r.error ? r.error.message : [...errors, ...lines.slice(-8)].join('\n');
const message =
  `mgllava: building the native matmul addon failed (node-gyp needs python3, make and a C++17 compiler).\n` +
  `${why}\n` +
  `mgllava: BatchMatMul will run on XNNPACK inside wasm (~4x slower products on AVX-512 machines); ` +
  '`mgllava doctor` reports it, `npm run build:native` retries.';
console.error(message);
process.exit(required ? 1 : 0);
