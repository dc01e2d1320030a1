/**
 * Every option the CLI accepts either does what qemu-img's does or is
 * refused: the refusals with qemu-img 7.2's exact text and exit code, the
 * implemented options through an effect one can observe.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { convertImages, type ConvertTarget } from '../../src/ops/convert.js';
import { bench } from '../../src/ops/bench.js';
import { writethroughTarget } from '../../src/ops/writethrough.js';
import { parseCacheMode } from '../../src/io/cache.js';
import type { Image } from '../../src/block/image.js';
import { asQemu, bytesImage, haveTools, qemuImg, qimg, tmpDir } from '../helpers/tools.js';
import { qimgSyncCalls } from '../helpers/strace.js';

const dir = tmpDir('qimg-ignored-');
const opts = { cwd: dir };
const unknown = (opt: string): string => `qimg: unrecognized option '${opt}'\nTry 'qimg --help' for more information\n`;

const random = (n: number, seed = 7): Uint8Array => {
  const b = new Uint8Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
};

writeFileSync(join(dir, 'a.raw'), random(4 << 20));
writeFileSync(join(dir, 'b.raw'), random(4 << 20, 3));
qimg(['create', '-q', '-f', 'qcow2', 'a.qcow2', '1M'], opts);

/** Runs qimg and, when qemu-img is installed, checks it answers the same. */
function refused(args: string[], stderr: string, status = 1): void {
  const r = qimg(args, opts);
  assert.equal(r.stderr, stderr, args.join(' '));
  assert.equal(r.status, status, args.join(' '));
  assert.equal(r.stdout, '');
  if (haveTools()) {
    const q = qemuImg(args, opts);
    assert.equal(q.stderr, asQemu(stderr), `qemu-img ${args.join(' ')}`);
  }
}

test('info refuses -t/--cache and --limits as unknown options, as qemu-img 7.2 does', () => {
  refused(['info', '-t', 'none', 'a.qcow2'], unknown('-t'));
  refused(['info', '--cache=none', 'a.qcow2'], unknown('--cache=none'));
  refused(['info', '--limits', 'a.qcow2'], unknown('--limits'));
});

test('convert refuses the combinations qemu-img refuses', () => {
  refused(['convert', '-C', '-c', '-O', 'qcow2', 'a.raw', 'o.qcow2'], 'qimg: Cannot enable copy offloading when -c is used\n');
  refused(['convert', '-C', '-S', '0', 'a.raw', 'o.raw'], 'qimg: Cannot enable copy offloading when -S is used\n');
  refused(['convert', '-C', '--salvage', 'a.raw', 'o.raw'], 'qimg: Cannot use copy offloading in salvaging mode\n');
  refused(['convert', '-n', '-o', 'size=1M', 'a.raw', 'o.raw'], 'qimg: -o has no effect when skipping image creation\n');
  refused(['convert', '--skip-broken-bitmaps', 'a.raw', 'o.raw'], 'qimg: Use of --skip-broken-bitmaps requires --bitmaps\n');
  refused(['convert', '-r', '1x', 'a.raw', 'o.raw'], 'qimg: Invalid rate limit specified. You may use k, M, G, T, P or E suffixes for\nqimg: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.\n');
});

test('convert --target-is-zero with a backing file is refused (qemu-img 7.2 prints the same, but exits 0)', () => {
  qimg(['create', '-q', '-f', 'qcow2', 't.qcow2', '1M'], opts);
  const r = qimg(['convert', '--target-is-zero', '-n', '-B', 'a.qcow2', '-F', 'qcow2', '-O', 'qcow2', 'a.qcow2', 't.qcow2'], opts);
  assert.equal(r.stderr, 'qimg: Cannot use --target-is-zero when the destination image has a backing file\n');
  assert.equal(r.status, 1);
});

