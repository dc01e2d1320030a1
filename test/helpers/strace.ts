/**
 * Counting the fdatasync/fsync calls a CLI run makes, with strace: how the
 * cache-mode tests observe flushes without timing anything.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { qimgMain } from './cli.js';

/** Syncs made by `qimg ARGS` run in `cwd`; undefined when strace cannot run here or qimg failed. */
export function qimgSyncCalls(args: readonly string[], cwd: string): number | undefined {
  const log = join(cwd, `strace-${process.pid}.log`);
  const r = spawnSync('strace', ['-f', '-qq', '-e', 'trace=fdatasync,fsync', '-o', log, process.execPath, qimgMain(), ...args], { cwd, encoding: 'utf8' });
  if (r.error || r.status !== 0) return undefined;
  return readFileSync(log, 'utf8').split('\n').filter((l) => /\b(fdatasync|fsync)\(/.test(l)).length;
}
