/**
 * The interop corpus: qcow2, QED and raw images made by the reference tools
 * (qemu-img / qemu-io) across the option matrix, filled with recognisable
 * patterns. Nothing here knows what the images *should* read as: the tests
 * ask qemu-img for that. Everything lives in one temp dir under os.tmpdir().
 *
 * Commands run with `cwd` set to the corpus dir and relative names for backing
 * and data files, so the names stored in the images are relative and resolved
 * against the image's directory (as qemu does).
 */
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, statSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { qimgCommand } from './cli.js';

export type CorpusFormat = 'qcow2' | 'qed' | 'raw';

export interface CorpusImage {
  /** Short unique name, also the test name. */
  name: string;
  /** Absolute path of the image. */
  path: string;
  format: CorpusFormat;
  /** What the image exercises. */
  notes: string;
  /** Huge virtual size: only sparse-aware operations are sensible. */
  huge?: boolean;
}

export interface RunResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  /** Wall time in milliseconds. */
  ms: number;
}

export interface RunOptions {
  cwd?: string;
  /** Milliseconds; default 60 s. */
  timeout?: number;
  /** Added to the environment (which always has LC_ALL=C). */
  env?: NodeJS.ProcessEnv;
}

const DEFAULT_TIMEOUT = 60_000;
/** Untranslated messages (qemu-img's strerror texts are compared verbatim). */
const baseEnv = (env?: NodeJS.ProcessEnv): NodeJS.ProcessEnv => ({ ...process.env, LC_ALL: 'C', ...env });

/** spawnSync with a timeout; never throws for a failing command. */
export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): RunResult {
  const t0 = Date.now();
  const r = spawnSync(cmd, args, {
    cwd: opts.cwd,
    env: baseEnv(opts.env),
    timeout: opts.timeout ?? DEFAULT_TIMEOUT,
    killSignal: 'SIGKILL',
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
  });
  const err = r.error as (NodeJS.ErrnoException & { code?: string }) | undefined;
  return {
    status: r.status,
    signal: r.signal,
    stdout: r.stdout ?? '',
    stderr: (r.stderr ?? '') + (err && err.code !== 'ETIMEDOUT' ? `\n[spawn error: ${err.message}]` : ''),
    timedOut: err?.code === 'ETIMEDOUT',
    ms: Date.now() - t0,
  };
}

/** The same as run(), without blocking the event loop (lets subtests run side by side). */
export function runAsync(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const child = spawn(cmd, args, { cwd: opts.cwd, env: baseEnv(opts.env), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeout ?? DEFAULT_TIMEOUT);
    child.on('error', (e) => {
      clearTimeout(timer);
      resolve({ status: null, signal: null, stdout, stderr: `${stderr}\n[spawn error: ${e.message}]`, timedOut, ms: Date.now() - t0 });
    });
    child.on('close', (status, signal) => {
      clearTimeout(timer);
      resolve({ status, signal, stdout, stderr, timedOut, ms: Date.now() - t0 });
    });
  });
}

/** Whether a program can be run at all. */
export function hasProgram(cmd: string): boolean {
  const r = spawnSync(cmd, ['--version'], { encoding: 'utf8', timeout: 10_000 });
  return !r.error && r.status === 0;
}

/** qemu-img and qemu-io both present? If not, the reason. */
export function qemuToolsMissing(): string | undefined {
  const missing = ['qemu-img', 'qemu-io'].filter((c) => !hasProgram(c));
  return missing.length ? `${missing.join(' and ')} not found (apt-get install qemu-utils)` : undefined;
}

export function makeTempDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

/** Run a setup command; a failure here is a broken fixture, not a qimg bug. */
function must(cmd: string, args: readonly string[], cwd: string): RunResult {
  const r = run(cmd, args, { cwd });
  if (r.status !== 0) {
    throw new Error(`corpus: ${cmd} ${args.join(' ')} failed (status ${r.status}, signal ${r.signal}):\n${r.stderr}${r.stdout}`);
  }
  return r;
}

const K = 1024;
const M = 1024 * K;

/** The pattern most images get: data, explicit zero data, zero clusters, unaligned bits, the last sector. */
function standardWrites(size: number): string[] {
  const cmds = ['write -P 0xab 0 128k', 'write -P 0 256k 64k', 'write -P 0xcd 300k 3k'];
  if (size >= 2 * M) cmds.push('write -z 1M 64k', 'write -P 0x5a 1500k 100k');
  if (size >= 4 * M) cmds.push('write -P 0x3c 3M 200k');
  cmds.push(`write -P 0xee ${size - 512} 512`);
  return cmds;
}

