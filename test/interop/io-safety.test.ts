/**
 * qimg io's safety options against qemu-io 7.2: snapshot mode (-s) never
 * changes the image and leaves no temporary file; a probed raw image refuses
 * writes that would make its first sector probe as another format; -d ignore
 * makes discard a no-op; options qimg cannot honour are refused.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openImageFile } from '../../src/node.js';
import { isImageError } from '../../src/errors.js';
import { probeAsQemu } from '../../src/block/probe.js';
import { asQemu, qemuImg, qemuIo, qimg, requireTools, tmpDir } from '../helpers/tools.js';
import { qimgSyncCalls } from '../helpers/strace.js';

const noTiming = (s: string): string => s.replace(/^[0-9.]+ (bytes|KiB|MiB|GiB), \d+ ops; .*$/gm, 'TIMING');
const cmds = (list: string[]): string[] => list.flatMap((c) => ['-c', c]);

/** Runs the same qemu-io command line on two copies of `file`; returns both results and both files' bytes. */
function side(dir: string, file: string, args: string[], env?: NodeJS.ProcessEnv) {
  const a = join(dir, `q-${Math.random().toString(36).slice(2)}`);
  const b = join(dir, `i-${Math.random().toString(36).slice(2)}`);
  copyFileSync(file, a);
  copyFileSync(file, b);
  const q = qemuIo([...args, a], { env });
  const i = qimg(['io', ...args, b], { env });
  return { q, i, qBytes: readFileSync(a), iBytes: readFileSync(b), qName: a, iName: b };
}

function same(r: ReturnType<typeof side>, what: string): void {
  assert.equal(noTiming(r.i.stdout), noTiming(r.q.stdout), `${what}: stdout`);
  assert.equal(asQemu(r.i.stderr, 'qemu-io').replaceAll(r.iName, 'F'), r.q.stderr.replaceAll(r.qName, 'F'), `${what}: stderr`);
  assert.equal(r.i.status, r.q.status, `${what}: exit code`);
  if (r.iBytes.equals(r.qBytes)) return;
  // Metadata layout may differ between writers: then the guest contents must not.
  const cmp = qemuImg(['compare', r.qName, r.iName]);
  assert.equal(cmp.stdout, 'Images are identical.\n', `${what}: same guest contents as qemu-io leaves`);
}

test('io -s: writes go to a temporary overlay; the image and its backing file stay untouched', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const tmp = tmpDir('qimg-snap-tmp-');
  const base = join(dir, 'base.raw');
  const img = join(dir, 'img.qcow2');
  writeFileSync(base, Buffer.alloc(1 << 20, 0x22));
  assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', img]).status, 0);
  assert.equal(qemuIo(['-c', 'write -P 0x44 64k 64k', img]).status, 0);
  const before = [readFileSync(img), readFileSync(base)];
  const list = ['write -P 0x33 0 4k', 'read -P 0x33 0 4k', 'read -P 0x22 4k 60k', 'read -P 0x44 64k 64k', 'write -z 64k 4k', 'read -P 0 64k 4k', 'discard 128k 64k', 'flush', 'map'];
  for (const fmt of [[], ['-f', 'qcow2']]) {
    const r = side(dir, img, ['-s', ...fmt, ...cmds(list)], { TMPDIR: tmp });
    same(r, `-s ${fmt.join(' ')}`);
    assert.ok(r.iBytes.equals(before[0]!), 'the image is unchanged');
  }
  assert.ok(readFileSync(base).equals(before[1]!), 'the backing file is unchanged');
  assert.deepEqual(readdirSync(tmp), [], 'no temporary file is left behind');
  // A second session sees none of the first one's writes.
  const again = qimg(['io', '-s', '-c', 'read -P 0x22 0 4k', img]);
  assert.equal(again.status, 0, again.stdout);
  // -s -U: the image under the overlay is read-only, so force-share is allowed, as in qemu-io.
  same(side(dir, img, ['-s', '-U', '-c', 'write -P 0x66 0 4k', '-c', 'read -P 0x66 0 4k']), '-s -U');
  // -s with -r: nothing may be written at all, as qemu-io says.
  same(side(dir, img, ['-s', '-r', '-c', 'write 0 4k']), '-s -r');
  // A probed raw image under -s: the restriction on block 0 does not apply (the overlay takes the write), as in qemu.
  same(side(dir, base, ['-s', '-c', 'write -P 0x51 0 512', '-c', 'read -P 0x51 0 512']), '-s on probed raw');
});

