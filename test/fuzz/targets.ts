/**
 * What the fuzzer does with one mutated image, in process and in memory:
 * open (probed and named), info, reads, map, check (report only and
 * repairing a copy), convert to a null target, and writes to a copy. Each
 * target either succeeds or throws an ImageError; anything else is a
 * finding. A sample also goes through the built CLI.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import '../../src/formats/index.js';
import type { ImageFormat } from '../../src/block/driver.js';
import type { Image } from '../../src/block/image.js';
import { openImage, type Host } from '../../src/block/open.js';
import { ImageError } from '../../src/errors.js';
import { nodeCodecs } from '../../src/io/codecs.js';
import { MemoryStorage } from '../../src/io/memory.js';
import { checkQcow2File as checkImage, checkQcow2 } from '../../src/formats/qcow2/check.js';
import type { QedDriver } from '../../src/formats/qed/qed.js';
import { convertImages, ConvertError, type ConvertTarget } from '../../src/ops/convert.js';
import { mapImage } from '../../src/ops/map.js';
import { qimgCommand } from '../helpers/cli.js';
import type { CryptoProvider } from '../../src/crypto/provider.js';
import { nodeCrypto } from '../../src/io/crypto.js';
import { FUZZ_PASSPHRASE } from './luks-seed.js';
import { Rng } from './mutate.js';
import type { SeedFormat } from './seeds.js';

/** A mutated image with the files it may name. */
export interface FuzzCase {
  /** The name the image is opened by. */
  file: string;
  format: SeedFormat;
  bytes: Uint8Array;
  sidecars: Record<string, Uint8Array>;
  /** Drives the targets' own random choices (read windows, write offsets). */
  caseSeed: number;
}

export const TARGET_NAMES = ['open-probe', 'open-named', 'info', 'read', 'map', 'check', 'check-fix', 'convert', 'write'] as const;
export type TargetName = (typeof TARGET_NAMES)[number];

/** Guest bytes read per case at most; beyond this, random windows. */
const READ_BUDGET = 16 * 1024 * 1024;
/** Convert only images this small (larger ones would only measure copying speed). */
const CONVERT_LIMIT = 64 * 1024 * 1024;
const MAP_ENTRY_LIMIT = 100_000;

/** Largest file the in-memory host lets an image grow to. */
export const MEMORY_FILE_LIMIT = 64 * 1024 * 1024;

/**
 * Memory storage that cannot grow past a limit, like a full disk: where
 * qemu (and qimg on a host file) would make a large sparse file, memory
 * would have to hold every byte. Failing with ENOSPC keeps the fuzzer about
 * the image code, not about how much RAM a test machine has.
 */
export class CappedMemoryStorage extends MemoryStorage {
  constructor(
    initial: Uint8Array,
    opts: { name?: string; writable?: boolean },
    private readonly limit = MEMORY_FILE_LIMIT,
  ) {
    super(initial, opts);
  }
  /** Growing past the limit fails; a file already larger may be rewritten in place. */
  private async room(end: number): Promise<void> {
    if (end > Math.max(this.limit, await this.size())) throw new ImageError('io', 'No space left on device');
  }
  override async write(data: Uint8Array, offset: number): Promise<void> {
    await this.room(offset + data.length);
    return super.write(data, offset);
  }
  override async writeZeroes(offset: number, length: number): Promise<void> {
    await this.room(offset + length);
    return super.writeZeroes(offset, length);
  }
  override async truncate(size: number): Promise<void> {
    await this.room(size);
    return super.truncate(size);
  }
}

/** A Host over in-memory files: every open gets its own copy, so writes never leak between targets. */
export function memoryHost(files: ReadonlyMap<string, Uint8Array>, opened?: (path: string, s: MemoryStorage) => void): Host {
  return {
    async openStorage(path, { writable }) {
      const bytes = files.get(path);
      if (!bytes) throw new ImageError('not-found', `Could not open '${path}': No such file or directory`);
      const s = new CappedMemoryStorage(bytes, { name: path, writable });
      opened?.(path, s);
      return s;
    },
    resolve: (_imagePath, name) => name,
    identity: async (path) => path,
    codecs: nodeCodecs,
    crypto: fuzzCrypto,
  };
}

/**
 * The most PBKDF2 iterations one derivation may take in fuzzing. The
 * library's own cap (MAX_PBKDF2_ITERATIONS, about a minute of work) is
 * checked at parse time and still applies; below it, a mutated count would
 * make a case run past its time budget, so fuzzing refuses more than this
 * (about 30 ms) with the same kind of error.
 */
export const FUZZ_MAX_PBKDF2_ITERATIONS = 20_000;

