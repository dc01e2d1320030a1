/**
 * qcow2 check and repair against qemu-img check: images made by
 * qemu-img/qemu-io, damaged with byte pokes, then checked (and repaired)
 * by both on separate copies. Counts, the JSON qemu-img prints, the
 * per-problem messages and exit codes must agree; repaired images must
 * check clean and read as before the damage.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, readFileSync, writeFileSync, openSync, writeSync, readSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { MemoryStorage } from '../../src/io/memory.js';
import { checkQcow2File as checkImage, type FixMode } from '../../src/formats/qcow2/check.js';
import { checkJson as imageCheckJson } from '../../src/block/check.js';
import { entryAt } from '../../src/formats/qcow2/refcount.js';
import { setEntryAt } from '../../src/formats/qcow2/refcounts.js';
import { openImageFile } from '../../src/node.js';
import { tmpDir } from '../helpers/tools.js';
import { toQemuJson } from '../../src/cli/json.js';

const haveQemu = (() => {
  try {
    return spawnSync('qemu-img', ['--version']).status === 0 && spawnSync('qemu-io', ['--version']).status === 0;
  } catch {
    return false;
  }
})();
if (!haveQemu && process.env.CI) throw new Error('qemu-img/qemu-io are required when CI is set');

function run(cmd: string, args: string[]): { stdout: string; stderr: string; status: number } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' } });
  if (r.error) throw r.error;
  return { stdout: r.stdout, stderr: r.stderr, status: r.status ?? 1 };
}
function must(cmd: string, args: string[]): string {
  const r = run(cmd, args);
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

// --- byte pokes -------------------------------------------------------------

function readAt(path: string, offset: number, len: number): Uint8Array {
  const fd = openSync(path, 'r');
  try {
    const b = new Uint8Array(len);
    readSync(fd, b, 0, len, offset);
    return b;
  } finally {
    closeSync(fd);
  }
}
function poke(path: string, offset: number, bytes: Uint8Array): void {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, bytes, 0, bytes.length, offset);
  } finally {
    closeSync(fd);
  }
}
const u64 = (path: string, offset: number): bigint => new DataView(readAt(path, offset, 8).buffer).getBigUint64(0, false);
const u32 = (path: string, offset: number): number => new DataView(readAt(path, offset, 4).buffer).getUint32(0, false);
function poke64(path: string, offset: number, v: bigint): void {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v, false);
  poke(path, offset, b);
}

interface Geo {
  cs: number;
  order: number;
  l1: number;
  reftable: number;
}
function geo(path: string): Geo {
  const bits = u32(path, 20);
  const version = u32(path, 4);
  return { cs: 2 ** bits, order: version === 3 ? u32(path, 96) : 4, l1: Number(u64(path, 40)), reftable: Number(u64(path, 48)) };
}
const OFFSET_MASK = 0x00fffffffffffe00n;
/** Offset of the L2 table mapping guest cluster 0 region (L1 entry `i`). */
const l1Entry = (path: string, i: number): bigint => u64(path, geo(path).l1 + 8 * i);
const l2Offset = (path: string, i = 0): number => Number(l1Entry(path, i) & OFFSET_MASK);

function refblockFor(path: string, cluster: number): { off: number; idx: number; g: Geo } {
  const g = geo(path);
  const per = (g.cs * 8) / 2 ** g.order;
  const off = Number(u64(path, g.reftable + 8 * Math.floor(cluster / per)) & OFFSET_MASK);
  assert.ok(off > 0, 'no refblock');
  return { off, idx: cluster % per, g };
}
function getRefcount(path: string, cluster: number): number {
  const { off, idx, g } = refblockFor(path, cluster);
  return entryAt(readAt(path, off, g.cs), idx, g.order);
}
function setRefcount(path: string, cluster: number, value: number): void {
  const { off, idx, g } = refblockFor(path, cluster);
  const b = readAt(path, off, g.cs);
  setEntryAt(b, idx, g.order, value);
  poke(path, off, b);
}
/** Host offset of guest offset `guest` (a data cluster), from qemu-img map. */
function hostOf(path: string, guest: number): number {
  const map = JSON.parse(must('qemu-img', ['map', '--output=json', '-f', 'qcow2', path])) as Array<{ start: number; length: number; offset?: number }>;
  const m = map.find((e) => e.start <= guest && guest < e.start + e.length && e.offset !== undefined);
  assert.ok(m, `guest ${guest} not mapped`);
  return m.offset! + (guest - m.start);
}

