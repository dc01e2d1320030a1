/**
 * Open options that change data, through the library and qimg io, checked
 * against qemu: copy-on-read (the top image gains the clusters it read from
 * its backing file, as qemu-img map then shows) and discard=ignore
 * (discards and unmapping zero writes leave the space allocated); and the
 * filename syntaxes json:{...} and file:PATH.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { openImageFile, parseImageFilename } from '../../src/node.js';
import { maskIoTiming } from '../helpers/normalise.js';
import { asQemu, qemuImg, qemuIo, qimg, requireTools, tmpDir } from '../helpers/tools.js';

const dir = tmpDir('qimg-io-open-');
const q = join(dir, 'q');
const i = join(dir, 'i');
mkdirSync(q);
mkdirSync(i);
const cmds = (list: string[]): string[] => list.flatMap((c) => ['-c', c]);
const map = (cwd: string, name: string): string => {
  const r = qemuImg(['map', '--output=json', name], { cwd });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
};

/** base.qcow2 with data in two clusters and top.qcow2 over it, in both directories. */
function chain(fmt: 'qcow2' | 'qed'): void {
  assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', 'base.qcow2', '1M'], { cwd: q }).status, 0);
  assert.equal(qemuIo(cmds(['write -P 0x11 0 64k', 'write -P 0x22 192k 64k']).concat('base.qcow2'), { cwd: q }).status, 0);
  assert.equal(qemuImg(['create', '-q', '-f', fmt, '-b', 'base.qcow2', '-F', 'qcow2', `top.${fmt}`], { cwd: q }).status, 0);
  copyFileSync(join(q, 'base.qcow2'), join(i, 'base.qcow2'));
  copyFileSync(join(q, `top.${fmt}`), join(i, `top.${fmt}`));
}

for (const fmt of ['qcow2', 'qed'] as const) {
  test(`qimg io -C copies what it reads from the backing file into the ${fmt} top image, as qemu-io -C`, (t) => {
    if (!requireTools(t)) return;
    chain(fmt);
    const name = `top.${fmt}`;
    const before = map(i, name);
    // Reads of backed data, of unallocated space, and one straddling both.
    const list = ['read -P 0x11 4k 4k', 'read -P 0 512k 4k', 'read 190k 4k', 'map'];
    const rq = qemuIo(['-C', ...cmds(list), name], { cwd: q });
    const ri = qimg(['io', '-C', ...cmds(list), name], { cwd: i });
    assert.equal(maskIoTiming(ri.stdout), maskIoTiming(rq.stdout));
    assert.equal(asQemu(ri.stderr, 'qemu-io'), rq.stderr);
    assert.equal(ri.status, rq.status);
    const after = map(i, name);
    assert.notEqual(after, before, 'the read clusters are now in the top image');
    assert.equal(after, map(q, name));
    assert.match(qimg(['map', name], { cwd: i }).stdout, new RegExp(`0x10000 +0x[0-9a-f]+ +${name.replace('.', '\\.')}`));
    const chk = qemuImg(['check', name], { cwd: i });
    assert.equal(chk.status, 0, chk.stdout + chk.stderr);
    assert.equal(qemuImg(['compare', `q/${name}`, `i/${name}`], { cwd: dir }).stdout, 'Images are identical.\n');
  });
}

