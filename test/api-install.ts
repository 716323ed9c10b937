// The package as a user gets it: `npm pack` of this checkout (its built dist/, see test/global-setup.ts),
// unpacked into <tmp>/app/node_modules/mgllava, with its dependencies linked from this checkout's
// node_modules (what `npm install <tarball>` would put there, without the network). Code run in <tmp>/app
// imports the package by its name, through package.json "exports", exactly as a dependent project does.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, symlinkSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const REPO = path.resolve(import.meta.dirname, '..');

export interface InstalledApp {
  /** The dependent project's directory (cwd for the scripts). */
  dir: string;
  /** Where the package was unpacked. */
  packageDir: string;
  /** Run `node <file>` in `dir`. */
  run(file: string, env?: NodeJS.ProcessEnv): { status: number | null; stdout: string; stderr: string };
}

export function installPackedPackage(): InstalledApp {
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'mgllava-api-'));
  // --ignore-scripts: no `prepare` rebuild (dist/ is fresh) and no network; npm prints the tarball's name.
  const tarball = execFileSync('npm', ['pack', '--ignore-scripts', '--silent', '--pack-destination', tmp], { cwd: REPO, encoding: 'utf8' }).trim().split('\n').pop()!;
  const dir = path.join(tmp, 'app');
  const packageDir = path.join(dir, 'node_modules', 'mgllava');
  mkdirSync(packageDir, { recursive: true });
  execFileSync('tar', ['xzf', path.join(tmp, tarball), '-C', packageDir, '--strip-components=1']);

  const manifest = JSON.parse(readFileSync(path.join(packageDir, 'package.json'), 'utf8')) as {
    dependencies?: Record<string, string>;
    optionalDependencies?: Record<string, string>;
  };
  const deps = [...Object.keys(manifest.dependencies ?? {}), ...Object.keys(manifest.optionalDependencies ?? {})];
  for (const dep of deps) {
    const from = path.join(REPO, 'node_modules', dep);
    if (!existsSync(from)) continue; // an optional dependency that did not install here
    const to = path.join(dir, 'node_modules', dep);
    mkdirSync(path.dirname(to), { recursive: true });
    symlinkSync(from, to, 'dir');
  }
  return {
    dir,
    packageDir,
    run(file, env = {}) {
      const r = spawnSync(process.execPath, [file], { cwd: dir, encoding: 'utf8', env: { ...process.env, ...env }, timeout: 300_000 });
      return { status: r.status, stdout: r.stdout, stderr: r.stderr };
    },
  };
}
