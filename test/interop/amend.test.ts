/**
 * qimg amend against qemu-img amend: each change made by both on copies of
 * one image qemu made (data, compressed and zero clusters, a snapshot, a
 * backing file), then the results compared (bytes, info, compare, check);
 * refusals compared by stderr and exit code.
 */
import assert from 'node:assert/strict';
import { copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { amendImageFile, amendOptionHelp } from '../../src/node.js';
import { asQemu, qemuImg, qemuIo, qimg, requireTools, tmpDir } from '../helpers/tools.js';

/** A qcow2 image with a backing file, data, compressed and zero clusters and a snapshot. */
function makeImage(dir: string, compat: '0.10' | '1.1', extra: string[] = []): string {
  const base = join(dir, `base-${compat}.qcow2`);
  const img = join(dir, `img-${compat}.qcow2`);
  assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', '-o', `compat=${compat}`, base, '8M']).status, 0);
  assert.equal(qemuIo(['-c', 'write -P 7 0 1M', base]).status, 0);
  assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', '-o', `compat=${compat}`, ...extra, '-b', base, '-F', 'qcow2', img, '8M']).status, 0);
  const writes = ['write -P 1 0 64k', 'write -c -P 2 1M 64k', 'write -z 128k 64k', 'write -P 3 256k 64k', 'write -z 256k 64k'];
  assert.equal(qemuIo([...writes.flatMap((c) => ['-c', c]), img]).status, 0);
  assert.equal(qemuImg(['snapshot', '-c', 's1', img]).status, 0);
  // Zero clusters after the snapshot: in tables the snapshot shares.
  assert.equal(qemuIo(['-c', 'write -z 512k 64k', '-c', 'write -z 0 64k', img]).status, 0);
  return img;
}

/** Two copies of `img`: one for qemu-img, one for qimg. */
function copies(img: string, name: string): [string, string] {
  const theirs = img.replace(/\.qcow2$/, `-${name}-qemu.qcow2`);
  const ours = img.replace(/\.qcow2$/, `-${name}-qimg.qcow2`);
  copyFileSync(img, theirs);
  copyFileSync(img, ours);
  return [theirs, ours];
}

const infoWithoutNames = (path: string): unknown => {
  const r = qemuImg(['info', '--output=json', path]);
  assert.equal(r.status, 0, r.stderr);
  const j = JSON.parse(r.stdout) as Record<string, unknown>;
  delete j.filename;
  delete j['actual-size'];
  return j;
};

function assertSameResult(theirs: string, ours: string, what: string): void {
  assert.deepEqual(infoWithoutNames(ours), infoWithoutNames(theirs), what);
  const cmp = qemuImg(['compare', theirs, ours]);
  assert.equal(cmp.status, 0, `${what}: ${cmp.stdout}${cmp.stderr}`);
  // Clean, or (a downgrade of an image with snapshots) exactly what qemu's own result reports.
  const check = qemuImg(['check', ours]);
  const theirCheck = qemuImg(['check', theirs]);
  assert.equal(check.status, theirCheck.status, `${what}: ${check.stdout}${check.stderr}`);
  assert.equal(check.stdout + check.stderr, theirCheck.stdout + theirCheck.stderr, what);
  if (!/compat=(0\.10|v2)/.test(what)) assert.equal(check.status, 0, `${what}: ${check.stdout}${check.stderr}`);
  // Header rewrites come out byte for byte as qemu's.
  assert.ok(readFileSync(ours).equals(readFileSync(theirs)), `${what}: same bytes`);
}

const CHANGES: Array<[compat: '0.10' | '1.1', options: string]> = [
  ['0.10', 'compat=1.1'],
  ['0.10', 'compat=v3,lazy_refcounts=on'],
  ['0.10', 'compat=0.10'],
  ['1.1', 'lazy_refcounts=on'],
  ['1.1', 'lazy_refcounts=off'],
  ['1.1', 'compat=1.1,refcount_bits=16'],
];

test('amend: each supported change gives the image qemu-img amend gives', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const images = { '0.10': makeImage(dir, '0.10'), '1.1': makeImage(dir, '1.1') };
  let n = 0;
  for (const [compat, options] of CHANGES) {
    const [theirs, ours] = copies(images[compat], String(n++));
    const q = qemuImg(['amend', '-o', options, theirs]);
    const r = qimg(['amend', '-o', options, ours]);
    assert.equal(q.status, 0, q.stderr);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout + r.stderr, q.stdout + q.stderr);
    assertSameResult(theirs, ours, `${compat}: ${options}`);
  }
  // The same names as the image has: allowed (qemu compares them, it does not rebase).
  // compat=0.10 downgrades: zero clusters expanded in every L1 table, with and without a backing file.
  const unbacked = join(dir, 'unbacked.qcow2');
  assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', unbacked, '8M']).status, 0);
  assert.equal(qemuIo(['-c', 'write -P 1 0 64k', '-c', 'write -z 128k 64k', '-c', 'write -P 3 256k 64k', '-c', 'write -z 256k 64k', unbacked]).status, 0);
  assert.equal(qemuImg(['snapshot', '-c', 's1', unbacked]).status, 0);
  assert.equal(qemuIo(['-c', 'write -z 0 64k', unbacked]).status, 0);
  for (const [img, options] of [[images['1.1'], 'compat=0.10'], [unbacked, 'compat=0.10'], [images['1.1'], 'compat=v2,lazy_refcounts=off']] as const) {
    const [theirs, ours] = copies(img, String(n++));
    assert.equal(qemuImg(['amend', '-o', options, theirs]).status, 0);
    const r = qimg(['amend', '-p', '-o', options, ours]);
    assert.equal(r.status, 0, r.stderr);
    assertSameResult(theirs, ours, `${img}: ${options}`);
  }
  const [theirs, ours] = copies(images['1.1'], 'backing');
  const same = `backing_file=${join(dir, 'base-1.1.qcow2')},backing_fmt=qcow2`;
  assert.equal(qemuImg(['amend', '-o', same, theirs]).status, 0);
  assert.equal(qimg(['amend', '-o', same, ours]).status, 0);
  assertSameResult(theirs, ours, same);
});