// --- comparing with qemu-img check ----------------------------------------

/** `json` is the check --output=json text with the image's name (the copies differ) replaced by IMG. */
type Result = { json: string | undefined; status: number; messages: string[]; errors: string[] };

function qemuCheck(path: string, mode: FixMode): Result {
  const args = ['check', '--output=json', '-f', 'qcow2'];
  if (mode !== 'none') args.push('-r', mode);
  const r = run('qemu-img', [...args, path]);
  const json = r.stdout.trim() ? r.stdout.replace(JSON.stringify(path), '"IMG"') : undefined;
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  const messages = lines.filter((l) => !l.startsWith('qemu-img: '));
  const errors = lines.filter((l) => l.startsWith('qemu-img: ') && !l.startsWith('qemu-img: Check failed')).map((l) => l.slice(10));
  return { json, status: r.status, messages, errors };
}

async function ourCheck(path: string, mode: FixMode): Promise<Result> {
  const st = new MemoryStorage(readFileSync(path), { name: path });
  const out = await checkImage(st, mode);
  if (mode !== 'none') writeFileSync(path, st.bytes());
  let json: string | undefined;
  if (!out.report.failed) json = `${toQemuJson(imageCheckJson(out.report, 'IMG', 'qcow2'))}\n`;
  return { json, status: out.exitCode, messages: out.messages, errors: out.errors };
}

interface Expect {
  /** Exit code qemu-img check gives the damaged image (sanity check of the damage). */
  status?: number;
  modes?: FixMode[];
  /** A raw export made before the damage: repaired images must still read the same. */
  raw?: string;
  /** Skip the message comparison (QEMU prints something we deliberately do not). */
  noMessages?: boolean;
}

/** Check (and repair) `path` with qemu-img and with qimg on separate copies; everything must agree. */
async function agree(path: string, e: Expect = {}): Promise<void> {
  for (const mode of e.modes ?? ['none', 'leaks', 'all']) {
    const q = `${path}.q-${mode}`;
    const o = `${path}.o-${mode}`;
    copyFileSync(path, q);
    copyFileSync(path, o);
    const theirs = qemuCheck(q, mode);
    const ours = await ourCheck(o, mode);
    if (mode === 'none' && e.status !== undefined) assert.equal(theirs.status, e.status, `damage not as expected: ${theirs.messages.join('\n')}`);
    assert.equal(ours.json, theirs.json, `${mode}: JSON`);
    assert.equal(ours.status, theirs.status, `${mode}: exit code`);
    if (!e.noMessages) {
      assert.deepEqual(ours.messages, theirs.messages, `${mode}: messages`);
      assert.deepEqual(ours.errors, theirs.errors, `${mode}: error lines`);
    }
    if (mode !== 'none') {
      // Our repaired image looks to qemu-img exactly as its own repaired image.
      const a = qemuCheck(q, 'none');
      const b = qemuCheck(o, 'none');
      assert.equal(b.json, a.json, `${mode}: qemu-img check of the repaired images`);
      assert.equal(b.status, a.status);
      if (e.raw && a.status === 0) {
        const c = run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', e.raw, o]);
        assert.equal(c.status, 0, `${mode}: data changed: ${c.stdout}${c.stderr}`);
      }
    }
  }
}

let dir = '';
let n = 0;
function make(opts: string, size: string, io: string[] = []): string {
  if (!dir) dir = tmpDir('qimg-check-');
  const p = join(dir, `img${n++}.qcow2`);
  must('qemu-img', ['create', '-q', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), p, size]);
  if (io.length) must('qemu-io', ['-f', 'qcow2', ...io.flatMap((c) => ['-c', c]), p]);
  return p;
}
function rawOf(path: string): string {
  const r = `${path}.raw`;
  must('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', path, r]);
  return r;
}
const writes = ['write -P 1 0 64k', 'write -P 2 1M 8k', 'write -P 3 300k 200k'];

