/**
 * Images made by qemu-img/qemu-io read byte-identically (against
 * `qemu-img convert -O raw`), and info/map agree with qemu-img.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openImageFile } from '../../src/node.js';
import { extents, type Image } from '../../src/block/image.js';
import { ImageError } from '../../src/errors.js';
import { MemoryStorage } from '../../src/io/memory.js';
import { nodeCodecs } from '../../src/io/codecs.js';
import { openQcow2, type Qcow2Driver } from '../../src/formats/qcow2/qcow2.js';

function haveQemu(): boolean {
  try {
    execFileSync('qemu-img', ['--version'], { stdio: 'ignore' });
    execFileSync('qemu-io', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
const QEMU = haveQemu();
if (!QEMU && process.env.CI) throw new Error('qemu-img and qemu-io are required when CI is set');
const skip = QEMU ? false : 'qemu-img/qemu-io not installed';

let dir = '';
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'qimg-qcow2-read-'));
});
after(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const p = (name: string): string => join(dir, name);
function run(cmd: string, ...args: string[]): string {
  return execFileSync(cmd, args, { cwd: dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}
function create(name: string, size: string, opts = '', ...extra: string[]): void {
  run('qemu-img', 'create', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), ...extra, p(name), size);
}
function io(name: string, ...cmds: string[]): void {
  run('qemu-io', ...cmds.flatMap((c) => ['-c', c]), p(name));
}

async function readAll(img: Image): Promise<Buffer> {
  const out = Buffer.alloc(img.size);
  const chunk = 4 << 20;
  for (let off = 0; off < img.size; off += chunk) {
    await img.read(off, out.subarray(off, Math.min(img.size, off + chunk)));
  }
  return out;
}

/** Bytes equal qemu-img convert's, and info's driver fields equal qemu-img info's. */
async function checkImage(name: string, opts: { map?: boolean } = {}): Promise<Image> {
  const raw = p(`${name}.out.raw`);
  run('qemu-img', 'convert', '-O', 'raw', p(name), raw);
  const img = await openImageFile(p(name));
  const ours = await readAll(img);
  const theirs = readFileSync(raw);
  assert.equal(ours.length, theirs.length, 'virtual size');
  assert.ok(ours.equals(theirs), `${name}: guest bytes differ from qemu-img convert`);
  await checkInfo(name, img);
  if (opts.map) await checkMap(name, img);
  return img;
}

async function checkInfo(name: string, img: Image): Promise<void> {
  const q = JSON.parse(run('qemu-img', 'info', '--output=json', p(name))) as Record<string, unknown>;
  const ours = (await img.info()) as unknown as Record<string, unknown>;
  for (const k of ['virtual-size', 'cluster-size', 'dirty-flag', 'encrypted', 'snapshots', 'backing-filename', 'backing-filename-format', 'format-specific']) {
    assert.deepEqual(ours[k], q[k], `${name}: info ${k}`);
  }
}

interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

async function checkMap(name: string, img: Image): Promise<void> {
  const q = JSON.parse(run('qemu-img', 'map', '--output=json', p(name))) as MapEntry[];
  const ours: MapEntry[] = [];
  for await (const e of extents(img)) {
    const m: MapEntry = { start: e.offset, length: e.length, depth: e.depth, present: e.present, zero: e.zero, data: e.data };
    if (e.hostOffset !== undefined) m.offset = e.hostOffset;
    const last = ours[ours.length - 1];
    if (
      last &&
      last.depth === m.depth &&
      last.present === m.present &&
      last.zero === m.zero &&
      last.data === m.data &&
      (last.offset === undefined) === (m.offset === undefined) &&
      (m.offset === undefined || last.offset! + last.length === m.offset)
    ) {
      last.length += m.length;
    } else {
      ours.push(m);
    }
  }
  const theirs = q.map((e) => {
    const m: MapEntry = { start: e.start, length: e.length, depth: e.depth, present: e.present, zero: e.zero, data: e.data };
    if (e.offset !== undefined) m.offset = e.offset;
    return m;
  });
  assert.deepEqual(ours, theirs, `${name}: map`);
}