test('amend lazy_refcounts=off on a dirty image: refcounts repaired first, as qemu does', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const img = join(dir, 'dirty.qcow2');
  assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', img, '8M']).status, 0);
  // qemu-io's abort leaves the dirty bit set and the refcounts of the write unwritten.
  qemuIo(['-c', 'write -P 3 0 256k', '-c', 'abort', img]);
  assert.match(qemuImg(['info', img]).stdout, /lazy refcounts: true/);
  const [theirs, ours] = copies(img, 'off');
  assert.equal(qemuImg(['amend', '-o', 'lazy_refcounts=off', theirs]).status, 0);
  const r = qimg(['amend', '-o', 'lazy_refcounts=off', ours]);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(infoWithoutNames(ours), infoWithoutNames(theirs));
  assert.equal(qemuImg(['compare', theirs, ours]).status, 0);
  assert.equal(qemuImg(['check', ours]).status, 0);
});

test('amend refusals and usage errors: the same stderr and exit code as qemu-img', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const img = makeImage(dir, '1.1');
  const v2 = makeImage(dir, '0.10');
  const plain = join(dir, 'plain.qcow2');
  const raw = join(dir, 'r.img');
  const qed = join(dir, 'q.qed');
  assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', plain, '1M']).status, 0);
  assert.equal(qemuImg(['create', '-q', '-f', 'raw', raw, '1M']).status, 0);
  assert.equal(qemuImg(['create', '-q', '-f', 'qed', qed, '1M']).status, 0);
  assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'refcount_bits=8', join(dir, 'rc8.qcow2'), '1M']).status, 0);
  assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on', join(dir, 'extl2.qcow2'), '1M']).status, 0);
  // An image whose backing file is missing, and one whose data file is.
  const orphan = join(dir, 'orphan.qcow2');
  assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', '-u', '-b', join(dir, 'gone.qcow2'), '-F', 'qcow2', orphan, '1M']).status, 0);
  const withData = join(dir, 'withdata.qcow2');
  assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', '-o', `data_file=${join(dir, 'withdata.raw')}`, withData, '1M']).status, 0);
  const cases: string[][] = [
    ['-o', 'lazy_refcounts=on', orphan],
    ['-o', 'lazy_refcounts=on', withData],
    [img],
    ['-o', 'help', img],
    ['-f', 'qcow2', '-o', 'help'],
    ['-o', 'help'],
    ['-f', 'raw', '-o', 'help'],
    ['-f', 'foo', '-o', 'help'],
    ['-o', 'compat=1.1', img, plain],
    ['-o', 'foo=1', img],
    ['-o', 'cluster_size=4096', img],
    ['-o', 'preallocation=full', img],
    ['-o', 'extended_l2=on', img],
    ['-o', 'compression_type=zstd', img],
    ['-o', 'encrypt.format=luks', img],
    ['-o', 'compat=0.9', img],
    ['-o', 'lazy_refcounts=maybe', img],
    ['-o', 'refcount_bits=3', img],
    ['-o', 'refcount_bits=128', img],
    ['-o', 'data_file=x', img],
    ['-o', 'data_file_raw=on', img],
    ['-o', 'backing_file=other.qcow2', img],
    ['-o', 'backing_fmt=raw', img],
    ['-o', 'backing_fmt=qcow2', plain],
    ['-o', 'lazy_refcounts=on', v2],
    ['-o', 'refcount_bits=8', v2],
    ['-o', 'compat=0.10,lazy_refcounts=on', img],
    ['-o', 'compat=1.1,', img],
    ['-t', 'foo', '-o', 'compat=1.1', img],
    ['-o', 'compat=0.10', join(dir, 'rc8.qcow2')],
    ['-o', 'compat=0.10', join(dir, 'extl2.qcow2')],
    ['-o', 'compat=0.10,refcount_bits=8', img],
    ['-o', 'compat=1.1', raw],
    ['-o', 'compat=1.1', qed],
    ['-o', 'compat=1.1', join(dir, 'missing.qcow2')],
  ];
  for (const args of cases) {
    const before = readFileSync(img);
    const q = qemuImg(['amend', ...args]);
    const r = qimg(['amend', ...args]);
    assert.equal(asQemu(r.stderr), q.stderr, args.join(' '));
    assert.equal(r.stdout, q.stdout, args.join(' '));
    assert.equal(r.status, q.status, args.join(' '));
    assert.ok(readFileSync(img).equals(before), `${args.join(' ')}: the image is unchanged`);
  }
});

