/**
 * The one way tests, fuzzing and benchmarks start qimg's CLI: `node
 * dist/cli/main.js`, after ensureBuilt() has made sure dist/ is compiled from
 * the current sources, so no test can pass against stale output.
 *
 * Not `node --import tsx src/cli/main.ts` per run: that starts in about
 * 0.33 s against 0.12 s for the compiled file (`--version`, measured on a
 * 2-core machine), and the suite starts the CLI many hundreds of times;
 * the kill test also counts on the CLI starting its work quickly.
 */
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureBuilt } from './build.js';

/** The repository root (this file is test/helpers/cli.ts). */
export const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

let checked = false;

/**
 * The compiled CLI entry point, built first if dist/ is missing or stale.
 * Checked once per process (hashing src/ and dist/ takes a few
 * milliseconds): the sources are not expected to change while tests run.
 */
export function qimgMain(): string {
  if (!checked) {
    ensureBuilt(REPO_ROOT);
    checked = true;
  }
  return join(REPO_ROOT, 'dist', 'cli', 'main.js');
}

/** Command and arguments that run `qimg ARGS` under this node. */
export function qimgCommand(args: readonly string[]): [string, string[]] {
  return [process.execPath, [qimgMain(), ...args]];
}