test('cluster sizes 512 B to 2 MiB', { skip }, async () => {
  for (const cs of [512, 4096, 65536, 2 << 20]) {
    const name = `cs${cs}.qcow2`;
    create(name, String(16 * cs + 3 * 512), `cluster_size=${cs}`);
    io(
      name,
      `write -P 1 0 ${3 * cs}`,
      `write -P 2 ${5 * cs + 100} 1000`,
      `write -P 4 ${7 * cs} ${cs}`,
      `write -z ${7 * cs} ${cs}`,
      `write -z -u ${9 * cs} ${cs}`,
      `write -c -P 3 ${12 * cs} ${cs}`,
      `write -P 5 ${16 * cs} 1536`,
    );
    const img = await checkImage(name);
    await img.close();
  }
});

test('v2 (compat=0.10) and refcount widths 1 and 64', { skip }, async () => {
  create('v2.qcow2', '8M', 'compat=0.10');
  io('v2.qcow2', 'write -P 1 0 100k', 'write -c -P 2 1M 64k', 'write -z 2M 64k', 'write -P 3 7M 1M');
  await (await checkImage('v2.qcow2')).close();
  for (const bits of [1, 64]) {
    const name = `rc${bits}.qcow2`;
    create(name, '8M', `refcount_bits=${bits}`);
    io(name, 'write -P 9 64k 192k', 'write -P 8 5M 64k');
    const img = await checkImage(name, { map: true });
    const d = img.driver as Qcow2Driver;
    assert.equal(await d.refcount(0), 1, 'header cluster refcount');
    await img.close();
  }
});

test('compressed clusters: zlib and zstd, partial and sequential reads', { skip }, async () => {
  // Compressible but not trivial data.
  const src = Buffer.alloc(3 << 20);
  for (let i = 0; i < src.length; i++) src[i] = (i * 7 + (i >> 9)) & 0xff;
  src.fill(0, 1 << 20, (1 << 20) + 65536);
  writeFileSync(p('src.raw'), src);
  for (const type of ['zlib', 'zstd']) {
    const name = `c-${type}.qcow2`;
    run('qemu-img', 'convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', `compression_type=${type}`, p('src.raw'), p(name));
    const img = await checkImage(name);
    // Sequential small reads straddling cluster boundaries.
    const part = Buffer.alloc(1000);
    for (let off = 60000; off < 300000; off += 1000) {
      await img.read(off, part);
      assert.ok(part.equals(src.subarray(off, off + 1000)), `${type} at ${off}`);
    }
    await img.close();
  }
  create('qio-c.qcow2', '1M');
  io('qio-c.qcow2', 'write -c -P 7 0 64k', 'write -c -P 8 64k 64k');
  const img = await checkImage('qio-c.qcow2', { map: true });
  await img.close();

  // A payload that does not decompress is an I/O error, as in QEMU.
  const bytes = readFileSync(p('qio-c.qcow2'));
  const l1 = Number(bytes.readBigUInt64BE(40));
  const l2 = Number(bytes.readBigUInt64BE(l1) & 0x00fffffffffffe00n);
  const host = Number(bytes.readBigUInt64BE(l2) & ((1n << 54n) - 1n));
  bytes.fill(0xff, host, host + 16);
  writeFileSync(p('bad-c.qcow2'), bytes);
  const bad = await openImageFile(p('bad-c.qcow2'));
  await assert.rejects(bad.read(0, new Uint8Array(4096)), (e: unknown) => e instanceof ImageError && e.code === 'io' && e.message === 'Input/output error');
  const ok = new Uint8Array(4096);
  await bad.read(65536, ok);
  assert.ok(ok.every((b) => b === 8));
  await bad.close();
});

test('extended L2: subcluster writes and zeroes over a backing file', { skip }, async () => {
  run('qemu-img', 'create', '-f', 'raw', p('xb.raw'), '1M');
  run('qemu-io', '-f', 'raw', '-c', 'write -P 0xaa 0 1M', p('xb.raw'));
  create('xl2.qcow2', '1M', 'extended_l2=on,cluster_size=64k', '-b', 'xb.raw', '-F', 'raw');
  io('xl2.qcow2', 'write -P 1 4k 4k', 'write -z 70k 2k', 'write -P 2 128k 64k', 'write -z 256k 64k', 'write -P 3 330k 6k', 'write -z -u 332k 2k');
  await (await checkImage('xl2.qcow2', { map: true })).close();
  create('xl2n.qcow2', '1M', 'extended_l2=on,cluster_size=32k');
  io('xl2n.qcow2', 'write -P 1 1k 1k', 'write -z 40k 8k', 'write -P 2 100k 3k');
  await (await checkImage('xl2n.qcow2', { map: true })).close();
});