test('amendImageFile takes typed options; amendOptionHelp lists what qcow2 can amend', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const img = makeImage(dir, '0.10');
  const [theirs, ours] = copies(img, 'typed');
  assert.equal(qemuImg(['amend', '-o', 'compat=1.1,lazy_refcounts=on', theirs]).status, 0);
  const r = await amendImageFile(ours, { version: 3, lazyRefcounts: true });
  assert.equal(r.format, 'qcow2');
  assertSameResult(theirs, ours, 'typed');
  assert.equal(amendOptionHelp('qcow2'), qemuImg(['amend', '-f', 'qcow2', '-o', 'help']).stdout);
  await assert.rejects(amendImageFile(ours, { refcountBits: 3 }), /power of two/);
  // A new name for the external data file, and data_file_raw cleared.
  const withData = join(dir, 'withdata.qcow2');
  assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', '-o', `data_file=${join(dir, 'withdata.raw')},data_file_raw=on`, withData, '1M']).status, 0);
  const [theirData, ourData] = copies(withData, 'rename');
  assert.equal(qemuImg(['amend', '-o', 'data_file=renamed.raw,data_file_raw=off', theirData]).status, 0);
  await amendImageFile(ourData, { dataFile: 'renamed.raw', dataFileRaw: false });
  assert.ok(readFileSync(ourData).equals(readFileSync(theirData)), 'the same header as qemu writes');
  await assert.rejects(amendImageFile(join(dir, 'base-0.10.qcow2'), { version: 3 }, { format: 'raw' }), /does not support option amendment/);
});

test('amend -p: the same progress meter as qemu-img amend -p (upgrade, downgrade, header change, -q)', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const cases: Array<[compat: '0.10' | '1.1', args: string[]]> = [
    ['0.10', ['-p', '-o', 'compat=1.1']],
    ['1.1', ['-p', '-o', 'compat=0.10']],
    ['1.1', ['-p', '-o', 'lazy_refcounts=on']],
    ['1.1', ['-p', '-q', '-o', 'lazy_refcounts=on']],
  ];
  let n = 0;
  for (const [compat, args] of cases) {
    const img = join(dir, `p${n++}.qcow2`);
    assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', '-o', `compat=${compat}`, img, '8M']).status, 0);
    if (compat === '1.1') assert.equal(qemuIo(['-c', 'write -z 0 64k', img]).status, 0);
    const [theirs, ours] = copies(img, 'p');
    const q = qemuImg(['amend', ...args, theirs]);
    const r = qimg(['amend', ...args, ours]);
    assert.equal(q.status, 0, q.stderr);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, q.stdout, args.join(' '));
    assert.ok(q.stdout.length > 0 || args.includes('-q'), 'the meter printed');
  }
});
