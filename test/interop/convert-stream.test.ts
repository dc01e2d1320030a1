/**
 * qcow2 written as a stream: `qimg convert -O qcow2 [-c] SRC - | cat > out`
 * (really through a pipe, which cannot seek) and convertToStream into a
 * file both give images that `qemu-img check` finds clean and `qemu-img
 * compare` finds identical to the source, for raw, flattened qcow2 chains
 * and QED sources, compressed or not, across cluster sizes and versions.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import '../../src/formats/index.js';
import { nodeCodecs, openImageFile } from '../../src/node.js';
import { convertToStream, type StreamConvertOptions } from '../../src/ops/convert-stream.js';
import { qimgMain } from '../helpers/cli.js';
import { qemuImg, qemuIo, requireTools, tmpDir } from '../helpers/tools.js';

const K = 1024;
const M = 1024 * K;

/** Deterministic bytes that do not compress. */
function noise(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

const text = (n: number): Uint8Array => new TextEncoder().encode('qcow2 streamed, cluster after cluster. '.repeat(Math.ceil(n / 39))).subarray(0, n);

/**
 * A raw file of mixed content whose size is not a multiple of any cluster
 * size: noise, compressible text, zeros written as data, holes, and a
 * sector of data alone in an otherwise empty cluster.
 */
function mixedRaw(path: string): void {
  const size = 6 * M + 3584;
  const b = new Uint8Array(size);
  b.set(noise(300 * K, 1), 0);
  b.set(text(700 * K), 300 * K);
  // 1M..2M: zeros (written as data below, so the raw file has an allocated zero run)
  b.set(noise(64 * K + 512, 2), 2 * M + 4 * K);
  b.set(text(512), 3 * M + 77 * 512);
  // 3.5M..5M: hole
  b.set(text(M), 5 * M);
  b.set(noise(3584, 3), 6 * M);
  writeFileSync(path, b);
  // Punch the hole back (writeFileSync wrote zeros as data).
  spawnSync('fallocate', ['-p', '-o', String(3.5 * M), '-l', String(1.5 * M), path]);
}

interface Source {
  name: string;
  path: string;
  format: string;
}

function makeSources(dir: string): Source[] {
  const raw = join(dir, 'mixed.raw');
  mixedRaw(raw);
  const base = join(dir, 'base.qcow2');
  const top = join(dir, 'top.qcow2');
  assert.equal(qemuImg(['convert', '-f', 'raw', '-O', 'qcow2', raw, base]).status, 0);
  assert.equal(qemuImg(['create', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]).status, 0);
  // The overlay changes data, zeroes some of the base's data, and writes into the base's holes.
  const io = qemuIo(['-f', 'qcow2', '-c', 'write -P 0x5a 100k 8k', '-c', 'write -z 320k 192k', '-c', 'write -P 0xa5 4M 64k', '-c', 'write -z 5M 4k', top]);
  assert.equal(io.status, 0, io.stderr);
  const qed = join(dir, 'src.qed');
  assert.equal(qemuImg(['convert', '-f', 'raw', '-O', 'qed', raw, qed]).status, 0);
  return [
    { name: 'raw', path: raw, format: 'raw' },
    { name: 'qcow2 chain', path: top, format: 'qcow2' },
    { name: 'qed', path: qed, format: 'qed' },
  ];
}

interface Variant {
  args: string[];
  opts: StreamConvertOptions;
  compressed: boolean;
}

function variants(): Variant[] {
  const list: Variant[] = [];
  for (const cs of [512, 64 * K, 2 * M]) {
    for (const c of ['none', 'zlib', 'zstd'] as const) {
      for (const version of [3, 2] as const) {
        if (version === 2 && (c === 'zstd' || cs === 2 * M)) continue;
        const o = [`cluster_size=${cs}`];
        if (version === 2) o.push('compat=0.10');
        if (c === 'zstd') o.push('compression_type=zstd');
        list.push({
          args: [...(c === 'none' ? [] : ['-c']), '-o', o.join(',')],
          opts: { clusterSize: cs, version, compress: c !== 'none', compressionType: c === 'zstd' ? 'zstd' : 'zlib' },
          compressed: c !== 'none',
        });
      }
    }
  }
  return list;
}

const sh = (script: string) => spawnSync('bash', ['-c', `set -o pipefail; ${script}`], { encoding: 'utf8' });
const quote = (s: string) => `'${s.replaceAll("'", "'\\''")}'`;

function checkClean(path: string): void {
  const r = qemuImg(['check', '--output=json', path]);
  assert.equal(r.status, 0, `${path}: ${r.stdout}${r.stderr}`);
  const j = JSON.parse(r.stdout) as { leaks?: number; corruptions?: number; 'check-errors': number };
  assert.equal(j.leaks ?? 0, 0);
  assert.equal(j.corruptions ?? 0, 0);
  assert.equal(j['check-errors'], 0);
}

function compareTo(src: Source, out: string): void {
  const r = qemuImg(['compare', '-f', src.format, '-F', 'qcow2', src.path, out]);
  assert.equal(r.status, 0, `${src.name} vs ${out}: ${r.stdout}${r.stderr}`);
}

const sha = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

async function libraryConvert(src: Source, out: string, opts: StreamConvertOptions): Promise<void> {
  const img = await openImageFile(src.path, { format: src.format as 'raw' });
  try {
    await pipeline(Readable.fromWeb(convertToStream([img], { codecs: nodeCodecs, ...opts }) as never), createWriteStream(out));
  } finally {
    await img.close();
  }
}

test('CLI through a pipe and the library give clean qcow2 images identical to the source', { timeout: 600_000 }, async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir('qimg-stream-');
  const sources = makeSources(dir);
  const main = qimgMain();
  let n = 0;
  for (const src of sources) {
    for (const v of variants()) {
      const what = `${src.name} ${v.args.join(' ')}`;
      const piped = join(dir, `p${n}.qcow2`);
      const lib = join(dir, `l${n++}.qcow2`);
      const r = sh(`${quote(process.execPath)} ${quote(main)} convert -f ${src.format} -O qcow2 ${v.args.map(quote).join(' ')} ${quote(src.path)} - | cat > ${quote(piped)}`);
      assert.equal(r.status, 0, `${what}: ${r.stderr}`);
      assert.equal(r.stderr, '', what);
      checkClean(piped);
      compareTo(src, piped);
      await libraryConvert(src, lib, v.opts);
      // Deterministic: the library's file is the CLI's pipe output, byte for byte.
      assert.equal(sha(lib), sha(piped), what);
      const info = JSON.parse(qemuImg(['info', '--output=json', piped]).stdout) as { 'cluster-size': number; format: string; 'format-specific': { data: { compat: string; 'compression-type'?: string } } };
      assert.equal(info['cluster-size'], v.opts.clusterSize, what);
      assert.equal(info['format-specific'].data.compat, v.opts.version === 2 ? '0.10' : '1.1', what);
      if (v.opts.version === 3) assert.equal(info['format-specific'].data['compression-type'], v.opts.compressionType, what);
      if (v.compressed) {
        const map = JSON.parse(qemuImg(['check', '--output=json', piped]).stdout) as { 'compressed-clusters'?: number };
        assert.ok((map['compressed-clusters'] ?? 0) > 0, `${what}: has compressed clusters`);
      }
    }
  }
});