test('external data files, raw and not', { skip }, async () => {
  create('df.qcow2', '4M', 'data_file=df.data');
  io('df.qcow2', 'write -P 1 0 128k', 'write -z 1M 64k', 'write -P 2 3M 64k');
  await (await checkImage('df.qcow2', { map: true })).close();
  create('dfr.qcow2', '4M', 'data_file=dfr.data,data_file_raw=on');
  io('dfr.qcow2', 'write -P 1 64k 64k', 'write -P 2 3M 4k');
  await (await checkImage('dfr.qcow2')).close();
  // Metadata only: the data file is not opened at all.
  rmSync(p('df.data'));
  const img = await openImageFile(p('df.qcow2'), { metadataOnly: true });
  await checkInfo('df.qcow2', img);
  await img.close();
});

test('zero clusters and a backing chain', { skip }, async () => {
  create('z.qcow2', '4M');
  io('z.qcow2', 'write -P 1 0 256k', 'write -z 64k 64k', 'write -z -u 128k 64k', 'write -z 1M 128k');
  await (await checkImage('z.qcow2', { map: true })).close();

  run('qemu-img', 'create', '-f', 'raw', p('base.raw'), '4M');
  run('qemu-io', '-f', 'raw', '-c', 'write -P 1 0 4M', p('base.raw'));
  create('mid.qcow2', '4M', '', '-b', 'base.raw', '-F', 'raw');
  io('mid.qcow2', 'write -P 2 64k 128k', 'write -z 1M 64k');
  create('top.qcow2', '6M', '', '-b', 'mid.qcow2', '-F', 'qcow2');
  io('top.qcow2', 'write -P 3 128k 128k', 'write -z -u 2M 64k', 'write -P 4 5M 64k');
  const img = await checkImage('top.qcow2', { map: true });
  assert.deepEqual(img.driver.backing, { name: 'mid.qcow2', format: 'qcow2' });
  await img.close();
});

test('info: snapshots, bitmaps, lazy refcounts, dirty', { skip }, async () => {
  create('sn.qcow2', '2M', 'lazy_refcounts=on');
  io('sn.qcow2', 'write -P 1 0 64k');
  run('qemu-img', 'snapshot', '-c', 'first', p('sn.qcow2'));
  io('sn.qcow2', 'write -P 2 0 64k');
  run('qemu-img', 'snapshot', '-c', 'second one', p('sn.qcow2'));
  run('qemu-img', 'bitmap', '--add', p('sn.qcow2'), 'b1');
  run('qemu-img', 'bitmap', '--add', '-g', '128k', '--disable', p('sn.qcow2'), 'b2');
  const img = await checkImage('sn.qcow2');
  const info = await img.info();
  assert.equal(info.snapshots?.length, 2);
  await img.close();
});

test('encrypted images: info works, reads need a secret', { skip }, async () => {
  for (const fmt of ['luks', 'aes']) {
    const name = `enc-${fmt}.qcow2`;
    // QEMU times its PBKDF with getrusage; on a busy machine a very short
    // iter-time can fail ("Unable to get accurate CPU usage"), so allow retries.
    const args = ['create', '-f', 'qcow2', '--object', 'secret,id=s0,data=abc', '-o', `encrypt.format=${fmt},encrypt.key-secret=s0${fmt === 'luks' ? ',encrypt.iter-time=100' : ''}`, p(name), '1M'];
    for (let attempt = 1; ; attempt++) {
      if (spawnSync('qemu-img', args).status === 0) break;
      if (attempt === 3) run('qemu-img', ...args);
    }
    const img = await openImageFile(p(name), { metadataOnly: true });
    await checkInfo(name, img);
    await assert.rejects(img.read(0, new Uint8Array(512)), (e: unknown) => e instanceof ImageError && e.code === 'needs-secret');
    await img.close();
  }
});

test('metadata preallocation: holes in the file read and map as zero', { skip }, async () => {
  create('pm.qcow2', '4M', 'preallocation=metadata');
  io('pm.qcow2', 'write -P 1 64k 64k');
  const img = await checkImage('pm.qcow2', { map: true });
  assert.equal(await (img.driver as Qcow2Driver).metadataPreallocated(), true);
  await img.close();
});