test('bench refuses native AIO without O_DIRECT, a bad cache mode and a flush interval below the depth', () => {
  const native = "qimg: Could not open 'a.qcow2': aio=native was specified, but it requires cache.direct=on, which was not specified.\n";
  refused(['bench', '-c', '1', '-n', 'a.qcow2'], native);
  refused(['bench', '-c', '1', '-i', 'native', '-t', 'writethrough', 'a.qcow2'], native);
  refused(['bench', '-c', '1', '-t', 'bogus', 'a.qcow2'], 'qimg: Invalid cache mode\n');
  refused(['bench', '-w', '-c', '4', '-d', '2', '--flush-interval=1', 'a.qcow2'], "qimg: Flush interval can't be smaller than depth\n");
  const ok = qimg(['bench', '-c', '1', '-i', 'native', '-t', 'none', 'a.qcow2'], opts);
  assert.equal(ok.status, 0, ok.stderr);
});

test('-T/--trace: every pattern is reported as an event that does not exist', () => {
  const r = qimg(['-T', 'foo', '--trace', 'enable=bar', 'info', '--output=json', 'a.qcow2'], opts);
  assert.equal(r.status, 0);
  assert.equal(r.stderr, "qimg: warning: trace event 'foo' does not exist\nqimg: warning: trace event 'bar' does not exist\n");
  assert.match(r.stdout, /"format": "qcow2"/);
  writeFileSync(join(dir, 'events'), 'ev1\n# comment\n\n-ev2\n');
  const f = qimg(['-T', 'events=events', 'info', 'a.qcow2'], opts);
  assert.equal(f.stderr, "qimg:events:1: warning: trace event 'ev1' does not exist\nqimg:events:4: warning: trace event 'ev2' does not exist\n");
  const missing = qimg(['-T', 'events=nonexistent', 'info', 'a.qcow2'], opts);
  assert.deepEqual([missing.status, missing.stderr, missing.stdout], [1, 'qimg:nonexistent: No such file or directory\n', '']);
  // The event list is empty, and like qemu-img, -T help exits after printing it.
  const help = qimg(['-T', 'help', 'info', 'a.qcow2'], opts);
  assert.deepEqual([help.status, help.stdout, help.stderr], [0, '', '']);
  const bad = qimg(['-T', 'foo,bogus=1', 'info', 'a.qcow2'], opts);
  assert.deepEqual([bad.status, bad.stderr], [1, "qimg: Invalid parameter 'bogus'\n"]);
});

const syncCalls = (args: string[]): number | undefined => qimgSyncCalls(args, dir);

test('convert -t: unsafe never flushes, writeback flushes once, writethrough after every write', (t) => {
  const unsafe = syncCalls(['convert', '-f', 'raw', '-t', 'unsafe', 'a.raw', 'o.raw']);
  if (unsafe === undefined) {
    if (process.env.CI) throw new Error('strace is required when CI is set (apt-get install strace)');
    return t.skip('strace cannot trace here');
  }
  const writeback = syncCalls(['convert', '-f', 'raw', '-t', 'writeback', 'a.raw', 'o.raw'])!;
  const writethrough = syncCalls(['convert', '-f', 'raw', '-t', 'writethrough', 'a.raw', 'o.raw'])!;
  const directsync = syncCalls(['convert', '-f', 'raw', '-t', 'directsync', '-O', 'qcow2', 'a.raw', 'o.qcow2'])!;
  assert.equal(unsafe, 0);
  assert.equal(writeback, 1);
  // 4 MiB of data goes out in two 2 MiB writes, each flushed; the final flush then finds
  // nothing unsynced (the file storage skips a sync with no write since the last one).
  assert.ok(writethrough >= 2 && writethrough > writeback, `writethrough: ${writethrough} flushes`);
  assert.ok(directsync >= 2 && directsync > writeback, `directsync: ${directsync} flushes`);
});

test('check -T unsafe drops the flushes of a repair', (t) => {
  // A crash with lazy refcounts leaves work for the repair, so it has writes to flush.
  qimg(['create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', 'c0.qcow2', '1M'], opts);
  qimg(['io', '-c', 'write 0 64k', '-c', 'abort', 'c0.qcow2'], opts);
  const fresh = (): void => copyFileSync(join(dir, 'c0.qcow2'), join(dir, 'c.qcow2'));
  fresh();
  const unsafe = syncCalls(['check', '-q', '-r', 'all', '-T', 'unsafe', 'c.qcow2']);
  if (unsafe === undefined) {
    if (process.env.CI) throw new Error('strace is required when CI is set (apt-get install strace)');
    return t.skip('strace cannot trace here');
  }
  fresh();
  const writeback = syncCalls(['check', '-q', '-r', 'all', 'c.qcow2'])!;
  assert.equal(unsafe, 0);
  assert.ok(writeback > 0);
});

