/**
 * qimg's QED create against `qemu-img create -f qed`: the same options give
 * the same bytes, the same "Formatting" line and the same error messages.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, fstatSync, mkdtempSync, openSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OptionBag } from '../../src/block/options.js';
import { isImageError } from '../../src/errors.js';
import { FileStorage } from '../../src/io/file.js';
import { MemoryStorage } from '../../src/io/memory.js';
import { createQed, parseQedCreateOptions, qedCreateLine, validateQedCreate } from '../../src/formats/qed/create.js';
import { parseHeader } from '../../src/formats/qed/header.js';

const haveQemu = spawnSync('qemu-img', ['--version']).status === 0;
const dir = mkdtempSync(join(tmpdir(), 'qimg-qed-create-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function needQemu(t: { skip(msg?: string): void }): boolean {
  if (haveQemu) return true;
  if (process.env.CI) assert.fail('qemu-img is required when CI is set');
  t.skip('qemu-img not installed');
  return false;
}

interface Case {
  name: string;
  /** The -o list, as given to qemu-img. */
  opts: string;
  /** The positional size, if any. */
  size?: string;
}

/** qemu-img create -u (backing files need not exist) in `dir`; file names are relative. */
function qemuCreate(file: string, c: Case): { status: number; stdout: string; stderr: string } {
  const args = ['create', '-f', 'qed', '-u'];
  if (c.opts) args.push('-o', c.opts);
  args.push(file);
  if (c.size !== undefined) args.push(c.size);
  const r = spawnSync('qemu-img', args, { cwd: dir, encoding: 'utf8' });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** What qimg does for the same arguments: the line, then the file, or an error message. */
async function ourCreate(file: string, c: Case): Promise<{ line?: string; error?: string }> {
  const out: { line?: string; error?: string } = {};
  try {
    const bag = OptionBag.parse(c.opts);
    if (c.size !== undefined) {
      if (bag.has('size')) throw new Error('The image size must be specified only once');
      bag.set('size', c.size);
    }
    const opts = parseQedCreateOptions(bag);
    assert.ok(opts.size !== undefined, 'these cases always give a size');
    out.line = qedCreateLine(file, { ...opts, size: opts.size });
    const storage = await FileStorage.open(join(dir, file), { writable: true, create: true, truncate: true });
    try {
      await createQed(storage, { ...opts, size: opts.size });
    } finally {
      await storage.close();
    }
  } catch (e) {
    if (!isImageError(e)) throw e;
    out.error = e.message;
  }
  return out;
}

const longName = 'b'.repeat(5000);

/**
 * Whole-file comparison. Past 64 MiB (only the 4 GiB cluster_size quirk
 * gets there) the sparse middle that neither program writes is skipped:
 * the first and last 4 MiB and the lengths are compared.
 */
function assertSameFile(pathA: string, pathB: string): void {
  const a = openSync(pathA, 'r');
  const b = openSync(pathB, 'r');
  try {
    const size = fstatSync(a).size;
    assert.equal(fstatSync(b).size, size, 'file length');
    const window = 4 * 1024 * 1024;
    const ranges: Array<[number, number]> =
      size <= 64 * 1024 * 1024 ? [[0, size]] : [[0, window], [size - window, size]];
    const bufA = Buffer.alloc(window);
    const bufB = Buffer.alloc(window);
    for (const [start, end] of ranges) {
      for (let pos = start; pos < end; pos += window) {
        const n = Math.min(window, end - pos);
        readSync(a, bufA, 0, n, pos);
        readSync(b, bufB, 0, n, pos);
        assert.ok(bufA.subarray(0, n).equals(bufB.subarray(0, n)), `file contents differ in [${pos}, ${pos + n})`);
      }
    }
  } finally {
    closeSync(a);
    closeSync(b);
  }
}

const good: Case[] = [
  { name: 'defaults', opts: '', size: '1M' },
  { name: 'small odd size', opts: 'cluster_size=4096,table_size=1', size: '100000' },
  { name: 'size rounded up', opts: '', size: '513' },
  { name: 'size zero', opts: '', size: '0' },
  { name: 'raw backing', opts: 'backing_file=base.raw,backing_fmt=raw', size: '1M' },
  { name: 'raw backing, table 2', opts: 'backing_file=base.raw,backing_fmt=raw,table_size=2', size: '3M' },
  { name: 'qed backing (probed)', opts: 'backing_file=a.qed,backing_fmt=qed,cluster_size=8k', size: '2M' },
  { name: 'qcow2 backing, comma in name', opts: 'backing_file=a,,b.qcow2,backing_fmt=qcow2', size: '1M' },
  { name: 'backing_fmt alone', opts: 'backing_fmt=raw', size: '1M' },
  { name: 'hex and suffixes', opts: 'table_size=0x2,cluster_size=0x1000', size: '0x100000' },
  { name: 'explicit defaults', opts: 'table_size=4,cluster_size=65536', size: '1M' },
  { name: 'biggest table', opts: 'cluster_size=1M,table_size=16', size: '1G' },
  { name: 'size at the maximum', opts: 'cluster_size=4k,table_size=1', size: '1G' },
  { name: 'cluster size cut to 32 bits', opts: 'cluster_size=4294971392', size: '1M' },
  { name: 'table size cut to 32 bits', opts: 'table_size=4294967297', size: '1M' },
  { name: 'backing name past cluster 0', opts: `backing_file=${longName},backing_fmt=raw,cluster_size=4k`, size: '1M' },
  { name: 'size as an option', opts: 'size=2M,backing_file=x.raw,backing_fmt=raw', size: undefined },
];

for (const c of good) {
  test(`create matches qemu-img byte for byte: ${c.name}`, async (t) => {
    if (!needQemu(t)) return;
    const q = qemuCreate('qemu.qed', c);
    assert.equal(q.status, 0, q.stderr);
    const ours = await ourCreate('ours.qed', c);
    assert.equal(ours.error, undefined);
    assert.equal(ours.line, q.stdout.trim().replace("'qemu.qed'", "'ours.qed'"));
    assertSameFile(join(dir, 'qemu.qed'), join(dir, 'ours.qed'));
  });
}

const bad: Case[] = [
  { name: 'cluster too small', opts: 'cluster_size=2048', size: '1M' },
  { name: 'cluster not a power of two', opts: 'cluster_size=1000', size: '1M' },
  { name: 'cluster too big', opts: 'cluster_size=128M', size: '1M' },
  { name: 'cluster not a number', opts: 'cluster_size=abc', size: '1M' },
  { name: 'cluster negative', opts: 'cluster_size=-1', size: '1M' },
  { name: 'cluster empty', opts: 'cluster_size=', size: '1M' },
  { name: 'table 3', opts: 'table_size=3', size: '1M' },
  { name: 'table 0', opts: 'table_size=0', size: '1M' },
  { name: 'table 32', opts: 'table_size=32', size: '1M' },
  { name: 'table fraction', opts: 'table_size=1.5', size: '1M' },
  { name: 'table not a number', opts: 'table_size=abc', size: '1M' },
  { name: 'cluster checked before table', opts: 'cluster_size=1000,table_size=3', size: '1M' },
  { name: 'table checked before size', opts: 'table_size=3', size: '513' },
  { name: 'size past the maximum', opts: 'cluster_size=4k,table_size=1', size: '2G' },
  { name: 'size past the default maximum', opts: '', size: '100T' },
  { name: 'maximum wraps to 0', opts: 'cluster_size=64M', size: '1M' },
  { name: 'maximum wraps to 0 (table 16)', opts: 'cluster_size=64M,table_size=16', size: '1M' },
  { name: 'size not a number', opts: 'size=abc', size: undefined },
  { name: 'no size', opts: '', size: undefined },
  { name: 'unknown option', opts: 'foo=bar', size: '1M' },
  { name: 'unknown backing format', opts: 'backing_file=x,backing_fmt=foo', size: '1M' },
  { name: 'backing format names are case sensitive', opts: 'backing_file=x,backing_fmt=RAW', size: '1M' },
  { name: 'empty backing name', opts: 'backing_file=,backing_fmt=raw', size: '1M' },
];

for (const c of bad) {
  test(`create refuses like qemu-img: ${c.name}`, async (t) => {
    if (!needQemu(t)) return;
    const q = qemuCreate('bad.qed', c);
    assert.notEqual(q.status, 0);
    const ours = await ourCreate('bad.qed', c);
    assert.ok(ours.error !== undefined, 'qimg must refuse');
    assert.equal(`qemu-img: bad.qed: ${ours.error}`, q.stderr.trim());
    // Where qemu-img got as far as printing its line, ours is the same.
    if (q.stdout.trim() !== '') {
      const bag = OptionBag.parse(c.opts);
      if (c.size !== undefined) bag.set('size', c.size);
      const opts = parseOpts(bag);
      assert.equal(qedCreateLine('bad.qed', { ...opts, size: opts.size! }), q.stdout.trim());
    }
  });
}

/** The raw option values, before the checks that run after qemu-img prints its line. */
function parseOpts(bag: OptionBag): { size?: number; clusterSize?: number; tableSize?: number; backingFile?: string; backingFmt?: string } {
  const out: { size?: number; clusterSize?: number; tableSize?: number; backingFile?: string; backingFmt?: string } = {};
  const size = bag.size('size');
  const backingFile = bag.string('backing_file');
  const backingFmt = bag.string('backing_fmt');
  const clusterSize = bag.size('cluster_size');
  const tableSize = bag.size('table_size');
  if (size !== undefined) out.size = size;
  if (backingFile !== undefined) out.backingFile = backingFile;
  if (backingFmt !== undefined) out.backingFmt = backingFmt;
  if (clusterSize !== undefined) out.clusterSize = clusterSize;
  if (tableSize !== undefined) out.tableSize = tableSize;
  return out;
}

test('a created image parses back with the options given', async () => {
  const storage = new MemoryStorage();
  await createQed(storage, { size: 3 * 1024 * 1024 + 1, clusterSize: 8192, tableSize: 2, backingFile: 'base.img', backingFmt: 'raw' });
  const bytes = storage.bytes();
  const { header } = parseHeader(bytes, bytes.length);
  assert.equal(header.clusterSize, 8192);
  assert.equal(header.tableSize, 2);
  assert.equal(header.imageSize, 3 * 1024 * 1024 + 512);
  assert.equal(header.l1TableOffset, 8192);
  assert.equal(header.features, 0x5n);
  assert.equal(bytes.length, 8192 * 3);
  assert.equal(new TextDecoder().decode(bytes.subarray(64, 72)), 'base.img');
});

test('validateQedCreate reports the sizes QEMU really uses', () => {
  assert.deepEqual(validateQedCreate({ size: 513 }), { size: 1024, clusterSize: 65536, tableSize: 4 });
  assert.deepEqual(validateQedCreate({ size: 0, clusterSize: 2 ** 32 + 4096, tableSize: 2 ** 32 + 2 }), {
    size: 0,
    clusterSize: 4096,
    tableSize: 2,
  });
});

test('createQed overwrites what the storage held', async () => {
  const storage = new MemoryStorage(new Uint8Array(1 << 20).fill(0xee));
  await createQed(storage, { size: 1 << 20, clusterSize: 4096, tableSize: 2 });
  const bytes = storage.bytes();
  assert.equal(bytes.length, 3 * 4096);
  assert.ok(bytes.subarray(64).every((b) => b === 0));
});