test('io -s through the library: the image opens read-only underneath and the overlay vanishes on close', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const tmp = tmpDir('qimg-snap-tmp-');
  const path = join(dir, 'a.qcow2');
  assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', path, '1M']).status, 0);
  const before = readFileSync(path);
  const old = process.env.TMPDIR;
  process.env.TMPDIR = tmp;
  try {
    const img = await openImageFile(path, { writable: true, snapshot: true });
    await img.write(0, new Uint8Array(65536).fill(9));
    await img.flush();
    assert.equal(img.backing?.driver.writable, false, 'the named image is opened read-only');
    // A qemu writer is not refused by a read-only holder of a raw... but a qcow2 one refuses sharing: qemu-io may read.
    assert.equal(qemuIo(['-r', '-U', '-c', 'read -P 0 0 64k', path]).status, 0);
    await img.close();
  } finally {
    if (old === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = old;
  }
  assert.ok(readFileSync(path).equals(before));
  assert.deepEqual(readdirSync(tmp), []);
});

test('probed raw: writes that would make block 0 probe as another format are refused, as in qemu', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const raw = join(dir, 'disk.raw');
  writeFileSync(raw, Buffer.alloc(1 << 20, 0x51));
  const qcow2Head = join(dir, 'qcow2-head.bin');
  assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', join(dir, 'x.qcow2'), '1M']).status, 0);
  writeFileSync(qcow2Head, readFileSync(join(dir, 'x.qcow2')).subarray(0, 512));
  const qedHead = join(dir, 'qed-head.bin');
  assert.equal(qemuImg(['create', '-q', '-f', 'qed', join(dir, 'x.qed'), '1M']).status, 0);
  writeFileSync(qedHead, readFileSync(join(dir, 'x.qed')).subarray(0, 512));
  const magic = join(dir, 'magic.bin');
  writeFileSync(magic, Buffer.from([0x51, 0x46, 0x49, 0xfb]));
  const vmdk = join(dir, 'vmdk.bin');
  writeFileSync(vmdk, Buffer.from('KDMV'));
  const cases: [string, string[]][] = [
    ['a whole qcow2 header', [`write -s ${qcow2Head} 0 512`]],
    ['a QED header', [`write -s ${qedHead} 0 512`]],
    ['the qcow2 magic alone, over bytes that make a version', [`write -s ${magic} 0 4`]],
    ['a VMDK magic (a format only QEMU opens)', [`write -s ${vmdk} 0 4`]],
    ['a long write starting in block 0', [`write -s ${qcow2Head} 0 512`, 'write -P 0x51 0 64k', `write -s ${magic} 0 4`]],
    ['harmless writes to block 0 and anything beyond it', ['write -P 0x51 0 512', 'write -P 0 0 1', `write -s ${magic} 512 4`, `write -s ${qcow2Head} 4k 512`]],
    ['write -z over block 0', ['write -z 0 512']],
  ];
  for (const [what, list] of cases) {
    const r = side(dir, raw, cmds(list));
    same(r, what);
  }
  // Named raw: no restriction, as qemu.
  same(side(dir, raw, ['-f', 'raw', ...cmds([`write -s ${qcow2Head} 0 512`])]), '-f raw');
  // The library: a probed raw opened for writing refuses, a named one does not; concurrent writers cannot slip past.
  const lib = join(dir, 'lib.raw');
  writeFileSync(lib, Buffer.alloc(65536, 0x51));
  const head = readFileSync(qcow2Head);
  const img = await openImageFile(lib, { writable: true });
  try {
    const results = await Promise.allSettled([img.write(0, head.subarray(0, 4)), img.write(4, new Uint8Array(4)), img.write(0, new Uint8Array(512).fill(1))]);
    assert.ok(isImageError((results[0] as PromiseRejectedResult).reason, 'not-permitted'));
    assert.equal(probeAsQemu(new Uint8Array(readFileSync(lib).subarray(0, 512))), 'raw');
  } finally {
    await img.close();
  }
  const named = await openImageFile(lib, { writable: true, format: 'raw' });
  await named.write(0, head);
  await named.close();
  assert.equal(probeAsQemu(new Uint8Array(readFileSync(lib).subarray(0, 512))), 'qcow2');
});

