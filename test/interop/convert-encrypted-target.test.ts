/**
 * convert into a new encrypted target (qcow2 LUKS, raw luks): the target is
 * created with the key its -o key-secret names and opened with that key, as
 * qemu-img convert does; qemu-io then reads the data with the secret.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { qemuImg, qemuIo, qimg, requireTools, tmpDir } from '../helpers/tools.js';

const SECRET = ['--object', 'secret,id=k,data=convert-key'];

test('convert -O qcow2/luks with an encryption key-secret writes data qemu-io reads with that key', (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const src = join(dir, 'src.raw');
  assert.equal(qemuImg(['create', '-q', '-f', 'raw', src, '2M']).status, 0);
  assert.equal(qemuIo(['-f', 'raw', '-c', 'write -P 0x3c 64k 256k', src]).status, 0);
  for (const [fmt, o, key] of [
    ['qcow2', 'encrypt.format=luks,encrypt.key-secret=k,encrypt.iter-time=10', 'encrypt.key-secret'],
    ['luks', 'key-secret=k,iter-time=10', 'key-secret'],
  ] as const) {
    const out = join(dir, `out.${fmt}`);
    const r = qimg(['convert', ...SECRET, '-f', 'raw', '-O', fmt, '-o', o, src, out]);
    assert.equal(r.status, 0, r.stderr);
    const read = qemuIo([...SECRET, '--image-opts', `driver=${fmt},file.filename=${out},${key}=k`, '-c', 'read -P 0x3c 64k 256k', '-c', 'read -P 0 0 64k']);
    assert.equal(read.status, 0, read.stderr);
    assert.doesNotMatch(read.stdout, /Pattern verification failed/);
  }
});