test('convert -r limits the write rate', () => {
  const t0 = Date.now();
  const r = qimg(['convert', '-f', 'raw', '-r', '1M', 'b.raw', 'r.raw'], opts);
  const ms = Date.now() - t0;
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(readFileSync(join(dir, 'r.raw')), readFileSync(join(dir, 'b.raw')));
  // 4 MiB at 1 MiB/s: everything past the first request and the burst allowance waits (qemu-img: ~3 s).
  assert.ok(ms >= 1000, `took ${ms} ms`);
});

class Recorder implements ConvertTarget {
  bytes: Uint8Array;
  writes: number[] = [];
  flushes = 0;
  log: string[] = [];
  constructor(size: number) {
    this.bytes = new Uint8Array(size);
  }
  async write(offset: number, data: Uint8Array) {
    this.writes.push(offset);
    this.log.push('w');
    this.bytes.set(data, offset);
  }
  async writeZeroes(offset: number, length: number) {
    this.log.push('z');
    this.bytes.fill(0, offset, offset + length);
  }
  async flush() {
    this.flushes++;
    this.log.push('f');
  }
  async close() {}
}

/** An image whose later chunks are read faster than earlier ones, so parallel copies finish out of order. */
function reversedReads(data: Uint8Array, chunk: number): Image {
  const img = bytesImage(data);
  const read = img.read.bind(img);
  const chunks = data.length / chunk;
  img.read = async (offset: number, into: Uint8Array) => {
    await new Promise((r) => setTimeout(r, (chunks - Math.floor(offset / chunk)) * 15));
    return read(offset, into);
  };
  return img;
}

const ascending = (xs: number[]): boolean => xs.every((x, i) => i === 0 || x > xs[i - 1]!);

test('convert without -W writes in image order even when reads finish out of order; -W lets them go', async () => {
  const K = 1024;
  const data = random(8 * 64 * K);
  const inOrder = new Recorder(data.length);
  await convertImages([reversedReads(data, 64 * K)], inOrder, { parallel: 8, chunkSize: 64 * K, inOrder: true });
  assert.deepEqual(inOrder.bytes, data);
  assert.equal(inOrder.writes.length, 8);
  assert.ok(ascending(inOrder.writes), `writes at ${inOrder.writes.join(',')}`);

  const oob = new Recorder(data.length);
  await convertImages([reversedReads(data, 64 * K)], oob, { parallel: 8, chunkSize: 64 * K, inOrder: false });
  assert.deepEqual(oob.bytes, data);
  assert.ok(!ascending(oob.writes), 'with -W the fastest read is written first');
});

test('convert --salvage reads unreadable sectors as zeros and reports each', async () => {
  const data = random(8192);
  const img = bytesImage(data);
  const read = img.read.bind(img);
  // Bytes 1024..1535 cannot be read.
  img.read = async (offset: number, into: Uint8Array) => {
    if (offset < 1536 && offset + into.length > 1024) throw new Error('Input/output error');
    return read(offset, into);
  };
  await assert.rejects(convertImages([img], new Recorder(data.length)), /error while reading at byte 0: Input\/output error/);
  const reports: string[] = [];
  const t = new Recorder(data.length);
  await convertImages([img], t, { salvage: (offset, message) => reports.push(`${offset}: ${message}`) });
  assert.deepEqual(reports, ['1024: Input/output error']);
  const want = data.slice();
  want.fill(0, 1024, 1536);
  assert.deepEqual(t.bytes, want);
});

test('a writethrough target flushes after every write', async () => {
  const inner = new Recorder(4096);
  const t = writethroughTarget(inner);
  await t.write(0, new Uint8Array(512).fill(1));
  await t.writeZeroes!(512, 512);
  await t.write(1024, new Uint8Array(512).fill(2));
  assert.deepEqual(inner.log, ['w', 'f', 'z', 'f', 'w', 'f']);
});

