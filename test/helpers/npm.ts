/**
 * Packing the repository and installing the tarball into a scratch project,
 * the way a user of the published package gets it.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';

export interface Ran {
  status: number;
  stdout: string;
  stderr: string;
}

/**
 * The environment for a nested npm: the settings of an outer `npm test`
 * (its package, prefix, lifecycle) must not leak into the scratch project,
 * but where the cache and config live must.
 */
function npmEnv(): NodeJS.ProcessEnv {
  const keep = new Set(['npm_config_cache', 'npm_config_userconfig', 'npm_config_globalconfig', 'npm_config_nodedir', 'npm_config_registry']);
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.toLowerCase().startsWith('npm_') || keep.has(k.toLowerCase())) env[k] = v;
  }
  return env;
}

/** `npm ARGS` in `cwd`, asynchronously so the test process stays responsive during long installs. */
export function npm(args: readonly string[], cwd: string, timeoutMs: number): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn('npm', args, { cwd, env: npmEnv(), stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs, killSignal: 'SIGKILL' });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ status: code ?? (signal ? 128 : 1), stdout, stderr }));
  });
}

export interface PackedFile {
  path: string;
  size: number;
}

/** `npm pack --json` output: the tarball's name and the files in it. */
export function packJson(stdout: string): { filename: string; files: PackedFile[] } {
  // npm may print notices before the JSON on stdout; the JSON array starts at the first '['.
  const parsed = JSON.parse(stdout.slice(stdout.indexOf('['))) as { filename: string; files: PackedFile[] }[];
  const only = parsed[0];
  if (parsed.length !== 1 || !only) throw new Error(`npm pack --json: expected one package, got ${parsed.length}`);
  return only;
}

/** The repository's own tsc, run by this node. */
export function tsc(args: readonly string[], cwd: string): Ran {
  const bin = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  const r = spawnSync(process.execPath, [bin, ...args], { cwd, encoding: 'utf8', timeout: 120_000 });
  if (r.error) throw r.error;
  return { status: r.status ?? 1, stdout: r.stdout, stderr: r.stderr };
}

/** Whether `cmd --version` runs: for the build tools an install needs. */
export function runs(cmd: string): boolean {
  try {
    return spawnSync(cmd, ['--version'], { stdio: 'ignore', timeout: 30_000 }).status === 0;
  } catch {
    return false;
  }
}