const fuzzCrypto: CryptoProvider = {
  ...nodeCrypto,
  pbkdf2: (hash, password, salt, iterations, keyLength) => {
    if (iterations > FUZZ_MAX_PBKDF2_ITERATIONS) {
      return Promise.reject(new ImageError('unsupported', `PBKDF2 iteration count ${iterations} is larger than the fuzzing limit of ${FUZZ_MAX_PBKDF2_ITERATIONS}`));
    }
    return nodeCrypto.pbkdf2(hash, password, salt, iterations, keyLength);
  },
};

function filesOf(c: FuzzCase): Map<string, Uint8Array> {
  const m = new Map<string, Uint8Array>(Object.entries(c.sidecars));
  m.set(c.file, c.bytes);
  return m;
}

async function withImage<T>(c: FuzzCase, opts: { format?: ImageFormat; writable?: boolean; metadataOnly?: boolean }, f: (img: Image) => Promise<T>): Promise<T> {
  const img = await openImage(c.file, { host: memoryHost(filesOf(c)), format: opts.format, writable: opts.writable, metadataOnly: opts.metadataOnly, passphrase: FUZZ_PASSPHRASE });
  try {
    return await f(img);
  } finally {
    await img.close();
  }
}

/** An invariant the library broke (not an exception type, but just as much a bug). */
export class InvariantError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'InvariantError';
  }
}

const nullTarget = (size: number): ConvertTarget => {
  const inRange = (offset: number, length: number): void => {
    if (!Number.isSafeInteger(offset) || offset < 0 || length < 0 || offset + length > size) {
      throw new InvariantError(`convert wrote outside the target: offset ${offset}, length ${length}, size ${size}`);
    }
  };
  return {
    write: async (offset, data) => inRange(offset, data.length),
    writeZeroes: async (offset, length) => inRange(offset, length),
    flush: async () => {},
    close: async () => {},
  };
};

async function readWhole(img: Image, rng: Rng): Promise<void> {
  const size = img.size;
  const bound = Math.min(size, READ_BUDGET);
  let pos = 0;
  while (pos < bound) {
    const n = Math.min(bound - pos, rng.pick([4096, 65536, 65536 + 512, 1 << 20]));
    await img.read(pos, new Uint8Array(n));
    pos += n;
  }
  // Unaligned reads, and windows of an image too large to read whole.
  for (let i = 0; i < 4 && size > 0; i++) {
    const off = i < 2 ? rng.int(Math.min(size, READ_BUDGET)) : Math.floor(rng.next() * size);
    const n = Math.min(size - off, rng.range(1, 70_000));
    if (n > 0) await img.read(off, new Uint8Array(n));
  }
}

async function writeSome(img: Image, rng: Rng): Promise<void> {
  const size = Math.min(img.size, 64 * 1024 * 1024);
  if (size === 0) return;
  const cs = (await img.info())['cluster-size'] ?? 65536;
  for (let i = 0; i < 3; i++) {
    const k = rng.int(4);
    const off = rng.bool(0.5) ? rng.int(size) : Math.floor(rng.int(Math.ceil(size / cs))) * cs;
    const len = Math.max(1, Math.min(size - off, rng.pick([1, 512, 4096, cs, cs + 512, 3 * cs, 200_000])));
    if (off >= size) continue;
    if (k === 0) await img.write(off, new Uint8Array(len).fill(0x5a));
    else if (k === 1) await img.writeZeroes(off, len, { mayUnmap: rng.bool() });
    else if (k === 2) await img.discard(off, len);
    else if (img.format === 'qcow2' && size >= cs) {
      // A valid compressed write: one whole cluster (or the image's tail).
      const coff = Math.floor(rng.int(Math.floor(size / cs))) * cs;
      await img.write(coff, new Uint8Array(Math.min(cs, size - coff)).fill(0xa5), { compressed: true });
    }
  }
  await img.flush();
}

type Target = (c: FuzzCase) => Promise<void>;

