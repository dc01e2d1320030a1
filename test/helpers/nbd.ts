/**
 * NBD clients for the server tests: libnbd's tools (nbdinfo, nbdcopy),
 * qemu-nbd as the reference server, all run asynchronously so an in-process
 * server keeps serving while they work. Missing tools fail under CI.
 */
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

export interface AsyncRun {
  stdout: string;
  stderr: string;
  status: number;
}

/** Run a program without blocking the event loop. */
export function runAsync(cmd: string, args: readonly string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<AsyncRun> {
  return new Promise((resolve) => {
    execFile(cmd, args, { encoding: 'utf8', timeout: opts.timeoutMs ?? 30000, maxBuffer: 64 * 1024 * 1024, env: { ...process.env, LC_ALL: 'C', ...opts.env } }, (e, stdout, stderr) => {
      const code = e ? (typeof (e as { code?: unknown }).code === 'number' ? ((e as { code: number }).code) : 1) : 0;
      resolve({ stdout, stderr, status: code });
    });
  });
}

const found = new Map<string, boolean>();
function have(tool: string): boolean {
  if (!found.has(tool)) {
    const r = spawnSync(tool, ['--version'], { encoding: 'utf8' });
    found.set(tool, !r.error && r.status === 0);
  }
  return found.get(tool)!;
}

/**
 * Call at the start of a test needing these programs. False (test skipped)
 * when one is missing outside CI; throws when CI is set.
 */
export function requireNbdTools(t: { skip(message?: string): void }, tools: readonly string[] = ['nbdinfo', 'nbdcopy', 'qemu-nbd', 'qemu-img', 'qemu-io']): boolean {
  const missing = tools.filter((x) => !have(x));
  if (missing.length === 0) return true;
  if (process.env.CI) throw new Error(`${missing.join(', ')} required when CI is set (apt-get install qemu-utils libnbd-bin)`);
  t.skip(`${missing.join(', ')} not installed`);
  return false;
}

/** Wait until a Unix socket file exists (a server started in another process is up). */
export async function waitForSocket(path: string, child?: ChildProcess, timeoutMs = 20000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!existsSync(path)) {
    if (child && child.exitCode !== null) throw new Error(`server exited with ${child.exitCode} before listening`);
    if (Date.now() > end) throw new Error(`no socket at ${path}`);
    await sleep(20);
  }
}

/** qemu-nbd serving `image` on a Unix socket; stop() ends it. */
export async function startQemuNbd(args: readonly string[], socket: string): Promise<{ stop(): Promise<void> }> {
  const child = spawn('qemu-nbd', ['-k', socket, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  try {
    await waitForSocket(socket, child);
  } catch (e) {
    throw new Error(`${(e as Error).message}: ${stderr}`);
  }
  return {
    stop: async () => {
      if (child.exitCode !== null) return;
      const done = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await done;
    },
  };
}

export const unixUri = (socket: string, name = ''): string => `nbd+unix:///${name}?socket=${socket}`;
