/**
 * Persistent dirty bitmaps: images whose bitmaps qemu-img made keep them
 * through qimg's writes (library and `qimg io`), dirtied exactly where
 * qemu-io dirties them (read back through qemu-nbd and nbdinfo), and
 * `qimg bitmap` does what `qemu-img bitmap` does: same messages, exit
 * codes, `info --output=json` and dirty maps.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, openSync, closeSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { openImageFile, listBitmaps, addBitmap, mergeBitmap, removeBitmap } from '../../src/node.js';
import { asQemu, qemuImg, qemuIo, qimg, requireTools, tmpDir } from '../helpers/tools.js';
import { dirtyMap, haveNbdTools } from '../helpers/dirty-map.js';

const haveNbd = haveNbdTools;
if (!haveNbd && process.env.CI) throw new Error('qemu-nbd and nbdinfo (libnbd-bin) are required when CI is set');

const SIZE = 64 << 20;

/** b1: 64 KiB, b2: 512 B, b3: 1 MiB and disabled, as qemu-img bitmap makes them. */
function fixture(dir: string, name = 'base.qcow2'): string {
  const f = join(dir, name);
  assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', f, String(SIZE)]).status, 0);
  assert.equal(qemuImg(['bitmap', '--add', f, 'b1']).status, 0);
  assert.equal(qemuIo(['-c', 'write -P 7 0 100k', f]).status, 0);
  assert.equal(qemuImg(['bitmap', '--add', '-g', '512', f, 'b2']).status, 0);
  assert.equal(qemuImg(['bitmap', '--add', '--disable', '-g', '1M', f, 'b3']).status, 0);
  return f;
}

function copy(src: string, dir: string, name: string): string {
  const f = join(dir, name);
  copyFileSync(src, f);
  return f;
}

/** The map a bitmap of granularity g must show after writes to `ranges`. */
function expectedMap(ranges: Array<[number, number]>, g: number, size = SIZE): string {
  const dirty = new Uint8Array(Math.ceil(size / g));
  for (const [off, len] of ranges) for (let i = Math.floor(off / g); i <= Math.floor((off + len - 1) / g); i++) dirty[i] = 1;
  let out = '';
  let start = 0;
  for (let i = 1; i <= dirty.length; i++) {
    if (i === dirty.length || dirty[i] !== dirty[start]) {
      const end = Math.min(i * g, size);
      const d = dirty[start] === 1;
      out += `${String(start * g).padStart(10)}${String(end - start * g).padStart(12)}    ${d ? 1 : 0}  ${d ? 'dirty' : 'clean'}\n`;
      start = i;
    }
  }
  return out;
}

function infoJson(file: string): unknown {
  const r = qemuImg(['info', '--output=json', file]);
  assert.equal(r.status, 0, r.stderr);
  const j = JSON.parse(r.stdout) as Record<string, unknown>;
  delete j.filename;
  delete j['actual-size'];
  return j;
}

function bitmapsOf(file: string): Array<{ name: string; flags: string[]; granularity: number }> {
  const j = infoJson(file) as { 'format-specific': { data: { bitmaps?: Array<{ name: string; flags: string[]; granularity: number }> } } };
  return j['format-specific'].data.bitmaps ?? [];
}

function assertClean(file: string): void {
  const r = qemuImg(['check', file]);
  assert.equal(r.status, 0, r.stdout + r.stderr);
}