// --- clean images -----------------------------------------------------------

const cleanVariants: Array<[string, string, string, string[]]> = [
  ['64K default', '', '4M', writes],
  ['512B clusters, 64-bit refcounts', 'cluster_size=512,refcount_bits=64', '2M', writes],
  ['4K clusters, 1-bit refcounts', 'cluster_size=4096,refcount_bits=1', '2M', writes],
  ['2-bit refcounts', 'cluster_size=4096,refcount_bits=2', '2M', writes],
  ['2M clusters', 'cluster_size=2M', '8M', writes],
  ['v2', 'compat=0.10,cluster_size=4096', '2M', writes],
  ['extended L2', 'extended_l2=on,cluster_size=64k', '4M', ['write -P 1 0 4k', 'write -P 2 100k 8k', 'write -z 200k 4k']],
  ['compressed', 'cluster_size=4096', '2M', ['write -c -P 1 0 4k', 'write -c -P 2 4k 4k', 'write -c -P 9 64k 4k', 'write -P 3 8k 4k']],
  ['zstd compressed', 'cluster_size=65536,compression_type=zstd', '4M', ['write -c -P 1 0 64k', 'write -c -P 2 64k 64k', 'write 1M 64k']],
  ['zero clusters', 'cluster_size=4096', '2M', ['write -P 1 0 64k', 'write -z 4k 8k', 'write -z -u 32k 4k']],
  ['empty', '', '1G', []],
  ['lazy refcounts', 'lazy_refcounts=on,cluster_size=4096', '2M', writes],
];

for (const [name, opts, size, io] of cleanVariants) {
  test(`clean: ${name}`, { skip: !haveQemu }, async () => {
    const p = make(opts, size, io);
    await agree(p, { status: 0, modes: ['none'] });
  });
}

test('clean: snapshots', { skip: !haveQemu }, async () => {
  const p = make('cluster_size=4096', '2M', writes);
  must('qemu-img', ['snapshot', '-c', 's1', p]);
  must('qemu-io', ['-c', 'write -P 7 0 16k', '-c', 'write -P 8 1500k 4k', p]);
  must('qemu-img', ['snapshot', '-c', 'second', p]);
  must('qemu-io', ['-c', 'write -P 9 4k 4k', p]);
  await agree(p, { status: 0, modes: ['none'] });
});

test('clean: bitmaps', { skip: !haveQemu }, async () => {
  const p = make('cluster_size=4096', '8M', writes);
  must('qemu-img', ['bitmap', '--add', p, 'b0']);
  must('qemu-img', ['bitmap', '--add', '-g', '512', p, 'b1']);
  must('qemu-io', ['-c', 'write -P 4 2M 64k', p]);
  await agree(p, { status: 0, modes: ['none'] });
});

test('clean: external data file', { skip: !haveQemu }, async () => {
  if (!dir) dir = tmpDir('qimg-check-');
  const p = make(`data_file=${join(dir, 'df.raw')},cluster_size=4096`, '2M', writes);
  await agree(p, { status: 0, modes: ['none'] });
});

// --- damage -----------------------------------------------------------------

test('leaked clusters (refcount poked up)', { skip: !haveQemu }, async () => {
  for (const opts of ['cluster_size=4096', 'cluster_size=4096,refcount_bits=1', 'cluster_size=512,refcount_bits=64']) {
    const p = make(opts, '2M', writes);
    const g = geo(p);
    const freed = hostOf(p, 0) / g.cs;
    must('qemu-io', ['-c', `discard 0 ${g.cs}`, p]);
    const raw = rawOf(p);
    setRefcount(p, freed, 1);
    if (g.order > 0) setRefcount(p, hostOf(p, 1 << 20) / g.cs, 3);
    await agree(p, { raw });
  }
});