export const TARGETS: Record<TargetName, Target> = {
  'open-probe': (c) => withImage(c, {}, async () => {}),
  'open-named': (c) => withImage(c, { format: c.format }, async () => {}),
  info: (c) =>
    withImage(c, { metadataOnly: true }, async (img) => {
      await img.info();
    }),
  read: (c) => withImage(c, { format: c.format }, (img) => readWhole(img, new Rng(c.caseSeed))),
  map: (c) =>
    withImage(c, { format: c.format }, async (img) => {
      let n = 0;
      let end = 0;
      for await (const e of mapImage(img)) {
        if (e.start !== end) throw new InvariantError(`map entry starts at ${e.start}, expected ${end}`);
        end = e.start + e.length;
        if (++n >= MAP_ENTRY_LIMIT) return;
      }
      if (end !== img.size) throw new InvariantError(`map ends at ${end}, image size ${img.size}`);
    }),
  check: async (c) => {
    if (c.format === 'qcow2') {
      const storage = new MemoryStorage(c.bytes, { name: c.file, writable: false });
      await checkQcow2(storage, { fix: 'none' });
      const after = storage.bytes();
      if (Buffer.compare(Buffer.from(after), Buffer.from(c.bytes)) !== 0) throw new InvariantError('check without repair changed the image');
    } else if (c.format === 'qed') {
      await withImage(c, { format: 'qed' }, async (img) => {
        await (img.driver as QedDriver).check({ fix: false });
      });
    }
  },
  'check-fix': async (c) => {
    if (c.format === 'qcow2') await checkImage(new CappedMemoryStorage(c.bytes, { name: c.file }), 'all');
    else if (c.format === 'qed') {
      await withImage(c, { format: 'qed', writable: true }, async (img) => {
        await (img.driver as QedDriver).check({ fix: true });
      });
    }
  },
  convert: (c) =>
    withImage(c, { format: c.format }, async (img) => {
      if (img.size > CONVERT_LIMIT) return;
      const rng = new Rng(c.caseSeed ^ 0x5bd1e995);
      await convertImages([img], nullTarget(img.size), { sparseSize: rng.pick([0, 512, 4096]), targetIsZero: rng.bool(0.7) });
    }),
  write: async (c) => {
    // A consistent image stays consistent: qemu's writes never leave corruptions behind.
    const before = await consistency(c.format, c.bytes, c);
    let written: MemoryStorage | undefined;
    const host = memoryHost(filesOf(c), (path, s) => {
      if (path === c.file && s.writable) written = s;
    });
    const img = await openImage(c.file, { host, format: c.format, writable: true, passphrase: FUZZ_PASSPHRASE });
    try {
      await writeSome(img, new Rng(c.caseSeed ^ 0x1b873593));
    } finally {
      await img.close();
    }
    if (before === 0 && written) {
      const after = await consistency(c.format, written.bytes(), c);
      if (after !== 0) throw new InvariantError(`writes left ${after === -1 ? 'an image check cannot read' : `${after} corruptions`} in an image check called consistent`);
    }
  },
};

/**
 * Corruptions (and check errors) the report-only check finds: 0 is a
 * consistent image, -1 one the check cannot read, undefined no opinion
 * (raw, or qcow2 features whose refcounts may legally lag).
 */
async function consistency(format: SeedFormat, bytes: Uint8Array, c: FuzzCase): Promise<number | undefined> {
  try {
    if (format === 'qcow2') {
      // Lazy refcounts may legally lag behind the tables until the next repair.
      if (bytes[7] === 3 && ((bytes[87] ?? 0) & 1) !== 0) return undefined;
      const r = await checkQcow2(new MemoryStorage(bytes, { writable: false }), { fix: 'none' });
      if (r.failed !== undefined) return -1;
      return r.corruptions + r.checkErrors;
    }
    if (format === 'qed') {
      return await withImage({ ...c, bytes }, { format: 'qed' }, async (img) => {
        const r = await (img.driver as QedDriver).check({ fix: false });
        return r.corruptions + r.checkErrors;
      });
    }
  } catch {
    return -1;
  }
  return undefined;
}

/** How a target ended: `finding` is set when the ending is a bug. */
export interface TargetResult {
  target: string;
  ms: number;
  error?: { name: string; code?: string; message: string; stack?: string };
  finding?: 'exception' | 'invariant' | 'hang' | 'memory' | 'cli';
}

/** ImageErrors are the contract; a convert failure wrapping one is too. 'bad-argument' means qimg asked itself for something impossible. */
export function isAcceptable(e: unknown): boolean {
  const inner = e instanceof ConvertError ? e.cause : e;
  return inner instanceof ImageError && inner.code !== 'bad-argument';
}

export function describeError(e: unknown): NonNullable<TargetResult['error']> {
  const inner = e instanceof ConvertError && e.cause instanceof Error ? e.cause : e;
  if (inner instanceof Error) {
    const out: NonNullable<TargetResult['error']> = { name: inner.name, message: inner.message.slice(0, 500), stack: inner.stack };
    if (inner instanceof ImageError) out.code = inner.code;
    return out;
  }
  return { name: typeof inner, message: String(inner).slice(0, 500) };
}