/** Set the in-use flag of one bitmap in the directory, as a crash of its writer leaves it. */
function flagInUse(file: string, bitmap: string): void {
  const fd = openSync(file, 'r+');
  try {
    const h = Buffer.alloc(65536);
    readSync(fd, h, 0, h.length, 0);
    let p = h.readUInt32BE(100);
    let dirOff = 0;
    let dirSize = 0;
    for (;;) {
      const magic = h.readUInt32BE(p);
      const len = h.readUInt32BE(p + 4);
      if (magic === 0) throw new Error('no bitmaps extension');
      if (magic === 0x23852875) {
        dirSize = Number(h.readBigUInt64BE(p + 16));
        dirOff = Number(h.readBigUInt64BE(p + 24));
        break;
      }
      p += 8 + ((len + 7) & ~7);
    }
    const d = Buffer.alloc(dirSize);
    readSync(fd, d, 0, dirSize, dirOff);
    for (let q = 0; q < d.length; ) {
      const nameSize = d.readUInt16BE(q + 18);
      const extra = d.readUInt32BE(q + 20);
      if (d.subarray(q + 24 + extra, q + 24 + extra + nameSize).toString() === bitmap) d.writeUInt32BE(d.readUInt32BE(q + 12) | 1, q + 12);
      q += (24 + extra + nameSize + 7) & ~7;
    }
    writeSync(fd, d, 0, d.length, dirOff);
  } finally {
    closeSync(fd);
  }
}

const ioCommands = ['write -P 1 0 4k', 'write -P 2 3M 1M', 'write -z 10M 100k', 'discard 20M 64k', 'write -P 3 33554431 2', 'write -P 4 1000 1000'];
const written: Array<[number, number]> = [
  [0, 4096],
  [3 << 20, 1 << 20],
  [10 << 20, 100 << 10],
  [20 << 20, 64 << 10],
  [33554431, 2],
  [1000, 1000],
];

test('qimg io keeps the bitmaps and dirties what it writes, as qemu-io does', { skip: !haveNbd }, (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const base = fixture(dir);
  const ours = copy(base, dir, 'ours.qcow2');
  const theirs = copy(base, dir, 'theirs.qcow2');
  const args = ioCommands.flatMap((c) => ['-c', c]);
  const a = qimg(['io', ...args, ours]);
  assert.equal(a.status, 0, a.stderr);
  assert.equal(qemuIo([...args, theirs]).status, 0);
  assert.deepEqual(infoJson(ours), infoJson(theirs));
  assert.deepEqual(
    bitmapsOf(ours).map((b) => [b.name, b.flags]),
    [
      ['b1', ['auto']],
      ['b2', ['auto']],
      ['b3', []],
    ],
  );
  assertClean(ours);
  // b1 had the fixture's 100k write already; b2 was added after it; b3 is disabled.
  assert.equal(dirtyMap(ours, 'b1'), expectedMap([[0, 100 << 10], ...written], 65536));
  assert.equal(dirtyMap(ours, 'b2'), expectedMap(written, 512));
  assert.equal(dirtyMap(ours, 'b3'), expectedMap([], 1 << 20));
  for (const b of ['b1', 'b2', 'b3']) assert.equal(dirtyMap(ours, b), dirtyMap(theirs, b), b);
});

test('bitmaps follow a resize of the open image (grow, shrink, grow) and record writes past the old end, as qemu-io does', { skip: !haveNbd }, (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const base = fixture(dir);
  const ours = copy(base, dir, 'ours.qcow2');
  const theirs = copy(base, dir, 'theirs.qcow2');
  const cmds = ['write -P 1 60M 1M', 'truncate 80M', 'write -P 2 70M 64k', 'truncate 40M', 'truncate 96M', 'write -P 3 90M 4k'];
  const args = cmds.flatMap((c) => ['-c', c]);
  const a = qimg(['io', ...args, ours]);
  assert.equal(a.status, 0, a.stderr);
  assert.equal(qemuIo([...args, theirs]).status, 0);
  assert.deepEqual(infoJson(ours), infoJson(theirs));
  assertClean(ours);
  // The shrink dropped the 60M and 70M writes' bits; the 90M write, past the first size, is recorded.
  assert.match(dirtyMap(ours, 'b2'), /94371840\s+4096\s+1\s+dirty/);
  for (const b of ['b1', 'b2', 'b3']) assert.equal(dirtyMap(ours, b), dirtyMap(theirs, b), b);
});