test('long contiguous runs map in a few steps; sparse 4 TiB maps fast', { skip }, async () => {
  create('big.qcow2', '1G', 'preallocation=metadata');
  const img = await openImageFile(p('big.qcow2'));
  let n = 0;
  for (let off = 0; off < img.size; n++) off += (await img.driver.getMapping(off, img.size - off)).length;
  assert.ok(n <= 4, `1 GiB in ${n} mappings`);
  await img.close();

  create('huge.qcow2', '4T');
  io('huge.qcow2', 'write -P 1 1G 64k', 'write -P 2 3T 64k');
  const h = await openImageFile(p('huge.qcow2'));
  const t0 = performance.now();
  let count = 0;
  for await (const _ of extents(h)) count++;
  const ms = performance.now() - t0;
  assert.equal(count, 5);
  assert.ok(ms < 1000, `4 TiB mapped in ${ms.toFixed(0)} ms`);
  await h.close();
});

test('concurrent lookups share one L2 load', { skip }, async () => {
  create('cc.qcow2', '4M');
  io('cc.qcow2', 'write -P 1 0 1M');
  const bytes = readFileSync(p('cc.qcow2'));
  const l2 = Number(bytes.readBigUInt64BE(Number(bytes.readBigUInt64BE(40))) & 0x00fffffffffffe00n);
  let l2Reads = 0;
  class Counting extends MemoryStorage {
    override async read(into: Uint8Array, offset: number): Promise<void> {
      if (offset === l2) l2Reads++;
      await new Promise((r) => setTimeout(r, 1));
      return super.read(into, offset);
    }
  }
  const d = await openQcow2({
    storage: new Counting(bytes),
    writable: false,
    codecs: nodeCodecs,
    metadataOnly: false,
    openDataFile: async () => {
      throw new Error('none');
    },
  });
  const ms = await Promise.all(Array.from({ length: 32 }, (_, i) => d.getMapping(i * 65536, 65536)));
  assert.equal(l2Reads, 1);
  assert.ok(ms.slice(0, 16).every((m) => m.kind === 'data'));
  assert.ok(ms.slice(16).every((m) => m.kind === 'unallocated'));
  await d.close();
});

test('corrupt tables: the same messages QEMU prints when it flags the image', { skip }, async () => {
  create('zv2.qcow2', '1M', 'compat=0.10');
  io('zv2.qcow2', 'write -P 1 0 64k');
  const base = readFileSync(p('zv2.qcow2'));
  const l1 = Number(base.readBigUInt64BE(40));
  const l2 = Number(base.readBigUInt64BE(l1) & 0x00fffffffffffe00n);
  const pokes: Array<[string, (b: Buffer) => void, RegExp]> = [
    ['zero flag in v2', (b) => b.writeBigUInt64BE(b.readBigUInt64BE(l2) | 1n, l2), /^Zero cluster entry found in pre-v3 image \(L2 offset: 0x[0-9a-f]+, L2 index: 0\)$/],
    ['unaligned L2 table', (b) => b.writeBigUInt64BE(b.readBigUInt64BE(l1) + 0x200n, l1), /^L2 table offset 0x[0-9a-f]+ unaligned \(L1 index: 0\)$/],
    ['unaligned data cluster', (b) => b.writeBigUInt64BE(b.readBigUInt64BE(l2) + 0x200n, l2), /^Cluster allocation offset 0x[0-9a-f]+ unaligned \(L2 offset: 0x[0-9a-f]+, L2 index: 0\)$/],
  ];
  for (const [what, poke, re] of pokes) {
    const b = Buffer.from(base);
    poke(b);
    const file = p('poked.qcow2');
    writeFileSync(file, b);
    const img = await openImageFile(file);
    let message = '';
    await img.read(0, new Uint8Array(512)).catch((e: unknown) => {
      assert.ok(e instanceof ImageError && e.code === 'corrupt', what);
      message = e.message;
    });
    await img.close();
    assert.match(message, re, what);
    const q = spawnSync('qemu-io', ['-r', '-c', 'read 0 512', file], { encoding: 'utf8' });
    assert.ok(q.stdout.includes('read failed: Input/output error') || q.stderr.includes('Input/output error'), `${what}: qemu fails too`);
    assert.ok(q.stderr.includes(`qcow2: Image is corrupt: ${message}; further`), `${what}: qemu says ${q.stderr}`);
  }
});