test('refcount too low (corruption)', { skip: !haveQemu }, async () => {
  const p = make('cluster_size=4096', '2M', writes);
  must('qemu-img', ['snapshot', '-c', 's1', p]);
  const raw = rawOf(p);
  const d = hostOf(p, 0) / 4096;
  assert.equal(getRefcount(p, d), 2);
  setRefcount(p, d, 1);
  await agree(p, { status: 2, raw });
});

test('refcount 0 for a referenced cluster (rebuild)', { skip: !haveQemu }, async () => {
  for (const opts of ['cluster_size=4096', 'cluster_size=512,refcount_bits=8', 'cluster_size=65536,refcount_bits=1']) {
    const p = make(opts, '4M', writes);
    const raw = rawOf(p);
    const cs = geo(p).cs;
    setRefcount(p, hostOf(p, 300 << 10) / cs, 0);
    setRefcount(p, l2Offset(p) / cs, 0);
    await agree(p, { status: 2, raw });
  }
});

test('refcount table entry zeroed (rebuild)', { skip: !haveQemu }, async () => {
  const p = make('cluster_size=4096', '2M', writes);
  const raw = rawOf(p);
  poke64(p, geo(p).reftable, 0n);
  await agree(p, { status: 2, raw });
});

test('broken refcount table entries', { skip: !haveQemu }, async () => {
  const damages: Array<(p: string, g: Geo) => void> = [
    (p, g) => poke64(p, g.reftable, u64(p, g.reftable) + 0x200n), // unaligned refblock
    (p, g) => poke64(p, g.reftable, u64(p, g.reftable) | 1n), // reserved bit
    (p, g) => poke64(p, g.reftable + 8, 0x100000n), // refblock outside the image
    (p) => poke(p, 56, new Uint8Array(4)), // no refcount table at all
  ];
  for (const damage of damages) {
    const p = make('cluster_size=4096', '2M', writes);
    const raw = rawOf(p);
    damage(p, geo(p));
    await agree(p, { raw });
  }
});

test('broken snapshot table', { skip: !haveQemu }, async () => {
  const damages: Array<(p: string, sn: number) => void> = [
    (p, sn) => poke64(p, sn, u64(p, sn) + 0x200n), // snapshot L1 unaligned
    (p, sn) => poke(p, sn + 8, new Uint8Array([1, 0, 0, 0])), // snapshot L1 too large
    (p, sn) => poke64(p, 64, BigInt(sn + 8)), // table offset invalid
  ];
  for (const damage of damages) {
    const p = make('cluster_size=4096', '2M', ['write -P 1 0 64k']);
    must('qemu-img', ['snapshot', '-c', 's1', p]);
    must('qemu-io', ['-c', 'write -P 2 0 4k', p]);
    damage(p, Number(u64(p, 64)));
    await agree(p);
  }
});

test('wrong COPIED flags (cleared and set)', { skip: !haveQemu }, async () => {
  const p = make('cluster_size=4096', '2M', writes);
  must('qemu-img', ['snapshot', '-c', 's1', p]);
  must('qemu-io', ['-c', 'write -P 5 1M 4k', p]);
  const raw = rawOf(p);
  const l2 = l2Offset(p);
  // Entry 0 is shared with the snapshot (refcount 2): set COPIED; entry 256 (1M) has refcount 1: clear it.
  poke64(p, l2, u64(p, l2) | (1n << 63n));
  poke64(p, l2 + 8 * 256, u64(p, l2 + 8 * 256) & ~(1n << 63n));
  // The L1 entry: its L2 table has refcount 1 now; clear the flag.
  poke64(p, geo(p).l1, l1Entry(p, 0) & ~(1n << 63n));
  await agree(p, { status: 2, raw });
});

test('L2 entry pointing past EOF', { skip: !haveQemu }, async () => {
  const p = make('cluster_size=4096', '2M', writes);
  const l2 = l2Offset(p);
  poke64(p, l2 + 8 * 100, (1n << 63n) | 0x10000000n);
  await agree(p, { status: 2 });
});