test('library writes dirty the enabled bitmaps; the image stays clean for qemu', { skip: !haveNbd }, async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const base = fixture(dir);
  const ours = copy(base, dir, 'ours.qcow2');
  const img = await openImageFile(ours, { writable: true });
  await Promise.all([img.write(5 << 20, new Uint8Array(70000).fill(9)), img.write(40 << 20, new Uint8Array(512).fill(1))]);
  await img.writeZeroes(50 << 20, 3 << 20, { mayUnmap: true });
  await img.discard(0, 65536);
  await img.flush();
  await img.write(63 << 20, new Uint8Array(4096).fill(2));
  assert.deepEqual(
    (await listBitmaps(img)).map((b) => [b.name, b.granularity, b.enabled, b.inconsistent]),
    [
      ['b1', 65536, true, false],
      ['b2', 512, true, false],
      ['b3', 1 << 20, false, false],
    ],
  );
  await img.close();
  const ranges: Array<[number, number]> = [
    [5 << 20, 70000],
    [40 << 20, 512],
    [50 << 20, 3 << 20],
    [0, 65536],
    [63 << 20, 4096],
  ];
  assert.ok(bitmapsOf(ours).every((b) => !b.flags.includes('in-use')));
  assertClean(ours);
  assert.equal(dirtyMap(ours, 'b1'), expectedMap([[0, 100 << 10], ...ranges], 65536));
  assert.equal(dirtyMap(ours, 'b2'), expectedMap(ranges, 512));
  assert.equal(dirtyMap(ours, 'b3'), expectedMap([], 1 << 20));
});

test('between the first write and close, the bitmaps are flagged in-use on disk', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const f = fixture(dir);
  const img = await openImageFile(f, { writable: true });
  const flagsNow = (): string[][] => {
    const r = qemuImg(['info', '-U', '--output=json', f]);
    assert.equal(r.status, 0, r.stderr);
    return (JSON.parse(r.stdout) as { 'format-specific': { data: { bitmaps: Array<{ flags: string[] }> } } })['format-specific'].data.bitmaps.map((b) => b.flags);
  };
  // Opening alone changes nothing.
  assert.deepEqual(flagsNow(), [['auto'], ['auto'], []]);
  await img.write(0, new Uint8Array(512));
  assert.deepEqual(flagsNow(), [['in-use', 'auto'], ['in-use', 'auto'], ['in-use']]);
  await img.close();
  assert.deepEqual(bitmapsOf(f).map((b) => b.flags), [['auto'], ['auto'], []]);
});

test('a bitmap left in-use stays in-use and untouched; the others are kept', { skip: !haveNbd }, (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const base = fixture(dir);
  flagInUse(base, 'b1');
  const ours = copy(base, dir, 'ours.qcow2');
  const theirs = copy(base, dir, 'theirs.qcow2');
  assert.equal(qimg(['io', '-c', 'write 8M 64k', ours]).status, 0);
  assert.equal(qemuIo(['-c', 'write 8M 64k', theirs]).status, 0);
  assert.deepEqual(infoJson(ours), infoJson(theirs));
  assert.deepEqual(bitmapsOf(ours).map((b) => b.flags), [['in-use', 'auto'], ['auto'], []]);
  assertClean(ours);
  assert.equal(dirtyMap(ours, 'b2'), expectedMap([[8 << 20, 64 << 10]], 512));
});