test('only clusters holding non-zero bytes are allocated; -S 0 allocates every cluster', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir('qimg-stream-');
  const raw = join(dir, 'mixed.raw');
  mixedRaw(raw);
  const out = join(dir, 'o.qcow2');
  const main = qimgMain();
  const allocated = (path: string) =>
    (JSON.parse(qemuImg(['map', '--output=json', path]).stdout) as { length: number; data: boolean }[]).filter((e) => e.data).reduce((n, e) => n + e.length, 0);
  assert.equal(sh(`${quote(process.execPath)} ${quote(main)} convert -O qcow2 ${quote(raw)} - > ${quote(out)}`).status, 0);
  // What qemu-img convert allocates into a file is the reference.
  const ref = join(dir, 'ref.qcow2');
  assert.equal(qemuImg(['convert', '-f', 'raw', '-O', 'qcow2', raw, ref]).status, 0);
  assert.equal(allocated(out), allocated(ref));
  assert.equal(sh(`${quote(process.execPath)} ${quote(main)} convert -S 0 -O qcow2 ${quote(raw)} - | cat > ${quote(out)}`).status, 0);
  checkClean(out);
  assert.equal(allocated(out), statSync(raw).size);
});

test('refcount widths other than 16 bits, with compression', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir('qimg-stream-');
  const raw = join(dir, 'mixed.raw');
  mixedRaw(raw);
  const src: Source = { name: 'raw', path: raw, format: 'raw' };
  for (const bits of [1, 2, 8, 64]) {
    for (const cs of [512, 4096]) {
      const out = join(dir, `r${bits}-${cs}.qcow2`);
      await libraryConvert(src, out, { clusterSize: cs, refcountBits: bits, compress: true });
      checkClean(out);
      compareTo(src, out);
    }
  }
});

test('a small memory budget recompresses in the second pass and gives the same bytes', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir('qimg-stream-');
  const raw = join(dir, 'mixed.raw');
  mixedRaw(raw);
  const src: Source = { name: 'raw', path: raw, format: 'raw' };
  const a = join(dir, 'a.qcow2');
  const b = join(dir, 'b.qcow2');
  await libraryConvert(src, a, { compress: true, clusterSize: 4096 });
  await libraryConvert(src, b, { compress: true, clusterSize: 4096, memoryBudget: 10_000 });
  assert.equal(sha(a), sha(b));
  checkClean(b);
});