test('bench -t writethrough flushes after every write request', async () => {
  let flushes = 0;
  let writes = 0;
  const img = bytesImage(new Uint8Array(64 * 1024));
  img.write = async () => {
    writes++;
  };
  img.flush = async () => {
    flushes++;
  };
  const o = { count: 10, depth: 2, bufferSize: 4096, step: 4096, offset: 0, write: true, pattern: 1, flushInterval: 0, drain: true };
  await bench(img, { ...o, writethrough: true }, () => 0);
  assert.deepEqual([writes, flushes], [10, 10]);
  flushes = 0;
  await bench(img, o, () => 0);
  assert.equal(flushes, 0);
});

test('cache modes: "off" is qemu\'s old name of "none"; unknown modes are refused', () => {
  assert.equal(parseCacheMode('off'), 'none');
  assert.equal(parseCacheMode('writethrough'), 'writethrough');
  assert.equal(parseCacheMode('bogus'), undefined);
});

test('convert -O raw honours -o preallocation (it used to be checked and dropped)', () => {
  qimg(['create', '-q', '-f', 'qcow2', 'empty.qcow2', '4M'], opts);
  const r = qimg(['convert', '-O', 'raw', '-o', 'preallocation=full', 'empty.qcow2', 'full.raw'], opts);
  assert.equal(r.status, 0, r.stderr);
  const du = spawnSync('du', ['-k', 'full.raw'], { cwd: dir, encoding: 'utf8' });
  assert.ok(Number(du.stdout.split('\t')[0]) >= 4096, `allocated: ${du.stdout}`);
  refused(['convert', '-O', 'raw', '-o', 'preallocation=metadata', 'empty.qcow2', 'meta.raw'], 'qimg: meta.raw: error while converting raw: Unsupported preallocation mode: metadata\n');
});

test('convert --salvage on a damaged compressed cluster prints what qemu-img prints and copies the rest', (t) => {
  if (!haveTools()) return t.skip('qemu-img is not installed');
  const half = random(65536, 11);
  writeFileSync(join(dir, 'c.raw'), Buffer.concat([half, Buffer.alloc(65536, 0x41)]));
  assert.equal(qemuImg(['convert', '-q', '-c', '-f', 'raw', '-O', 'qcow2', 'c.raw', 'c.qcow2'], opts).status, 0);
  // Damage the start of the second cluster's compressed data: L1[0] -> L2 table -> entry 1 (64 KiB clusters).
  const f = readFileSync(join(dir, 'c.qcow2'));
  const l2 = Number(f.readBigUInt64BE(Number(f.readBigUInt64BE(40))) & 0x00fffffffffffe00n);
  const host = Number(f.readBigUInt64BE(l2 + 8) & ((1n << 54n) - 1n));
  f.fill(0xff, host, host + 8);
  writeFileSync(join(dir, 'c.qcow2'), f);
  const q = qemuImg(['convert', '--salvage', '-O', 'raw', 'c.qcow2', 'sq.raw'], opts);
  const i = qimg(['convert', '--salvage', '-O', 'raw', 'c.qcow2', 'si.raw'], opts);
  assert.equal(i.status, q.status);
  assert.equal(asQemu(i.stderr), q.stderr);
  assert.equal(i.stderr.split('\n').length - 1, 128);
  assert.deepEqual(readFileSync(join(dir, 'si.raw')), readFileSync(join(dir, 'sq.raw')));
  // Without --salvage the same damage ends the conversion.
  const plain = qimg(['convert', '-O', 'raw', 'c.qcow2', 'sp.raw'], opts);
  assert.equal(plain.status, 1);
  assert.match(plain.stderr, /^qimg: error while reading at byte \d+: Input\/output error\n$/);
});

test('check validates -T after the file name, as qemu-img does', () => {
  refused(['check', '-T', 'bogus'], "qimg: Expecting one image file name\nTry 'qimg --help' for more information\n");
  refused(['check', '-T', 'bogus', 'a.qcow2'], 'qimg: Invalid source cache option: bogus\n');
});

test('bench --no-drain without --flush-interval runs, as in qemu-img (there is no flush to drain for)', () => {
  const r = qimg(['bench', '-c', '1', '--no-drain', 'a.qcow2'], opts);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^Sending 1 read requests/);
});