const normalise = (s: string, file: string): string => s.replaceAll(file, 'IMG').replace(/#block\d+/g, '#blockN');

/** Argument lists: IMG is the image, SRC a second image with bitmaps. */
const bitmapCases: string[][] = [
  ['--add', 'IMG', 'new'],
  ['--add', '-g', '512', '--disable', 'IMG', 'new'],
  ['--add', '-g', '2G', 'IMG', 'new'],
  ['--add', '-g', '0', 'IMG', 'new'],
  ['--add', '-g', '4294967808', 'IMG', 'new'],
  ['--add', 'IMG', 'b1'],
  ['--add', 'IMG', ''],
  ['--add', 'IMG', 'n'.repeat(1024)],
  ['--add', '-g', '3k', 'IMG', 'x'],
  ['--add', '-g', '4G', 'IMG', 'x'],
  ['--add', '-g', '-1', 'IMG', 'x'],
  ['--add', '-g', '8E', 'IMG', 'x'],
  ['--add', '-g', '7E', 'IMG', 'x'],
  ['--remove', 'IMG', 'b1'],
  ['--remove', 'IMG', 'nope'],
  ['--remove', '--add', '--add', 'IMG', 'b1'],
  ['--clear', 'IMG', 'b1'],
  ['--clear', 'IMG', 'b3'],
  ['--enable', 'IMG', 'b3'],
  ['--disable', 'IMG', 'b1'],
  ['--disable', '--enable', '--disable', 'IMG', 'b2'],
  ['--merge', 'b2', 'IMG', 'b1'],
  ['--merge', 'b1', 'IMG', 'b3'],
  ['--merge', 'nope', 'IMG', 'b1'],
  ['--merge', 'b1', 'IMG', 'nope'],
  ['--merge', 's1', '-b', 'SRC', 'IMG', 'b2'],
  ['--merge', 's1', '-b', 'SRC', '-F', 'qcow2', 'IMG', 'b3'],
  ['--merge', 's1', '-b', 'SRC', '-F', 'raw', 'IMG', 'b3'],
  ['--merge', 'b1', '-b', 'SRC', 'IMG', 'b3'],
  ['--clear', '-b', 'SRC', 'IMG', 'b1'],
  ['--clear', '-F', 'qcow2', 'IMG', 'b1'],
  ['-g', '1M', '--remove', 'IMG', 'b1'],
  ['IMG', 'b1'],
  ['--add', 'IMG'],
  ['--add', 'IMG', 'b1', 'extra'],
  ['--add', '-f', 'raw', 'IMG', 'x'],
  ['--remove', '-f', 'raw', 'IMG', 'x'],
  ['--bogus', 'IMG', 'b1'],
];

test('qimg bitmap matches qemu-img bitmap: output, exit code, info and dirty maps', { skip: !haveNbd }, (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const base = fixture(dir);
  const src = join(dir, 'src.qcow2');
  assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', src, String(SIZE)]).status, 0);
  assert.equal(qemuImg(['bitmap', '--add', '-g', '4096', src, 's1']).status, 0);
  assert.equal(qemuIo(['-c', 'write 7M 5000', '-c', 'write 60M 1', src]).status, 0);
  for (const c of bitmapCases) {
    const ours = copy(base, dir, 'ours.qcow2');
    const theirs = copy(base, dir, 'theirs.qcow2');
    const label = c.join(' ').slice(0, 80);
    const a = qimg(c.map((x) => (x === 'IMG' ? ours : x === 'SRC' ? src : x)).reduce<string[]>((acc, x) => [...acc, x], ['bitmap']));
    const b = qemuImg(['bitmap', ...c.map((x) => (x === 'IMG' ? theirs : x === 'SRC' ? src : x))]);
    assert.equal(a.status, b.status, `${label}: ${a.stderr}`);
    assert.equal(normalise(asQemu(a.stderr), ours), normalise(b.stderr, theirs), label);
    assert.equal(a.stdout, b.stdout, label);
    assert.deepEqual(infoJson(ours), infoJson(theirs), label);
    assertClean(ours);
    for (const bm of bitmapsOf(theirs)) {
      if (bm.flags.includes('in-use')) continue;
      assert.equal(dirtyMap(ours, bm.name), dirtyMap(theirs, bm.name), `${label}: ${bm.name}`);
    }
  }
});

test('qimg bitmap on inconsistent bitmaps, QED, raw and qcow2 v2 images', (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const inUse = fixture(dir, 'inuse.qcow2');
  flagInUse(inUse, 'b1');
  const v2 = join(dir, 'v2.qcow2');
  assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', v2, '1M']).status, 0);
  const qed = join(dir, 'e.qed');
  assert.equal(qemuImg(['create', '-q', '-f', 'qed', qed, '1M']).status, 0);
  const raw = join(dir, 'r.raw');
  assert.equal(qemuImg(['create', '-q', '-f', 'raw', raw, '1M']).status, 0);
  const cases: Array<[string, string[]]> = [
    [inUse, ['--clear', 'IMG', 'b1']],
    [inUse, ['--enable', 'IMG', 'b1']],
    [inUse, ['--disable', 'IMG', 'b1']],
    [inUse, ['--merge', 'b2', 'IMG', 'b1']],
    [inUse, ['--merge', 'b1', 'IMG', 'b2']],
    [inUse, ['--remove', 'IMG', 'b1']],
    [inUse, ['--add', 'IMG', 'c']],
    [v2, ['--add', 'IMG', 'x']],
    [v2, ['--remove', 'IMG', 'x']],
    [qed, ['--add', 'IMG', 'x']],
    [qed, ['--clear', 'IMG', 'x']],
    [raw, ['--add', 'IMG', 'x']],
    [raw, ['--enable', 'IMG', 'x']],
  ];
  for (const [file, c] of cases) {
    const ext = file.slice(file.lastIndexOf('.'));
    const ours = copy(file, dir, `ours${ext}`);
    const theirs = copy(file, dir, `theirs${ext}`);
    const label = `${file}: ${c.join(' ')}`;
    const a = qimg(['bitmap', ...c.map((x) => (x === 'IMG' ? ours : x))]);
    const b = qemuImg(['bitmap', ...c.map((x) => (x === 'IMG' ? theirs : x))]);
    assert.equal(a.status, b.status, `${label}: ${a.stderr}`);
    assert.equal(normalise(asQemu(a.stderr), ours), normalise(b.stderr, theirs), label);
    if (ext === '.qcow2') {
      assert.deepEqual(infoJson(ours), infoJson(theirs), label);
      assertClean(ours);
    }
  }
});

test('library bitmap operations: add, merge, remove, and their refusals', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const f = fixture(dir);
  const img = await openImageFile(f, { writable: true });
  await addBitmap(img, 'fresh', { granularity: 4096, disabled: true });
  await assert.rejects(addBitmap(img, 'fresh'), /Bitmap already exists: fresh/);
  await assert.rejects(addBitmap(img, 'x', { granularity: 1000 }), /Granularity must be power of 2 and at least 512/);
  await mergeBitmap(img, 'fresh', 'b1');
  await removeBitmap(img, 'b2');
  await assert.rejects(removeBitmap(img, 'b2'), /Dirty bitmap 'b2' not found/);
  await img.close();
  assert.deepEqual(
    bitmapsOf(f).map((b) => [b.name, b.granularity, b.flags]),
    [
      ['b1', 65536, ['auto']],
      ['b3', 1 << 20, []],
      ['fresh', 4096, []],
    ],
  );
  assertClean(f);
  const ro = await openImageFile(f);
  assert.deepEqual((await listBitmaps(ro)).map((b) => b.name), ['b1', 'b3', 'fresh']);
  await assert.rejects(addBitmap(ro, 'y'), /read-only/);
  await ro.close();
});

