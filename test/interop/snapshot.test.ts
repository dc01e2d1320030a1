/**
 * Interop, internal snapshots: `qimg snapshot` and `qimg convert -l`
 * against qemu-img 7.2 on images qemu-img and qemu-io made (v2 and v3,
 * small and large clusters, compressed and zero clusters, extended L2,
 * snapshots qemu made). After every operation `qemu-img check` must find
 * the image clean (no corruption, no leak); a snapshot qimg made must read
 * through qemu-img as the image read when it was made; a snapshot deleted
 * or applied by qimg must leave the image qemu-img leaves on a copy.
 */
import assert from 'node:assert/strict';
import { closeSync, copyFileSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { asQemu, qemuImg, qemuIo, qimg, requireTools, tmpDir, type RunResult } from '../helpers/tools.js';

const env = { TZ: 'UTC' };

const variants = [
  { name: 'v3, 64k clusters', opts: 'cluster_size=65536', cluster: 65536 },
  { name: 'v2, 64k clusters', opts: 'compat=0.10', cluster: 65536 },
  { name: 'v3, 512-byte clusters', opts: 'cluster_size=512', cluster: 512 },
  { name: 'v3, 2M clusters', opts: 'cluster_size=2M', cluster: 2 << 20 },
  { name: 'v3, extended L2, 32k clusters', opts: 'cluster_size=32768,extended_l2=on', cluster: 32768 },
  { name: 'v3, refcount_bits=2', opts: 'refcount_bits=2', cluster: 65536 },
];
const SIZE = '8M';
/** Compressed writes fill whole clusters that hold nothing yet (qemu refuses others). */
const compressedLength = (v: (typeof variants)[number]): number => Math.max(65536, v.cluster);

function ok(r: RunResult, what: string): RunResult {
  assert.equal(r.status, 0, `${what}: exit ${r.status}\n${r.stdout}${r.stderr}`);
  return r;
}

/** qemu-img check: clean, no leaks, no OFLAG_COPIED complaints. */
function assertClean(path: string, what: string): void {
  const r = qemuImg(['check', path]);
  assert.equal(r.status, 0, `${what}: qemu-img check exit ${r.status}\n${r.stdout}${r.stderr}`);
  assert.match(r.stdout, /No errors were found on the image/, what);
}

function io(path: string, cmds: string[]): void {
  ok(qemuIo(['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), path]), `qemu-io ${cmds.join('; ')}`);
}

function toRaw(path: string, out: string, snapshot?: string): void {
  ok(qemuImg(['convert', ...(snapshot === undefined ? [] : ['-l', snapshot]), '-O', 'raw', path, out]), `qemu-img convert ${snapshot ?? ''}`);
}

function identical(a: string, b: string, what: string): void {
  const r = qemuImg(['compare', a, b]);
  assert.equal(r.status, 0, `${what}: ${r.stdout}${r.stderr}`);
}

function snapshotsOf(path: string): unknown {
  return (JSON.parse(ok(qemuImg(['info', '--output=json', path]), 'info').stdout) as { snapshots?: unknown }).snapshots;
}

/** An image with data, compressed and zero clusters, a snapshot qemu made ("q1"), and writes after it. */
function makeImage(dir: string, v: (typeof variants)[number]): string {
  const path = join(dir, 'img.qcow2');
  ok(qemuImg(['create', '-q', '-f', 'qcow2', '-o', v.opts, path, SIZE]), 'create');
  io(path, [`write -c -P 0x33 4M ${compressedLength(v)}`, 'write -P 0x11 0 192k', 'write -P 0x44 600k 100k']);
  ok(qemuImg(['snapshot', '-c', 'q1', path]), 'qemu-img snapshot -c');
  io(path, ['write -P 0x22 64k 64k', 'write -z 600k 64k', 'write -P 0x55 2M 4k']);
  assertClean(path, 'fixture');
  return path;
}

for (const v of variants) {
  test(`snapshot create, read, delete, apply: ${v.name}`, (t) => {
    if (!requireTools(t)) return;
    const dir = tmpDir();
    const path = makeImage(dir, v);
    const before = join(dir, 'before.raw');
    toRaw(path, before);

    // Create: qemu-img lists it as qimg does, and reads it as the image was.
    ok(qimg(['snapshot', '-c', 'mine', path], { env }), 'qimg snapshot -c');
    assertClean(path, 'after create');
    const listed = ok(qemuImg(['snapshot', '-l', path], { env }), 'qemu-img snapshot -l');
    assert.match(listed.stdout, /^2 {9}mine {13}/m);
    const ours = ok(qimg(['snapshot', '-l', path], { env }), 'qimg snapshot -l');
    assert.equal(ours.stdout, listed.stdout);
    assert.equal(ours.stderr, '');
    const sn = (snapshotsOf(path) as Array<Record<string, unknown>>)[1]!;
    assert.deepEqual({ ...sn, 'date-sec': 0, 'date-nsec': 0 }, { icount: 0, 'vm-clock-nsec': 0, name: 'mine', 'date-sec': 0, 'date-nsec': 0, 'vm-clock-sec': 0, id: '2', 'vm-state-size': 0 });
    assert.ok(Math.abs((sn['date-sec'] as number) - Date.now() / 1000) < 120, 'snapshot date is now');

    // Writes after the snapshot do not reach it.
    io(path, ['write -P 0x66 0 256k', 'write -z 1M 64k', 'discard 600k 64k', `write -c -P 0x77 6M ${compressedLength(v)}`]);
    assertClean(path, 'after writes over the snapshot');
    const atSnapshot = join(dir, 'at-snapshot.raw');
    toRaw(path, atSnapshot, 'mine');
    identical(before, atSnapshot, 'qemu-img convert -l mine');
    const now = join(dir, 'now.raw');
    toRaw(path, now);
    assert.notEqual(qemuImg(['compare', before, now]).status, 0, 'the active image changed');

    // qimg convert -l reads what qemu-img convert -l reads, for each way of naming a snapshot.
    for (const l of ['mine', '2', 'q1', 'snapshot.id=1', 'snapshot.name=mine', 'snapshot.id=2,snapshot.name=mine']) {
      const theirs = join(dir, 'theirs.raw');
      const mineOut = join(dir, 'ours.raw');
      ok(qemuImg(['convert', '-l', l, '-O', 'raw', path, theirs]), `qemu-img convert -l ${l}`);
      ok(qimg(['convert', '-l', l, '-O', 'raw', path, mineOut]), `qimg convert -l ${l}`);
      identical(theirs, mineOut, `convert -l ${l}`);
    }

    // Delete and apply, each by qimg and by qemu-img on copies of the same image.
    for (const [op, name] of [
      ['-d', 'q1'],
      ['-d', 'mine'],
      ['-a', 'q1'],
      ['-a', '2'],
    ] as const) {
      const a = join(dir, 'a.qcow2');
      const b = join(dir, 'b.qcow2');
      copyFileSync(path, a);
      copyFileSync(path, b);
      const theirs = qemuImg(['snapshot', op, name, b]);
      const ours = qimg(['snapshot', op, name, a]);
      assert.equal(asQemu(ours.stderr), theirs.stderr, `snapshot ${op} ${name}`);
      assert.equal(ours.status, theirs.status, `snapshot ${op} ${name}`);
      assertClean(a, `after qimg snapshot ${op} ${name}`);
      if (theirs.status !== 0) {
        // qemu refuses (a refcount would pass its maximum): qimg refuses before writing anything.
        identical(a, path, `refused snapshot ${op} ${name}`);
        assert.deepEqual(snapshotsOf(a), snapshotsOf(path));
        continue;
      }
      identical(a, b, `active layer after snapshot ${op} ${name}`);
      assert.deepEqual(snapshotsOf(a), snapshotsOf(b));
      // The remaining snapshots still read as qemu-img reads them on its copy.
      for (const s of (snapshotsOf(b) as Array<{ id: string }> | undefined) ?? []) {
        const ra = join(dir, 'ra.raw');
        const rb = join(dir, 'rb.raw');
        toRaw(a, ra, `snapshot.id=${s.id}`);
        toRaw(b, rb, `snapshot.id=${s.id}`);
        identical(ra, rb, `snapshot ${s.id} after ${op} ${name}`);
      }
      // Writing after the operation copies shared clusters instead of changing a snapshot.
      io(a, ['write -P 0x99 0 5M']);
      io(b, ['write -P 0x99 0 5M']);
      assertClean(a, `writes after qimg snapshot ${op} ${name}`);
      for (const s of (snapshotsOf(b) as Array<{ id: string }> | undefined) ?? []) {
        const ra = join(dir, 'ra.raw');
        const rb = join(dir, 'rb.raw');
        toRaw(a, ra, `snapshot.id=${s.id}`);
        toRaw(b, rb, `snapshot.id=${s.id}`);
        identical(ra, rb, `snapshot ${s.id} after ${op} ${name} and writes`);
      }
    }
  });
}

test('snapshot apply resizes the image to the snapshot size, as qemu-img does', (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const path = join(dir, 'img.qcow2');
  ok(qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', path, '1M']), 'create');
  io(path, ['write -P 0x11 0 1M']);
  ok(qimg(['snapshot', '-c', 'small', path]), 'create small');
  // 4k clusters: 64M needs a larger L1 table than 1M had, so applying "big" grows it.
  ok(qemuImg(['resize', '-q', path, '64M']), 'resize');
  io(path, ['write -P 0x22 60M 1M']);
  ok(qimg(['snapshot', '-c', 'big', path]), 'create big');
  ok(qemuImg(['resize', '-q', '--shrink', path, '512k']), 'shrink');
  for (const name of ['big', 'small', 'big']) {
    const a = join(dir, 'a.qcow2');
    const b = join(dir, 'b.qcow2');
    copyFileSync(path, a);
    copyFileSync(path, b);
    ok(qimg(['snapshot', '-a', name, a]), `qimg -a ${name}`);
    ok(qemuImg(['snapshot', '-a', name, b]), `qemu-img -a ${name}`);
    assertClean(a, `after -a ${name}`);
    identical(a, b, `after -a ${name}`);
    const size = (p: string) => (JSON.parse(qemuImg(['info', '--output=json', p]).stdout) as { 'virtual-size': number })['virtual-size'];
    assert.equal(size(a), size(b));
    copyFileSync(a, path);
  }
});

test('snapshot errors and edge cases print what qemu-img prints', (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const q = join(dir, 'img.qcow2');
  ok(qemuImg(['create', '-q', '-f', 'qcow2', q, '1M']), 'create');
  ok(qemuImg(['snapshot', '-c', 's1', q]), 'snapshot');
  ok(qemuImg(['snapshot', '-c', '1', q]), 'snapshot named like an id');
  const raw = join(dir, 'img.raw');
  ok(qemuImg(['create', '-q', '-f', 'raw', raw, '1M']), 'create raw');
  const qed = join(dir, 'img.qed');
  ok(qemuImg(['create', '-q', '-f', 'qed', qed, '1M']), 'create qed');
  const dataFile = join(dir, 'df.qcow2');
  ok(qemuImg(['create', '-q', '-f', 'qcow2', '-o', `data_file=${join(dir, 'df.raw')}`, dataFile, '1M']), 'create data_file');
  const r1 = join(dir, 'r1.qcow2');
  ok(qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'refcount_bits=1', r1, '1M']), 'create refcount_bits=1');
  io(r1, ['write 0 64k']);
  const cases: string[][] = [
    ['-l', q],
    ['-d', 'nope', q],
    ['-d', '2', q], // -d looks names up only: id 2 is named "1"
    ['-a', 'nope', q],
    ['-c', 'x', raw],
    ['-d', 'x', raw],
    ['-a', 'x', raw],
    ['-l', raw],
    [raw],
    ['-c', 'x', qed],
    ['-d', 'x', qed],
    ['-a', 'x', qed],
    ['-l', qed],
    ['-c', 'x', dataFile],
    ['-c', 'x', r1],
    ['-l', '-c', 'x', q],
    ['-l', q, q],
    [],
    ['-f', 'raw', '-l', raw],
    ['-U', '-c', 'x', q],
    ['-U', '-q', '-l', q],
    ['-l', join(dir, 'missing.qcow2')],
  ];
  for (const args of cases) {
    for (const p of [q, raw, qed, dataFile, r1]) copyFileSync(p, `${p}.bak`);
    const theirs = qemuImg(['snapshot', ...args], { env });
    for (const p of [q, raw, qed, dataFile, r1]) {
      copyFileSync(p, `${p}.theirs`);
      copyFileSync(`${p}.bak`, p);
    }
    const ours = qimg(['snapshot', ...args], { env });
    const what = `snapshot ${args.map((a) => a.replace(dir, '.')).join(' ')}`;
    assert.equal(asQemu(ours.stderr), theirs.stderr, what);
    assert.equal(ours.stdout, theirs.stdout, what);
    assert.equal(ours.status, theirs.status, what);
    assertClean(q, what);
    identical(q, `${q}.theirs`, what);
    assert.deepEqual(snapshotsOf(q), snapshotsOf(`${q}.theirs`), what);
  }
  // -d by name deletes the first of equal names; -a finds ids before names.
  ok(qimg(['snapshot', '-c', 's1', q]), 'a second s1');
  ok(qimg(['snapshot', '-d', 's1', q]), 'delete s1');
  assert.deepEqual(
    (snapshotsOf(q) as Array<{ id: string; name: string }>).map((s) => `${s.id}:${s.name}`),
    ['2:1', '3:s1'],
  );
  assertClean(q, 'after deleting one of two equal names');
  // Ids continue from the largest, not from the count.
  ok(qimg(['snapshot', '-c', 'next', q]), 'next');
  assert.equal((snapshotsOf(q) as Array<{ id: string }>).at(-1)!.id, '4');
  // An empty name is allowed.
  ok(qimg(['snapshot', '-c', '', q]), 'empty name');
  assertClean(q, 'after an empty name');
  // Deleting every snapshot leaves no table, as qemu leaves it.
  for (const n of ['1', 's1', 'next', '']) ok(qimg(['snapshot', '-d', n, q]), `delete ${n}`);
  assert.equal(snapshotsOf(q), undefined);
  assertClean(q, 'after deleting every snapshot');
});

test('convert -l errors print what qemu-img prints', (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const q = join(dir, 'img.qcow2');
  ok(qemuImg(['create', '-q', '-f', 'qcow2', q, '1M']), 'create');
  ok(qemuImg(['snapshot', '-c', 's1', q]), 'snapshot');
  const raw = join(dir, 'img.raw');
  ok(qemuImg(['create', '-q', '-f', 'raw', raw, '1M']), 'create raw');
  const qed = join(dir, 'img.qed');
  ok(qemuImg(['create', '-q', '-f', 'qed', qed, '1M']), 'create qed');
  const out = join(dir, 'out.raw');
  for (const args of [
    ['-l', 'nope', q],
    ['-l', 'snapshot.id=1,snapshot.name=x', q],
    ['-l', 'snapshot.foo=1', q],
    ['-l', 's1', raw],
    ['-l', 's1', qed],
    ['-l', 's1', q, q],
  ]) {
    const theirs = qemuImg(['convert', '-O', 'raw', ...args, out]);
    const ours = qimg(['convert', '-O', 'raw', ...args, out]);
    const what = `convert ${args.join(' ')}`;
    assert.equal(asQemu(ours.stderr), theirs.stderr, what);
    assert.equal(ours.status, theirs.status, what);
  }
});

test('library: snapshot functions on files and open images', async (t) => {
  if (!requireTools(t)) return;
  const { applySnapshotFile, createSnapshotFile, deleteSnapshotFile, listSnapshots, listSnapshotsFile, openImageFile } = await import('../../src/node.js');
  const dir = tmpDir();
  const path = join(dir, 'img.qcow2');
  ok(qemuImg(['create', '-q', '-f', 'qcow2', path, '1M']), 'create');
  io(path, ['write -P 0x11 0 64k']);
  const sn = await createSnapshotFile(path, 'lib');
  assert.equal(sn.id, '1');
  assert.equal(sn.name, 'lib');
  io(path, ['write -P 0x22 0 64k']);
  assert.deepEqual((await listSnapshotsFile(path)).map((s) => s.name), ['lib']);
  const img = await openImageFile(path, { internalSnapshot: 'lib' });
  const buf = new Uint8Array(65536);
  await img.read(0, buf);
  assert.ok(buf.every((b) => b === 0x11), 'the snapshot reads as it was made');
  await img.close();
  const active = await openImageFile(path);
  assert.deepEqual((await listSnapshots(active)).map((s) => s.id), ['1']);
  await active.read(0, buf);
  assert.ok(buf.every((b) => b === 0x22));
  await active.close();
  await assert.rejects(openImageFile(path, { internalSnapshot: { id: '1', name: 'other' } }), /Can't find snapshot/);
  await assert.rejects(deleteSnapshotFile(path, 'nope'), /^ImageError: Could not delete snapshot 'nope': snapshot not found$/m);
  await applySnapshotFile(path, '1');
  ok(qemuIo(['-f', 'qcow2', '-c', 'read -P 0x11 0 64k', path]), 'applied');
  await deleteSnapshotFile(path, 'lib');
  assert.deepEqual(await listSnapshotsFile(path), []);
  assertClean(path, 'after the library calls');
});

test('snapshot apply grows the active L1 table when the snapshot has a larger one', (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const path = join(dir, 'img.qcow2');
  // 4k clusters: one L2 table covers 2 MiB, so 64M has an L1 table of 32 entries.
  ok(qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', path, '64M']), 'create');
  io(path, ['write -P 0x11 0 1M']);
  ok(qimg(['snapshot', '-c', 'big', path]), 'snapshot');
  io(path, ['write -P 0x22 0 64k']);
  // The active image becomes a 1M one with a 1-entry L1 table (only entry 0 was in use):
  // qemu never shrinks an L1 table itself, so the header is edited.
  const fd = openSync(path, 'r+');
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(1n << 20n);
  writeSync(fd, b, 0, 8, 24);
  b.writeUInt32BE(1, 0);
  writeSync(fd, b, 0, 4, 36);
  closeSync(fd);
  assertClean(path, 'edited header');
  const a = join(dir, 'a.qcow2');
  const c = join(dir, 'b.qcow2');
  copyFileSync(path, a);
  copyFileSync(path, c);
  ok(qimg(['snapshot', '-a', 'big', a]), 'qimg -a big');
  ok(qemuImg(['snapshot', '-a', 'big', c]), 'qemu-img -a big');
  assertClean(a, 'after -a big');
  identical(a, c, 'after -a big');
  const info = (p: string) => JSON.parse(qemuImg(['info', '--output=json', p]).stdout) as { 'virtual-size': number };
  assert.equal(info(a)['virtual-size'], 64 << 20);
  io(a, ['write -P 0x33 60M 64k', 'read -P 0x11 64k 64k']);
  assertClean(a, 'writes after the L1 table grew');
});
