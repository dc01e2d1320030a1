/**
 * CAST5 on Node needs OpenSSL's legacy provider, which Node loads only when
 * started with --openssl-legacy-provider. Rather than make every qimg user
 * pass that flag, the command runs once more with it when an image needs
 * the cipher: same arguments, same stdio, the child's exit code.
 *
 * Rerunning is only safe when the first run changed nothing: the library
 * checks the cipher before it creates or writes a file, and this module
 * refuses to rerun once anything was printed (the rerun would print it
 * again). An environment variable stops a second rerun, whatever happens.
 */
import { spawn } from 'node:child_process';
import { isImageError } from '../node.js';

const FLAG = '--openssl-legacy-provider';
const GUARD = 'QIMG_LEGACY_PROVIDER_RERUN';
const FORWARDED: readonly NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

let printed = false;

/**
 * A progress meter's redraw ("    (0.00/100%)\r"): the next redraw
 * overwrites it, so the rerun printing it again changes nothing on screen.
 */
const isRedraw = (chunk: unknown): boolean => typeof chunk === 'string' && chunk.endsWith('\r') && !chunk.includes('\n');

/** Note every write to stdout and stderr, so a run that printed is never repeated. */
export function watchOutput(): void {
  for (const stream of [process.stdout, process.stderr]) {
    const write = stream.write.bind(stream) as (...args: unknown[]) => boolean;
    stream.write = ((...args: unknown[]) => {
      if (!isRedraw(args[0])) printed = true;
      return write(...args);
    }) as typeof stream.write;
  }
}

/** Whether `e` (or an error it wraps) says the cipher needs OpenSSL's legacy provider. */
export function needsLegacyProvider(e: unknown): boolean {
  for (let x = e, depth = 0; x !== undefined && depth < 16; x = x instanceof Error ? x.cause : undefined, depth++) {
    if (isImageError(x, 'cipher-unavailable')) return true;
  }
  return false;
}

/** Whether this run may be repeated with the flag: it hit that error, printed nothing, and is not itself the rerun. */
export function shouldRerun(e: unknown): boolean {
  return (
    needsLegacyProvider(e) &&
    !printed &&
    process.env[GUARD] === undefined &&
    !process.execArgv.includes(FLAG) &&
    process.allowedNodeEnvironmentFlags.has(FLAG)
  );
}

/**
 * Run this command again under `node --openssl-legacy-provider` and return
 * its exit code; a child killed by a signal kills this process the same way.
 */
export function rerunWithLegacyProvider(): Promise<number> {
  const child = spawn(process.execPath, [...process.execArgv, FLAG, ...process.argv.slice(1)], {
    stdio: 'inherit',
    env: { ...process.env, [GUARD]: '1' },
  });
  // The child does the work now: a signal meant for qimg goes to it.
  const forward = (signal: NodeJS.Signals): void => {
    child.kill(signal);
  };
  for (const s of FORWARDED) process.on(s, forward);
  return new Promise((resolve) => {
    const done = (code: number | null, signal: NodeJS.Signals | null): void => {
      for (const s of FORWARDED) process.off(s, forward);
      if (signal !== null) process.kill(process.pid, signal);
      resolve(code ?? 1);
    };
    child.on('exit', done);
    child.on('error', () => done(1, null));
  });
}