/** A small deterministic pseudo-random buffer (incompressible data for the compression cases). */
function noise(len: number, seed: number): Buffer {
  const b = Buffer.alloc(len);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < len; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

function writeAt(path: string, data: Buffer, offset: number): void {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, data, 0, data.length, offset);
  } finally {
    closeSync(fd);
  }
}

export interface CorpusOptions {
  /** Include the 4 TiB sparse image (default true). */
  huge?: boolean;
}

/**
 * Builds the corpus in `dir` (which must exist and be empty) and returns the
 * images to test. Throws if a reference tool refuses a fixture command.
 */
export function buildCorpus(dir: string, opts: CorpusOptions = {}): CorpusImage[] {
  const images: CorpusImage[] = [];
  const img = (cmdArgs: string[]): RunResult => must('qemu-img', cmdArgs, dir);
  const io = (file: string, fmt: CorpusFormat, cmds: string[]): void => {
    if (cmds.length === 0) return;
    must('qemu-io', ['-f', fmt, ...cmds.flatMap((c) => ['-c', c]), file], dir);
  };
  const add = (name: string, file: string, format: CorpusFormat, notes: string, extra: Partial<CorpusImage> = {}): void => {
    images.push({ name, path: join(dir, file), format, notes, ...extra });
  };
  const qcow2 = (file: string, size: number | string, o: string[] = [], backing?: [string, CorpusFormat]): void => {
    const args = ['create', '-q', '-f', 'qcow2'];
    if (o.length) args.push('-o', o.join(','));
    if (backing) args.push('-b', backing[0], '-F', backing[1]);
    args.push(file);
    if (size !== '') args.push(String(size));
    img(args);
  };

  // --- qcow2 v3 cluster sizes -------------------------------------------------
  for (const cs of ['512', '1K', '4K', '64K', '1M', '2M']) {
    const f = `v3-cluster-${cs}.qcow2`;
    qcow2(f, 4 * M, [`cluster_size=${cs}`]);
    io(f, 'qcow2', [...standardWrites(4 * M), 'discard 3M 64k']);
    add(`qcow2 v3 cluster_size=${cs}`, f, 'qcow2', 'standard patterns, write -z, discard');
  }

  // --- qcow2 v2 (compat=0.10) ---------------------------------------------------
  for (const cs of ['512', '64K']) {
    const f = `v2-cluster-${cs}.qcow2`;
    qcow2(f, 4 * M, ['compat=0.10', `cluster_size=${cs}`]);
    io(f, 'qcow2', standardWrites(4 * M));
    add(`qcow2 v2 cluster_size=${cs}`, f, 'qcow2', 'compat=0.10: write -z becomes a discard / real zeros');
  }

  // --- refcount widths ------------------------------------------------------------
  for (const bits of [1, 2, 4, 8, 16, 32, 64]) {
    const f = `refcount-${bits}.qcow2`;
    qcow2(f, 2 * M, [`refcount_bits=${bits}`, 'cluster_size=4K']);
    io(f, 'qcow2', standardWrites(2 * M));
    add(`qcow2 refcount_bits=${bits}`, f, 'qcow2', '4K clusters');
  }

  // --- lazy refcounts, left dirty by qemu-io's abort ------------------------------
  {
    const f = 'lazy-dirty.qcow2';
    qcow2(f, 2 * M, ['lazy_refcounts=on']);
    io(f, 'qcow2', standardWrites(2 * M));
    const r = run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 1 0 64k', '-c', 'write -P 2 512k 64k', '-c', 'abort', f], { cwd: dir });
    if (r.status === 0) throw new Error('corpus: qemu-io abort exited 0');
    const info = JSON.parse(img(['info', '--output=json', f]).stdout) as { 'dirty-flag'?: boolean };
    if (info['dirty-flag'] !== true) throw new Error('corpus: lazy-dirty.qcow2 is not dirty after qemu-io abort');
    rmSync(join(dir, 'core'), { force: true });
    add('qcow2 lazy_refcounts=on dirty', f, 'qcow2', 'dirty bit set (qemu-io abort), refcounts stale');
  }

  // --- compressed clusters ----------------------------------------------------------
  {
    const src = 'compress-src.raw';
    img(['create', '-q', '-f', 'raw', src, String(4 * M)]);
    io(src, 'raw', [...standardWrites(4 * M), 'write -P 0x61 2M 64k', 'write -P 0x62 2112k 7k']);
    writeAt(join(dir, src), noise(96 * K, 7), 2560 * K); // incompressible: stored uncompressed
    for (const [ct, cs] of [['zlib', '64K'], ['zstd', '64K'], ['zlib', '4K'], ['zstd', '2M']] as const) {
      const f = `convert-c-${ct}-${cs}.qcow2`;
      img(['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', `compression_type=${ct},cluster_size=${cs}`, src, f]);
      add(`qcow2 convert -c ${ct} cluster_size=${cs}`, f, 'qcow2', 'qemu-img convert -c from patterned raw (+ incompressible run)');
    }
    for (const ct of ['zlib', 'zstd']) {
      const f = `write-c-${ct}.qcow2`;
      qcow2(f, 2 * M, [`compression_type=${ct}`]);
      io(f, 'qcow2', [
        'write -c -P 0x77 0 64k',
        'write -c -P 0x78 128k 128k',
        'write -c -P 0 512k 64k',
        'write -P 0x79 160k 4k', // partial overwrite of a compressed cluster
        'write -z 192k 64k', // zero over compressed
        `write -c -P 0x7a ${2 * M - 64 * K} 64k`,
      ]);
      add(`qcow2 write -c ${ct}`, f, 'qcow2', 'qemu-io write -c, COW of a compressed cluster, zeroed compressed cluster');
    }
  }

  // --- extended L2 (subclusters) ----------------------------------------------------
  {
    const f = 'extl2-64K.qcow2';
    qcow2(f, 4 * M, ['extended_l2=on', 'cluster_size=64K']);
    io(f, 'qcow2', [
      'write -P 0x11 4k 2k',
      'write -P 0x12 70k 5k',
      'write -P 0x13 128k 64k',
      'write -z 130k 4k',
      'write -z 1M 64k',
      'write -P 0x14 2M 128k',
      'discard 2M 64k',
      'write -z -u 2112k 2k',
      'write -P 0xee 4193792 512',
    ]);
    add('qcow2 extended_l2 cluster_size=64K', f, 'qcow2', '2K subclusters: partial writes, write -z of subclusters, discard');
  }
  {
    const f = 'extl2-2M.qcow2';
    qcow2(f, 6 * M, ['extended_l2=on', 'cluster_size=2M']);
    io(f, 'qcow2', [
      'write -P 0x21 64k 64k',
      'write -P 0x22 200k 10k',
      'write -z 128k 64k',
      'write -P 0x23 2M 2M',
      'write -z 2304k 128k',
      'discard 4M 2M',
      'write -P 0x24 5M 64k',
    ]);
    add('qcow2 extended_l2 cluster_size=2M', f, 'qcow2', '64K subclusters: partial writes, write -z of subclusters, discard');
  }

  // --- backing chains ------------------------------------------------------------------
  {
    img(['create', '-q', '-f', 'raw', 'chain-base.raw', String(4 * M)]);
    io('chain-base.raw', 'raw', ['write -P 0x10 0 1M', 'write -P 0x11 2M 512k', 'write -P 0x12 4032k 64k']);
    add('raw base', 'chain-base.raw', 'raw', 'raw file with holes (the bottom of a chain)');

    qcow2('chain-mid.qcow2', '', [], ['chain-base.raw', 'raw']);
    io('chain-mid.qcow2', 'qcow2', ['write -P 0x20 256k 64k', 'write -P 0x21 700k 10k', 'write -z 2M 64k', 'write -P 0x22 3M 64k']);
    add('qcow2 <- raw', 'chain-mid.qcow2', 'qcow2', 'overlay over raw, partly overwriting; write -z over backed data');

    qcow2('chain-top.qcow2', '', ['cluster_size=4K'], ['chain-mid.qcow2', 'qcow2']);
    io('chain-top.qcow2', 'qcow2', ['write -P 0x30 0 8k', 'write -P 0x31 260k 1k', 'discard 2112k 64k', 'write -z 3M 4k']);
    add('qcow2 <- qcow2 <- raw', 'chain-top.qcow2', 'qcow2', 'three-level chain; discard over backed data (zero clusters)');

    qcow2('chain-v2.qcow2', '', ['compat=0.10'], ['chain-base.raw', 'raw']);
    io('chain-v2.qcow2', 'qcow2', ['write -P 0x40 128k 64k', 'write -P 0x41 2100k 1k']);
    add('qcow2 v2 <- raw', 'chain-v2.qcow2', 'qcow2', 'compat=0.10 overlay');

    qcow2('short-base.qcow2', 1 * M);
    io('short-base.qcow2', 'qcow2', ['write -P 0x50 0 1M']);
    qcow2('short-top.qcow2', 4 * M, [], ['short-base.qcow2', 'qcow2']);
    io('short-top.qcow2', 'qcow2', ['write -P 0x51 512k 64k', 'write -P 0x52 960k 128k', 'write -P 0x53 3M 64k']);
    add('qcow2 <- shorter qcow2', 'short-top.qcow2', 'qcow2', 'backing file (1M) shorter than the overlay (4M)');

    qcow2('extl2-backed.qcow2', '', ['extended_l2=on'], ['chain-base.raw', 'raw']);
    io('extl2-backed.qcow2', 'qcow2', ['write -P 0x60 4k 2k', 'write -P 0x61 66k 3k', 'write -z 2050k 2k', 'discard 3M 64k']);
    add('qcow2 extended_l2 <- raw', 'extl2-backed.qcow2', 'qcow2', 'subclusters unallocated in an allocated cluster read from backing');

    qcow2('qed-base.qcow2', 4 * M);
    io('qed-base.qcow2', 'qcow2', ['write -P 0x70 0 2M', 'write -P 0x71 3M 1M']);
    add('qcow2 (QED base)', 'qed-base.qcow2', 'qcow2', 'base of a QED overlay');
    img(['create', '-q', '-f', 'qed', '-b', 'qed-base.qcow2', '-F', 'qcow2', 'qed-over-qcow2.qed']);
    io('qed-over-qcow2.qed', 'qed', ['write -P 0x72 64k 64k', 'write -P 0x73 300k 5k', 'write -z 1M 64k', 'write -P 0x74 3200k 4k']);
    add('QED <- qcow2', 'qed-over-qcow2.qed', 'qed', 'QED overlay on qcow2, zero cluster over backed data');

    img(['create', '-q', '-f', 'qed', '-o', 'cluster_size=4K', '-b', 'chain-base.raw', '-F', 'raw', 'qed-over-raw.qed']);
    io('qed-over-raw.qed', 'qed', ['write -P 0x75 0 4k', 'write -P 0x76 10k 1k', 'write -z 2M 8k']);
    add('QED <- raw', 'qed-over-raw.qed', 'qed', 'QED overlay on raw (backing format stored as no-probe)');
  }

  // --- external data file ----------------------------------------------------------------
  for (const rawData of ['on', 'off']) {
    const f = `datafile-raw-${rawData}.qcow2`;
    qcow2(f, 2 * M, [`data_file=datafile-raw-${rawData}.data`, `data_file_raw=${rawData}`]);
    io(f, 'qcow2', standardWrites(2 * M));
    add(`qcow2 data_file data_file_raw=${rawData}`, f, 'qcow2', 'external data file');
  }

  // --- internal snapshots ---------------------------------------------------------------
  {
    const f = 'snapshots.qcow2';
    qcow2(f, 2 * M);
    io(f, 'qcow2', ['write -P 0x80 0 256k', 'write -P 0x81 1M 64k']);
    img(['snapshot', '-c', 's1', f]);
    io(f, 'qcow2', ['write -P 0x82 64k 64k', 'discard 1M 64k', 'write -P 0x83 1500k 4k']);
    img(['snapshot', '-c', 's2', f]);
    io(f, 'qcow2', ['write -P 0x84 0 4k']);
    add('qcow2 internal snapshots', f, 'qcow2', 'two snapshots, writes after each (shared clusters, refcount > 1)');

    const g = 'snapshots-v2.qcow2';
    qcow2(g, 2 * M, ['compat=0.10']);
    io(g, 'qcow2', ['write -P 0x85 0 128k']);
    img(['snapshot', '-c', 's1', g]);
    io(g, 'qcow2', ['write -P 0x86 64k 4k']);
    add('qcow2 v2 internal snapshot', g, 'qcow2', 'compat=0.10 snapshot table (no extra data)');
  }

  // --- persistent bitmaps -------------------------------------------------------------------
  {
    const f = 'bitmaps.qcow2';
    qcow2(f, 2 * M);
    img(['bitmap', '--add', f, 'b0']);
    io(f, 'qcow2', ['write -P 0x90 0 64k', 'write -P 0x91 1M 4k']);
    img(['bitmap', '--add', '-g', '4K', f, 'b1']);
    img(['bitmap', '--disable', f, 'b1']);
    add('qcow2 persistent bitmaps', f, 'qcow2', 'b0 (auto) and b1 (disabled, 4K granularity)');
  }

  // --- preallocation ------------------------------------------------------------------------
  for (const p of ['metadata', 'falloc', 'full']) {
    const f = `prealloc-${p}.qcow2`;
    qcow2(f, 2 * M, [`preallocation=${p}`]);
    io(f, 'qcow2', ['write -P 0xa0 64k 64k', 'write -P 0xa1 1000k 3k']);
    add(`qcow2 preallocation=${p}`, f, 'qcow2', 'preallocated clusters');
  }

  // --- odd virtual size ----------------------------------------------------------------------
  {
    const f = 'odd-size.qcow2';
    qcow2(f, 1000000); // qemu rounds up to 1000448
    io(f, 'qcow2', ['write -P 0xb0 0 4k', 'write -P 0xb1 999936 512', 'write -P 0xb2 950000 30000']);
    add('qcow2 size 1000000', f, 'qcow2', 'virtual size not a multiple of the cluster size (rounded up to 512 by qemu)');
    const g = 'odd-size.qed';
    img(['create', '-q', '-f', 'qed', g, '1000000']);
    io(g, 'qed', ['write -P 0xb3 0 4k', 'write -P 0xb4 999936 512']);
    add('QED size 1000000', g, 'qed', 'virtual size not a multiple of the cluster size');
  }

  // --- QED matrix ------------------------------------------------------------------------------
  // table_size=1 is valid per the QED spec, but QEMU (7.2 and later) refuses
  // every such image, even the one it has just created ("QED table offset is
  // invalid": qed_check_table_offset treats end == start as an overflow), so
  // there is no oracle for it; 2 is the smallest table QEMU can read.
  for (const cs of ['4K', '64K', '1M']) {
    for (const ts of [2, 4, 16]) {
      const f = `qed-${cs}-t${ts}.qed`;
      img(['create', '-q', '-f', 'qed', '-o', `cluster_size=${cs},table_size=${ts}`, f, String(4 * M)]);
      io(f, 'qed', [...standardWrites(4 * M), 'write -z 2M 1M']);
      add(`QED cluster_size=${cs} table_size=${ts}`, f, 'qed', 'standard patterns, zero clusters');
    }
  }

  // --- plain raw --------------------------------------------------------------------------------
  {
    const f = 'plain.raw';
    img(['create', '-q', '-f', 'raw', f, String(4 * M)]);
    io(f, 'raw', standardWrites(4 * M));
    add('raw', f, 'raw', 'raw with patterns and holes');
  }

  // --- 4 TiB sparse --------------------------------------------------------------------------------
  if (opts.huge ?? true) {
    const f = 'huge-4T.qcow2';
    qcow2(f, '4T');
    io(f, 'qcow2', ['write -P 9 4095G 64k']);
    add('qcow2 4 TiB sparse', f, 'qcow2', 'data 1 GiB before the end of a 4 TiB image', { huge: true });
  }

  return images;
}

/** Bytes the file really occupies on the host. */
export function allocatedBytes(path: string): number {
  return statSync(path).blocks * 512;
}

// --- shared by the interop tests ----------------------------------------------------------

/** Run `qimg ARGS`: the CLI compiled from the current sources (see cli.ts), under this node. */
export function qimg(args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const [cmd, argv] = qimgCommand(args);
  return runAsync(cmd, argv, opts);
}

/** Parse a tool's JSON stdout, failing with the tool's own output when it is not JSON. */
export function parseJson(r: RunResult, what: string): unknown {
  try {
    return JSON.parse(r.stdout);
  } catch {
    throw new Error(`${what}: stdout is not JSON (status ${r.status}, signal ${r.signal}${r.timedOut ? ', timed out' : ''})\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  }
}

/** A one-paragraph description of a finished run, for assertion messages. */
export function describe(r: RunResult): string {
  return `status ${r.status}, signal ${r.signal}${r.timedOut ? ', TIMED OUT' : ''}, ${r.ms} ms\n--- stdout ---\n${r.stdout}--- stderr ---\n${r.stderr}`;
}

export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}