test('CLI refusals, progress on stderr, a closed pipe', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir('qimg-stream-');
  const raw = join(dir, 'mixed.raw');
  mixedRaw(raw);
  const q = `${quote(process.execPath)} ${quote(qimgMain())} convert`;
  for (const [args, msg] of [
    ['-O qcow2 -n', /-n cannot be used/],
    ['-O qcow2 -B base.qcow2 -F qcow2', /backing file/i],
    ['-O qcow2 -o preallocation=metadata', /Preallocation is not supported/],
    ['-O qcow2 -o extended_l2=on', /extended_l2 is not supported/],
    ['-O qcow2 -o data_file=x.raw', /data file is not supported/],
    ['-O qcow2 -o encrypt.format=luks', /Encryption is not supported/],
    ['-O qed', /Writing 'qed' to stdout is not supported/],
    ['-O raw -c', /Compression not supported/],
    ['-O qcow2 -o compat=0.10,compression_type=zstd -c', /compatibility level/],
  ] as const) {
    const r = sh(`${q} ${args} ${quote(raw)} - | cat > /dev/null`);
    assert.equal(r.status, 1, args);
    assert.match(r.stderr, msg, args);
    assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
    assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
  }
  // -p: the meter goes to stderr, the image to stdout intact.
  const out = join(dir, 'p.qcow2');
  const p = sh(`${q} -p -O qcow2 -c ${quote(raw)} - | cat > ${quote(out)}`);
  assert.equal(p.status, 0, p.stderr);
  assert.match(p.stderr, /\(100\.00\/100%\)/);
  checkClean(out);
  // raw to stdout: the guest bytes.
  const r = spawnSync('bash', ['-c', `${q} -O raw ${quote(raw)} - | cat`], { maxBuffer: 64 * M });
  assert.equal(r.status, 0);
  assert.deepEqual(new Uint8Array(r.stdout), new Uint8Array(readFileSync(raw)));
  // The reader goes away: exit 1 with one line, not a stack trace.
  const head = sh(`${q} -O qcow2 ${quote(raw)} - | head -c 1000 > /dev/null; echo "status=\${PIPESTATUS[0]}" >&2`);
  assert.match(head.stderr, /status=1/);
  assert.match(head.stderr, /qimg: error while writing to stdout: Broken pipe/);
});

test('peak memory of a 256 MiB compressed conversion into a pipe stays bounded', { timeout: 300_000 }, async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir('qimg-stream-');
  const raw = join(dir, 'big.raw');
  // Dense and compressible, with some noise: every cluster is allocated and compressed.
  const line = text(M);
  const fd = createWriteStream(raw);
  for (let i = 0; i < 256; i++) {
    const block = line.slice();
    if (i % 8 === 0) block.set(noise(64 * K, i + 1), 0);
    if (!fd.write(block)) await new Promise<void>((r) => fd.once('drain', () => r()));
  }
  await new Promise<void>((r) => fd.end(r));
  const out = join(dir, 'big.qcow2');
  const child = spawn(process.execPath, [qimgMain(), 'convert', '-c', '-f', 'raw', '-O', 'qcow2', raw, '-'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let peakKiB = 0;
  const poll = setInterval(() => {
    try {
      const m = /VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
      if (m) peakKiB = Math.max(peakKiB, Number(m[1]));
    } catch {
      // exited between polls
    }
  }, 10);
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((r) => child.on('exit', r));
  await pipeline(child.stdout, createWriteStream(out));
  const code = await exited;
  clearInterval(poll);
  assert.equal(code, 0, stderr);
  assert.ok(peakKiB > 0, 'peak RSS was observed');
  assert.ok(peakKiB < 200 * 1024, `peak RSS ${peakKiB} KiB`);
  checkClean(out);
  compareTo({ name: 'big', path: raw, format: 'raw' }, out);
});

test('several sources are concatenated, as convert does', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir('qimg-stream-');
  const sources = makeSources(dir);
  const out = join(dir, 'cat.qcow2');
  const expected = join(dir, 'cat.raw');
  const q = `${quote(process.execPath)} ${quote(qimgMain())} convert`;
  const paths = sources.map((s) => quote(s.path)).join(' ');
  // qemu-img concatenates the same sources into a file: the reference.
  assert.equal(qemuImg(['convert', '-O', 'raw', ...sources.map((s) => s.path), expected]).status, 0);
  const r = sh(`${q} -c -O qcow2 -o cluster_size=4096 ${paths} - | cat > ${quote(out)}`);
  assert.equal(r.status, 0, r.stderr);
  checkClean(out);
  compareTo({ name: 'concatenated', path: expected, format: 'raw' }, out);
});

test('tiny sources: empty, one sector, one cluster and a sector', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir('qimg-stream-');
  for (const size of [0, 512, 65536 + 512]) {
    const raw = join(dir, `t${size}.raw`);
    writeFileSync(raw, new Uint8Array(size).fill(0x3c));
    for (const compress of [false, true]) {
      const out = join(dir, `t${size}-${compress}.qcow2`);
      await libraryConvert({ name: 'tiny', path: raw, format: 'raw' }, out, { compress });
      checkClean(out);
      compareTo({ name: 'tiny', path: raw, format: 'raw' }, out);
    }
  }
});