test('io -d ignore: discard succeeds and changes nothing; -d unmap (the default) discards', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const img = join(dir, 'd.qcow2');
  assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', img, '1M']).status, 0);
  assert.equal(qemuIo(['-c', 'write -P 0x5a 0 128k', img]).status, 0);
  for (const mode of [['-d', 'ignore'], ['-d', 'off'], ['-d', 'unmap'], ['-d', 'on'], []]) {
    same(side(dir, img, [...mode, '-c', 'discard 0 64k', '-c', 'read -P 0x5a 0 64k', '-c', 'map']), `discard ${mode.join(' ')}`);
  }
  same(side(dir, img, ['-d', 'bogus', '-c', 'read 0 512']), '-d bogus');
});

test('io: -C, -k, -T and -m behave as in qemu-io', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const img = join(dir, 'o.qcow2');
  assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', img, '1M']).status, 0);
  const before = readFileSync(img);
  // Native AIO needs O_DIRECT: refused before anything is written, as qemu-io refuses it.
  for (const opt of ['-k', '--native-aio']) same(side(dir, img, [opt, '-c', 'write 0 4k']), opt);
  assert.ok(readFileSync(img).equals(before), 'a refused open writes nothing');
  for (const opt of ['-C', '--copy-on-read']) same(side(dir, img, [opt, '-c', 'read 0 4k']), opt);
  same(side(dir, img, ['-T', 'nosuchevent', '-c', 'read 0 512']), '-T');
  same(side(dir, img, ['-m', '-c', 'write -P 3 1 1000', '-c', 'read -P 3 1 1000']), '-m');
});

test('io -t: writethrough and directsync flush each write command, unsafe drops flushes (counted with strace)', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const img = join(dir, 't.qcow2');
  assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', img, '1M']).status, 0);
  // Allocated beforehand, so the writes below are plain overwrites with no metadata syncs of their own.
  assert.equal(qemuIo(['-c', 'write 0 192k', img]).status, 0);
  const syncs = (opts: string[]): number | undefined =>
    qimgSyncCalls(['io', ...opts, ...cmds(['write 0 4k', 'write 64k 4k', 'write 128k 4k', 'flush']), img], dir);
  const wb = syncs([]);
  if (wb === undefined) {
    if (process.env.CI) throw new Error('strace is required when CI is set (apt-get install strace)');
    return t.skip('strace cannot trace here');
  }
  const wt = syncs(['-t', 'writethrough'])!;
  const ds = syncs(['-t', 'directsync'])!;
  const unsafe = syncs(['-t', 'unsafe'])!;
  assert.ok(wb >= 1, `writeback flushes on 'flush' (${wb})`);
  // One sync per write command; the closing 'flush' then finds nothing left to sync.
  assert.ok(wt >= 3 && wt >= wb + 2, `writethrough flushes after each of 3 writes (${wt} vs ${wb})`);
  assert.ok(ds >= 3 && ds >= wb + 2, `directsync too (${ds})`);
  assert.equal(unsafe, 0, 'unsafe drops every flush');
  same(side(dir, img, ['-t', 'bogus', '-c', 'read 0 512']), '-t bogus');
  same(side(dir, img, ['-n', '-c', 'write -P 9 0 4k', '-c', 'read -P 9 0 4k']), '-n');
});
