/**
 * Running the reference tools (qemu-img, qemu-io) and qimg's own CLI side by
 * side. When CI is set, a missing reference tool fails the test instead of
 * skipping it.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FormatDriver, Mapping } from '../../src/block/driver.js';
import { BlockImage, type Image } from '../../src/block/image.js';
import { MemoryStorage } from '../../src/io/memory.js';
import { qimgCommand } from './cli.js';

export interface RunResult {
  stdout: string;
  stderr: string;
  status: number;
}

export interface RunOptions {
  cwd?: string;
  input?: string;
  env?: NodeJS.ProcessEnv;
}


function run(cmd: string, args: readonly string[], opts: RunOptions = {}): RunResult {
  const r = spawnSync(cmd, args, {
    cwd: opts.cwd,
    input: opts.input,
    env: { ...process.env, LC_ALL: 'C', ...opts.env },
    encoding: 'utf8',
    maxBuffer: 256 * 1024 * 1024,
  });
  if (r.error) throw r.error;
  return { stdout: r.stdout, stderr: r.stderr, status: r.status ?? (r.signal ? 128 : 1) };
}

export const qemuImg = (args: readonly string[], opts?: RunOptions): RunResult => run('qemu-img', args, opts);
export const qemuIo = (args: readonly string[], opts?: RunOptions): RunResult => run('qemu-io', args, opts);
/** `qimg ARGS`: the CLI compiled from the current sources (see cli.ts). */
export const qimg = (args: readonly string[], opts?: RunOptions): RunResult => run(...qimgCommand(args), opts);

let available: boolean | undefined;
/** Whether qemu-img and qemu-io can be run here. */
export function haveTools(): boolean {
  if (available === undefined) {
    try {
      available = run('qemu-img', ['--version']).status === 0 && run('qemu-io', ['--version']).status === 0;
    } catch {
      available = false;
    }
  }
  return available;
}

/**
 * Call at the start of a test that needs qemu-img/qemu-io. Returns false
 * (after marking the test skipped) when they are missing outside CI; throws
 * when they are missing in CI.
 */
export function requireTools(t?: { skip(message?: string): void }): boolean {
  if (haveTools()) return true;
  if (process.env.CI) throw new Error('qemu-img/qemu-io are required when CI is set (apt-get install qemu-utils)');
  t?.skip('qemu-img/qemu-io not installed');
  return false;
}

const dirs: string[] = [];
process.on('exit', () => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** A fresh temporary directory, removed when the process exits. */
export function tmpDir(prefix = 'qimg-test-'): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  dirs.push(d);
  return d;
}

/** qimg's stderr with its program name swapped for qemu-img's, for comparisons. */
export const asQemu = (s: string, prog = 'qemu-img'): string => s.replaceAll('qimg: ', `${prog}: `).replaceAll("'qimg --help'", `'${prog} --help'`);

// In-memory images for testing ops/ without a real format: a list of mapped segments over a MemoryStorage.

export type Seg =
  | { kind: 'data'; length: number; host: number }
  | { kind: 'zero'; length: number }
  | { kind: 'unallocated'; length: number }
  | { kind: 'compressed'; length: number };

export function segImage(segs: Seg[], hostBytes: Uint8Array, opts: { name?: string; backing?: Image } = {}): Image {
  const storage = new MemoryStorage(hostBytes, { name: opts.name ?? 'mem' });
  const size = segs.reduce((n, s) => n + s.length, 0);
  const driver: FormatDriver = {
    format: 'qcow2',
    size,
    storage,
    writable: false,
    backing: opts.backing ? { name: opts.backing.filename } : undefined,
    async getMapping(offset: number, maxLength: number): Promise<Mapping> {
      let base = 0;
      for (const s of segs) {
        if (offset < base + s.length) {
          const within = offset - base;
          const length = Math.min(maxLength, s.length - within);
          if (s.kind === 'data') return { kind: 'data', length, storage, hostOffset: s.host + within };
          return { kind: s.kind, length };
        }
        base += s.length;
      }
      throw new Error('out of range');
    },
    async readCompressed(_offset: number, into: Uint8Array) {
      into.fill(0x77);
    },
    info: async () => ({}),
    flush: async () => {},
    close: async () => {},
  };
  return new BlockImage({ driver, filename: opts.name ?? 'mem', backing: opts.backing ?? null });
}

/** A raw-like image: one data segment over the given bytes. */
export const bytesImage = (bytes: Uint8Array, name = 'raw'): Image => segImage([{ kind: 'data', length: bytes.length, host: 0 }], bytes, { name });