test('reserved bits and misaligned entries', { skip: !haveQemu }, async () => {
  const p = make('cluster_size=4096', '2M', writes);
  const l2 = l2Offset(p);
  poke64(p, l2 + 8 * 1, u64(p, l2 + 8 * 1) | 0x2n); // reserved bit
  poke64(p, l2 + 8 * 200, (1n << 63n) | 0x3200n | 1n); // misaligned preallocated zero cluster
  await agree(p, { status: 2 });
});

test('overlapping L1 and refcount table', { skip: !haveQemu }, async () => {
  const p = make('cluster_size=4096', '8M', writes);
  const g = geo(p);
  // A second L1 entry whose L2 table is the refcount table.
  poke64(p, g.l1 + 8, (1n << 63n) | BigInt(g.reftable));
  await agree(p, { status: 2 });
});

test('header L1 offset onto the refcount table', { skip: !haveQemu }, async () => {
  const p = make('cluster_size=4096', '2M', writes);
  poke64(p, 40, BigInt(geo(p).reftable));
  await agree(p, { status: 2 });
});

test('corrupt bit set on a leaky image', { skip: !haveQemu }, async () => {
  const p = make('cluster_size=4096', '2M', writes);
  const raw = rawOf(p);
  setRefcount(p, hostOf(p, 0) / 4096, 2);
  poke64(p, 72, u64(p, 72) | 2n);
  await agree(p, { raw });
});

test('compressed cluster with COPIED set, extended L2 damage', { skip: !haveQemu }, async () => {
  const p = make('cluster_size=4096', '2M', ['write -c -P 1 0 4k', 'write -P 2 4k 4k']);
  const l2 = l2Offset(p);
  poke64(p, l2, u64(p, l2) | (1n << 63n));
  await agree(p, { status: 2, modes: ['none'] });
  const x = make('extended_l2=on,cluster_size=65536', '4M', ['write -P 1 0 4k', 'write -P 2 64k 64k']);
  const xl2 = l2Offset(x);
  poke64(x, xl2 + 8, u64(x, xl2 + 8) | (1n << 32n) | 1n); // subcluster 0 both zero and allocated
  poke64(x, xl2 + 16 * 5 + 8, 3n); // unallocated cluster with allocation bits
  await agree(x, { status: 2, modes: ['none'] });
});

// --- lazy refcounts left dirty ---------------------------------------------

function dirtyImage(): { p: string; raw: string } {
  const p = make('lazy_refcounts=on,cluster_size=4096', '2M', ['write -P 1 0 64k']);
  const r = run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 2 1M 64k', '-c', 'write -P 3 8k 4k', '-c', 'abort', p]);
  assert.notEqual(r.status, 0);
  assert.equal(u64(p, 72) & 1n, 1n, 'dirty bit set');
  // What the data should read as, from a copy qemu repairs on open.
  const c = `${p}.copy`;
  copyFileSync(p, c);
  must('qemu-io', ['-c', 'read -P 2 1M 64k', c]);
  return { p, raw: rawOf(c) };
}

test('lazy refcounts left dirty: check and repair', { skip: !haveQemu }, async () => {
  const { p, raw } = dirtyImage();
  await agree(p, { raw });
});

test('lazy refcounts left dirty: writable open repairs it', { skip: !haveQemu }, async () => {
  const { p, raw } = dirtyImage();
  const img = await openImageFile(p, { writable: true });
  try {
    const got = new Uint8Array(65536);
    await img.read(1 << 20, got);
    assert.ok(got.every((b) => b === 2));
    await img.write(1536 << 10, new Uint8Array(8192).fill(9));
    await img.flush();
  } finally {
    await img.close();
  }
  assert.equal(u64(p, 72) & 1n, 0n, 'dirty bit cleared');
  assert.equal(run('qemu-img', ['check', p]).status, 0);
  must('qemu-io', ['-f', 'raw', '-c', 'write -P 9 1536k 8k', raw]);
  assert.equal(run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', raw, p]).status, 0);
});
