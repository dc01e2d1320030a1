/**
 * Keeping dist/ (the compiled CLI the tests run) in step with src/.
 *
 * A build is current when a stamp written after the last successful build
 * still matches both sides: a fingerprint of the inputs (every file under
 * src/, and tsconfig.json) and one of the output (every file under dist/).
 * Contents, not mtimes: checkouts, stashes and editors set mtimes
 * arbitrarily. The output half catches a dist/ rebuilt by hand from other
 * sources (tsc never touches the stamp), which an input check alone would
 * take for current once the sources are back.
 *
 * ensureBuilt() rebuilds under a lock directory, so test processes (and fuzz
 * worker threads) that find a stale build do not compile over each other.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, relative } from 'node:path';

export interface BuildState {
  current: boolean;
  /** Why the build is not current. */
  reason?: string;
}

interface Stamp {
  src: string;
  dist: string;
}

/** Where the stamp and the lock live: .test-work/ is ignored by git and not published. */
const workDir = (root: string): string => join(root, '.test-work');
const stampPath = (root: string): string => join(workDir(root), 'dist-stamp.json');
const lockPath = (root: string): string => join(workDir(root), 'build.lock');

function filesUnder(dir: string): string[] {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...filesUnder(p));
    else if (e.isFile()) out.push(p);
  }
  return out;
}

/** SHA-256 over the relative path and contents of each file, in a fixed order. */
function fingerprint(root: string, files: string[]): string {
  const h = createHash('sha256');
  for (const f of files.map((p) => relative(root, p)).sort()) {
    h.update(`${f}\0`);
    h.update(readFileSync(join(root, f)));
    h.update('\0');
  }
  return h.digest('hex');
}

export const sourceFingerprint = (root: string): string => fingerprint(root, [...filesUnder(join(root, 'src')), join(root, 'tsconfig.json')]);
export const distFingerprint = (root: string): string => fingerprint(root, filesUnder(join(root, 'dist')));

function readStamp(root: string): Stamp | undefined {
  try {
    return JSON.parse(readFileSync(stampPath(root), 'utf8')) as Stamp;
  } catch {
    return undefined;
  }
}

/** Whether dist/ under `root` was compiled from the sources now under src/. */
export function buildState(root: string): BuildState {
  const stamp = readStamp(root);
  if (!existsSync(join(root, 'dist'))) return { current: false, reason: 'dist/ does not exist' };
  if (!stamp) return { current: false, reason: 'no record of a build by the tests (.test-work/dist-stamp.json)' };
  if (stamp.src !== sourceFingerprint(root)) return { current: false, reason: 'src/ or tsconfig.json changed since the last build' };
  if (stamp.dist !== distFingerprint(root)) return { current: false, reason: 'dist/ changed since the last build (built from other sources?)' };
  return { current: true };
}

const tscPath = (): string => createRequire(import.meta.url).resolve('typescript/bin/tsc');

function sleep(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** A lock older than this is left over from a killed process (a build takes seconds). */
const STALE_LOCK_MS = 5 * 60_000;
const LOCK_WAIT_MS = 10 * 60_000;

function withLock<T>(root: string, fn: () => T): T {
  mkdirSync(workDir(root), { recursive: true });
  const lock = lockPath(root);
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (;;) {
    try {
      mkdirSync(lock);
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      let age = 0;
      try {
        age = Date.now() - statSync(lock).mtimeMs;
      } catch {
        continue; // released between the two calls
      }
      if (age > STALE_LOCK_MS) rmSync(lock, { recursive: true, force: true });
      else if (Date.now() > deadline) throw new Error(`build: waited ${LOCK_WAIT_MS / 1000} s for ${lock}; remove it if no build is running`);
      else sleep(100);
    }
  }
  try {
    return fn();
  } finally {
    rmSync(lock, { recursive: true, force: true });
  }
}

/** Compile src/ to dist/ with the project's tsc; throws with tsc's output when it fails. */
export function tsc(root: string): void {
  const r = spawnSync(process.execPath, [tscPath(), '-p', join(root, 'tsconfig.json')], { cwd: root, encoding: 'utf8', timeout: 5 * 60_000 });
  if (r.status !== 0) {
    throw new Error(`build: tsc -p tsconfig.json failed (status ${r.status}, signal ${r.signal}); the CLI tests need a build of the current sources\n${r.stdout}${r.stderr}${r.error ? String(r.error) : ''}`);
  }
}

function build(root: string, compile: (root: string) => void): void {
  const src = sourceFingerprint(root);
  // No stamp while dist/ is being rewritten: a build that dies half-way is not current.
  rmSync(stampPath(root), { force: true });
  compile(root);
  const stamp: Stamp = { src, dist: distFingerprint(root) };
  writeFileSync(stampPath(root), JSON.stringify(stamp) + '\n');
}

/**
 * Make sure dist/ under `root` is compiled from the current sources,
 * compiling it if not. Returns whether this call compiled it. `compile` is
 * replaceable so the unit tests of this logic need not wait for tsc.
 */
export function ensureBuilt(root: string, compile: (root: string) => void = tsc): boolean {
  let built = false;
  if (!buildState(root).current) {
    withLock(root, () => {
      // Another process may have built it while this one waited.
      if (!buildState(root).current) {
        build(root, compile);
        built = true;
      }
    });
  }
  return built;
}