test('copyOnRead through the library: reads fill the top layer; a read-only open refuses it', async (t) => {
  if (!requireTools(t)) return;
  chain('qcow2');
  const path = join(i, 'top.qcow2');
  await assert.rejects(openImageFile(path, { copyOnRead: true }), /Can't use copy-on-read on read-only device/);
  const img = await openImageFile(path, { writable: true, copyOnRead: true });
  try {
    assert.equal((await img.layerStatus(192 * 1024, 64 * 1024)).allocated, false);
    const buf = new Uint8Array(1000);
    await img.read(200 * 1024, buf);
    assert.ok(buf.every((b) => b === 0x22));
    const st = await img.layerStatus(192 * 1024, 64 * 1024);
    assert.equal(st.allocated, true);
    assert.equal(st.length, 64 * 1024, 'the whole cluster is in the top image');
    // Space the backing file does not have is copied too, as a zero cluster (as qemu does).
    await img.read(512 * 1024, buf);
    const zero = await img.layerStatus(512 * 1024, 4096);
    assert.equal(zero.allocated, true);
    assert.equal(zero.zero, true);
  } finally {
    await img.close();
  }
  const r = qemuIo(['-c', 'read -P 0x22 192k 64k', '-c', 'read -P 0x11 0 64k', path]);
  assert.match(r.stdout, /^read 65536\/65536 bytes at offset 196608\n/);
  assert.doesNotMatch(r.stdout, /Pattern verification failed/);
});

test('qimg io -d ignore: discard and unmapping zero writes keep their clusters, as qemu-io -d ignore', (t) => {
  if (!requireTools(t)) return;
  for (const mode of ['ignore', 'unmap']) {
    for (const dirOf of [q, i]) {
      assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', `d-${mode}.qcow2`, '1M'], { cwd: dirOf }).status, 0);
      assert.equal(qemuIo([...cmds(['write -P 0x33 0 256k']), `d-${mode}.qcow2`], { cwd: dirOf }).status, 0);
    }
    const list = ['discard 0 64k', 'write -z -u 64k 64k', 'read -P 0 64k 64k', 'map'];
    const rq = qemuIo(['-d', mode, ...cmds(list), `d-${mode}.qcow2`], { cwd: q });
    const ri = qimg(['io', '-d', mode, ...cmds(list), `d-${mode}.qcow2`], { cwd: i });
    assert.equal(maskIoTiming(ri.stdout), maskIoTiming(rq.stdout), mode);
    assert.equal(ri.status, rq.status);
    assert.equal(map(i, `d-${mode}.qcow2`), map(q, `d-${mode}.qcow2`), mode);
  }
});

test('discard: ignore through the library leaves data and allocation as they were', async (t) => {
  if (!requireTools(t)) return;
  assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', 'lib-d.qcow2', '1M'], { cwd: i }).status, 0);
  const path = join(i, 'lib-d.qcow2');
  const img = await openImageFile(path, { writable: true, discard: 'ignore' });
  try {
    await img.write(0, new Uint8Array(65536).fill(7));
    await img.discard(0, 65536);
    const buf = new Uint8Array(65536);
    await img.read(0, buf);
    assert.ok(buf.every((b) => b === 7), 'discard did nothing');
  } finally {
    await img.close();
  }
  const img2 = await openImageFile(path, { writable: true });
  try {
    await img2.discard(0, 65536);
    assert.equal((await img2.layerStatus(0, 65536)).data, false, 'the default discards');
  } finally {
    await img2.close();
  }
});

test('json: and file: filenames open through the library, nested or dotted', async (t) => {
  if (!requireTools(t)) return;
  assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', 'j.qcow2', '1M'], { cwd: i }).status, 0);
  assert.equal(qemuIo(['-c', 'write -P 0x44 0 4k', 'j.qcow2'], { cwd: i }).status, 0);
  const path = join(i, 'j.qcow2');
  const names = [
    `json:{"driver":"qcow2","file":{"driver":"file","filename":${JSON.stringify(path)}}}`,
    `json:{"driver":"qcow2","file.filename":${JSON.stringify(path)}}`,
    `json:{"file":{"filename":${JSON.stringify(path)}}}`,
    `file:${path}`,
  ];
  for (const name of names) {
    const img = await openImageFile(name);
    try {
      assert.equal(img.format, 'qcow2', name);
      const buf = new Uint8Array(4096);
      await img.read(0, buf);
      assert.ok(buf.every((b) => b === 0x44), name);
    } finally {
      await img.close();
    }
  }
  const raw = await openImageFile(`json:{"driver":"file","filename":${JSON.stringify(path)}}`);
  assert.equal(raw.format, 'raw');
  await raw.close();
  assert.deepEqual(parseImageFilename(`json:{"driver":"qcow2","read-only":true,"file":{"filename":"x","locking":"off"}}`), {
    path: 'x',
    format: 'qcow2',
    readOnly: true,
    locking: 'off',
    blockOptions: {},
    shortForm: [],
  });
  assert.throws(() => parseImageFilename('json:[1]'), /Invalid JSON object given/);
  // qemu's drivers that qimg lacks are refused by name, never taken for a file name.
  for (const n of ['blkdebug::x.qcow2', 'blkverify:a.raw:b.qcow2', 'json:{"driver":"qcow2","file":{"driver":"blkdebug","image.filename":"x","inject-error":[{"event":"l2_load"}]}}']) {
    const refused = /The 'blk(debug|verify)' block driver is not supported by qimg|Unknown protocol driver 'blkdebug'/;
    assert.throws(() => parseImageFilename(n), refused, n);
    await assert.rejects(openImageFile(n), refused, n);
  }
  assert.throws(() => parseImageFilename('json:{bad'), /Could not parse the JSON options/);
  assert.throws(() => parseImageFilename('json:{"driver":"qcow2","filename":"x"}'), /A block device must be specified for "file"/);
});

test('qimg io opens json:, file: and --image-opts names as qemu-io does', (t) => {
  if (!requireTools(t)) return;
  for (const d of [q, i]) {
    assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', 'n.qcow2', '1M'], { cwd: d }).status, 0);
    assert.equal(qemuImg(['create', '-q', '-f', 'raw', 'n.raw', '1M'], { cwd: d }).status, 0);
  }
  const cases: string[][] = [
    ['json:{"driver":"qcow2","file":{"driver":"file","filename":"n.qcow2"}}'],
    ['json:{"driver":"qcow2","file.filename":"n.qcow2"}'],
    ['-f', 'raw', 'json:{"file":{"driver":"file","filename":"n.raw"}}'],
    ['json:{"driver":"file","filename":"n.raw"}'],
    ['file:n.qcow2'],
    ['json:{"driver":"qcow2","filename":"n.qcow2"}'],
    ['json:{"driver":"qcow2","file":{"driver":"file","filename":"nope"}}'],
    ['json:[1]'],
    ['--image-opts', 'driver=qcow2,file.filename=n.qcow2'],
    ['--image-opts', 'driver=qcow2,file.driver=file,file.filename=n.qcow2,read-only=on'],
  ];
  for (const c of cases) {
    const list = cmds(['write -P 0x55 0 4k', 'read -P 0x55 0 4k', 'open -o driver=qcow2 n.qcow2', 'close', 'open -o driver=qcow2,file.filename=n.qcow2', 'length']);
    const rq = qemuIo([...list, ...c], { cwd: q });
    const ri = qimg(['io', ...list, ...c], { cwd: i });
    const what = c.join(' ');
    assert.equal(maskIoTiming(ri.stdout), maskIoTiming(rq.stdout), what);
    assert.equal(asQemu(ri.stderr, 'qemu-io'), rq.stderr, what);
    assert.equal(ri.status, rq.status, what);
  }
  for (const n of ['n.qcow2', 'n.raw']) assert.equal(qemuImg(['compare', `q/${n}`, `i/${n}`], { cwd: dir }).stdout, 'Images are identical.\n', n);
});