/** Run one target with a time limit. A target still running at the limit is a hang (the caller must discard this worker). */
export async function runTarget(name: TargetName, c: FuzzCase, timeoutMs: number): Promise<TargetResult> {
  const t0 = performance.now();
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'timeout'>((res) => {
    timer = setTimeout(() => res('timeout'), timeoutMs);
  });
  try {
    const r = await Promise.race([TARGETS[name](c).then(() => 'ok' as const), timeout]);
    const ms = performance.now() - t0;
    if (r === 'timeout') return { target: name, ms, finding: 'hang', error: { name: 'Timeout', message: `${name} did not finish within ${timeoutMs} ms` } };
    return { target: name, ms };
  } catch (e) {
    const ms = performance.now() - t0;
    if (isAcceptable(e)) return { target: name, ms, error: describeError(e) };
    return { target: name, ms, error: describeError(e), finding: e instanceof InvariantError ? 'invariant' : 'exception' };
  } finally {
    clearTimeout(timer);
  }
}

/** Where a finding comes from: its kind, target, error type and first frame in qimg's source. */
export function signature(r: TargetResult): string {
  const frame = r.error?.stack?.split('\n').find((l) => l.includes('/src/'))?.replace(/^.*\/src\//, 'src/').replace(/\)$/, '') ?? '';
  const msg = r.finding === 'hang' || r.finding === 'memory' ? '' : (r.error?.message ?? '').replace(/\d+/g, 'N').slice(0, 80);
  return `${r.finding}:${r.target}:${r.error?.name ?? ''}:${frame.replace(/:\d+$/, '')}:${msg}`;
}

// --- the CLI ---


/** Messages that mean a JavaScript failure escaped as text. */
const INTERNAL = /Cannot read properties|is not a function|is not iterable|undefined|Invalid array length|Array buffer allocation failed|Maximum call stack|out of memory|RangeError|TypeError|ReferenceError|Invalid typed array length|Offset is outside the bounds|ERR_[A-Z_]+/;

let cliCommands: Set<string> | undefined;
/** The subcommands the built CLI has (check may not exist yet). */
export function cliHas(cmd: string): boolean {
  if (!cliCommands) {
    const r = spawnSync(...qimgCommand(['--help']), { encoding: 'utf8' });
    cliCommands = new Set((r.stdout ?? '').split('\n').map((l) => l.trim().split(' ')[0] ?? ''));
  }
  return cliCommands.has(cmd);
}

/** Run the CLI over the case on disk; one result per command. */
export function runCli(c: FuzzCase, timeoutMs: number, convert: boolean): TargetResult[] {
  const dir = mkdtempSync(join(tmpdir(), 'qimg-fuzz-cli-'));
  const results: TargetResult[] = [];
  try {
    writeFileSync(join(dir, c.file), c.bytes);
    for (const [name, bytes] of Object.entries(c.sidecars)) writeFileSync(join(dir, name), bytes);
    const cmds: string[][] = [
      ['info', c.file],
      ['info', '--output=json', '-f', c.format, c.file],
      ['map', '--output=json', c.file],
    ];
    if (convert) cmds.push(['convert', '-O', 'raw', c.file, 'out.raw']);
    if (cliHas('check') && c.format !== 'raw') cmds.push(['check', c.file], ['check', '-r', 'all', c.file]);
    for (const args of cmds) {
      const t0 = performance.now();
      const r = spawnSync(...qimgCommand(args), { cwd: dir, encoding: 'utf8', timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 64 * 1024 * 1024, env: { ...process.env, LC_ALL: 'C', QIMG_DEBUG: '' } });
      const ms = performance.now() - t0;
      const target = `cli ${args.join(' ')}`;
      const stderr = r.stderr ?? '';
      const problems: string[] = [];
      if (r.error && (r.error as NodeJS.ErrnoException).code === 'ETIMEDOUT') problems.push(`timed out after ${timeoutMs} ms`);
      else if (r.signal) problems.push(`killed by ${r.signal}`);
      // qemu-img check exits 63 for a format without checks (a mutated magic probes as raw).
      else if (r.status === null || !(r.status <= 3 || (args[0] === 'check' && r.status === 63))) problems.push(`exit code ${r.status}`);
      if (/^ {4}at /m.test(stderr)) problems.push('stack trace on stderr');
      const qimgLines = stderr.split('\n').filter((l) => l.startsWith('qimg: '));
      if (qimgLines.length > 2) problems.push(`${qimgLines.length} 'qimg: ' lines`);
      const internal = qimgLines.find((l) => INTERNAL.test(l));
      if (internal) problems.push(`internal error text: ${internal}`);
      if (problems.length > 0) {
        results.push({ target, ms, finding: 'cli', error: { name: 'CliFailure', message: `${problems.join('; ')}\nstderr: ${stderr.slice(0, 2000)}` } });
      } else results.push({ target, ms });
      // The repairing check changes the image: later commands see the repaired file, which is fine.
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return results;
}
