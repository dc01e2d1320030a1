/**
 * Encrypted qcow2 (LUKS and legacy AES) made by qemu-img, opened without
 * the key: every open but a metadata-only one is refused, as qemu refuses
 * one without the secret. Above all, no write path may put plaintext into
 * the image, however often it is tried: each attempt below must fail and
 * leave the file byte-for-byte as it was. (With the key, see
 * encrypted-images.test.ts.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, copyFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openImageFile } from '../../src/node.js';
import { isImageError } from '../../src/errors.js';
import { asQemu, qemuImg, qemuIo, qimg, requireTools, tmpDir } from '../helpers/tools.js';

const MSG = "Parameter 'encrypt.key-secret' is required for cipher";
const SECRET = ['--object', 'secret,id=s0,data=pw'];

function makeImages(dir: string): { luks: string; aes: string } {
  const luks = join(dir, 'luks.qcow2');
  const aes = join(dir, 'aes.qcow2');
  let r = qemuImg(['create', '-q', '-f', 'qcow2', ...SECRET, '-o', 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10,cluster_size=4096', luks, '1M']);
  assert.equal(r.status, 0, r.stderr);
  r = qemuImg(['create', '-q', '-f', 'qcow2', ...SECRET, '-o', 'encryption=on,encrypt.key-secret=s0,cluster_size=4096', aes, '1M']);
  assert.equal(r.status, 0, r.stderr);
  // Some data written with the key, so COW and overwrite paths have something to copy.
  for (const f of [luks, aes]) {
    const w = qemuIo([...SECRET, '--image-opts', '-c', 'write -P 0x11 0 8k', `driver=qcow2,file.filename=${f},encrypt.key-secret=s0`]);
    assert.equal(w.status, 0, w.stderr);
  }
  return { luks, aes };
}

/** Every way the CLI could write into an image: none may succeed. */
const WRITES: [string, string[]][] = [
  ['two full-cluster writes', ['-c', 'write -P 0x41 64k 4k', '-c', 'write -P 0x41 64k 4k']],
  ['a partial write over data (copy on write)', ['-c', 'write -P 0x41 512 512', '-c', 'write -P 0x41 512 512']],
  ['write -z', ['-c', 'write -z 0 4k', '-c', 'write -z 0 4k']],
  ['write -z -u', ['-c', 'write -z -u 0 4k']],
  ['compressed write', ['-c', 'write -c -P 0x41 128k 4k', '-c', 'write -c -P 0x41 192k 4k']],
  ['discard', ['-c', 'discard 0 8k', '-c', 'discard 0 8k']],
];

test('encrypted qcow2: every write path is refused and the image is untouched', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const images = makeImages(dir);
  for (const [kind, path] of Object.entries(images)) {
    const before = readFileSync(path);
    for (const [what, cmds] of WRITES) {
      const r = qimg(['io', ...cmds, path]);
      assert.equal(r.status, 1, `${kind} ${what}: ${r.stdout}`);
      const q = qemuIo([...cmds, path]);
      assert.equal(asQemu(r.stderr, 'qemu-io'), q.stderr, `${kind} ${what}: same message as qemu-io`);
      assert.equal(r.stdout, '', `${kind} ${what}: nothing written`);
      assert.deepEqual(readFileSync(path), before, `${kind} ${what}: image unchanged`);
    }
    // The same through the other commands that open an image for writing.
    const src = join(dir, 'src.raw');
    writeFileSync(src, Buffer.alloc(1 << 20, 0x42));
    for (const args of [
      ['convert', '-n', '-f', 'raw', '-O', 'qcow2', src, path],
      ['check', '-r', 'all', path],
      ['check', '-r', 'leaks', path],
      ['check', path],
      ['map', path],
      ['compare', path, path],
      ['convert', '-O', 'raw', path, join(dir, 'out.raw')],
    ]) {
      const r = qimg(args);
      const q = qemuImg(args);
      assert.notEqual(r.status, 0, `${kind} ${args.join(' ')}`);
      assert.equal(r.status, q.status, `${kind} ${args.join(' ')}: exit code as qemu-img`);
      assert.match(r.stderr, new RegExp(MSG.replace(/[.'-]/g, '.')), `${kind} ${args.join(' ')}`);
      assert.deepEqual(readFileSync(path), before, `${kind} ${args.join(' ')}: image unchanged`);
    }
    // info is metadata only: it works, as qemu-img info does without the key.
    const info = qimg(['info', '--output=json', path]);
    assert.equal(info.status, 0, info.stderr);
    assert.equal(JSON.parse(info.stdout).encrypted, true);
  }
});

test('encrypted qcow2: the library refuses writable and data opens, however asked', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const { luks, aes } = makeImages(dir);
  for (const path of [luks, aes]) {
    const before = readFileSync(path);
    for (const opts of [{ writable: true }, { writable: true, metadataOnly: true }, {}, { format: 'qcow2' as const, writable: true }]) {
      await assert.rejects(openImageFile(path, opts), (e) => isImageError(e, 'needs-secret') && e.message === MSG, JSON.stringify(opts));
    }
    // As an overlay's backing file it is opened for reading data: refused too.
    const overlay = join(dir, 'overlay.qcow2');
    copyFileSync(path, join(dir, 'base.qcow2'));
    assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', '-u', '-b', 'base.qcow2', '-F', 'qcow2', overlay, '1M']).status, 0);
    await assert.rejects(openImageFile(overlay, { writable: true }), (e) => isImageError(e, 'needs-secret'));
    const meta = await openImageFile(path, { metadataOnly: true });
    try {
      assert.equal((await meta.info()).encrypted, true);
      await assert.rejects(meta.write(0, new Uint8Array(4096)), (e) => isImageError(e));
      await assert.rejects(meta.read(0, new Uint8Array(4096)), (e) => isImageError(e));
    } finally {
      await meta.close();
    }
    assert.deepEqual(readFileSync(path), before);
  }
});