test('convert -n into an image with bitmaps dirties them as qemu-img convert -n does', { skip: !haveNbd }, (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const base = fixture(dir);
  const src = join(dir, 'src.raw');
  assert.equal(qemuImg(['create', '-q', '-f', 'raw', src, String(SIZE)]).status, 0);
  assert.equal(qemuIo(['-f', 'raw', '-c', 'write -P 3 1M 64k', src]).status, 0);
  const ours = copy(base, dir, 'ours.qcow2');
  const theirs = copy(base, dir, 'theirs.qcow2');
  assert.equal(qimg(['convert', '-n', '-f', 'raw', '-O', 'qcow2', src, ours]).status, 0);
  assert.equal(qemuImg(['convert', '-n', '-f', 'raw', '-O', 'qcow2', src, theirs]).status, 0);
  assert.deepEqual(infoJson(ours), infoJson(theirs));
  assertClean(ours);
  for (const b of ['b1', 'b2', 'b3']) assert.equal(dirtyMap(ours, b), dirtyMap(theirs, b), b);
});

test('convert --bitmaps copies bitmaps as qemu-img does, and refuses what it refuses', { skip: !haveNbd }, (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const src = fixture(dir, 'src.qcow2');
  const broken = copy(src, dir, 'broken.qcow2');
  flagInUse(broken, 'b2');
  const raw = join(dir, 'src.raw');
  assert.equal(qemuImg(['create', '-q', '-f', 'raw', raw, String(SIZE)]).status, 0);
  const existing = join(dir, 'existing.qcow2');
  assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', existing, String(SIZE)]).status, 0);
  assert.equal(qemuImg(['bitmap', '--add', existing, 'b1']).status, 0);
  const cases: Array<{ args: string[]; ext?: string; pre?: string }> = [
    { args: ['--bitmaps', '-O', 'qcow2', src, 'OUT'] },
    { args: ['--bitmaps', '-O', 'qcow2', '-o', 'cluster_size=4096', src, 'OUT'] },
    { args: ['--bitmaps', '-O', 'raw', src, 'OUT'], ext: 'raw' },
    { args: ['--bitmaps', '-O', 'qed', src, 'OUT'], ext: 'qed' },
    { args: ['--bitmaps', '-O', 'qcow2', '-o', 'compat=0.10', src, 'OUT'] },
    { args: ['--bitmaps', '-O', 'qcow2', src, src, 'OUT'] },
    { args: ['--bitmaps', '-O', 'qcow2', raw, 'OUT'] },
    { args: ['--bitmaps', '-O', 'qcow2', broken, 'OUT'] },
    { args: ['--bitmaps', '--skip-broken-bitmaps', '-O', 'qcow2', broken, 'OUT'] },
    { args: ['--skip-broken-bitmaps', '-O', 'qcow2', src, 'OUT'] },
    { args: ['--bitmaps', '-n', '-O', 'qcow2', src, 'OUT'], pre: existing },
  ];
  for (const c of cases) {
    const ext = c.ext ?? 'qcow2';
    const ours = join(dir, `ours.${ext}`);
    const theirs = join(dir, `theirs.${ext}`);
    for (const f of [ours, theirs]) {
      spawnSync('rm', ['-f', f]);
      if (c.pre) copyFileSync(c.pre, f);
    }
    const label = c.args.join(' ').replaceAll(dir, '');
    const a = qimg(['convert', ...c.args.map((x) => (x === 'OUT' ? ours : x))]);
    const b = qemuImg(['convert', ...c.args.map((x) => (x === 'OUT' ? theirs : x))]);
    assert.equal(a.status, b.status, `${label}: ${a.stderr}`);
    assert.equal(asQemu(a.stderr).replaceAll(ours, 'OUT').replaceAll("'qimg bitmap", "'qemu-img bitmap"), b.stderr.replaceAll(theirs, 'OUT'), label);
    const made = spawnSync('test', ['-f', theirs]).status === 0;
    assert.equal(spawnSync('test', ['-f', ours]).status === 0, made, `${label}: output created?`);
    if (!made || ext !== 'qcow2') continue;
    assert.deepEqual(infoJson(ours), infoJson(theirs), label);
    assertClean(ours);
    for (const bm of bitmapsOf(theirs)) assert.equal(dirtyMap(ours, bm.name), dirtyMap(theirs, bm.name), `${label}: ${bm.name}`);
  }
});
