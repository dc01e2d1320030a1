/**
 * Legacy qcow2 encryption (encrypt.format=aes, crypt_method 1): a cluster
 * qemu-io wrote decrypts with legacyAesCipher (guest sector numbers as IV),
 * and one encrypted by qimg reads back through qemu-io.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { legacyAesCipher } from '../../src/crypto/legacy-aes.js';
import { portableCrypto } from '../../src/crypto/portable.js';
import { nodeCrypto } from '../../src/io/crypto.js';
import { qemuImg, qemuIo, requireTools, tmpDir } from '../helpers/tools.js';

const PASS = 'a legacy passphrase';
const GUEST = 65536;

/** Host offset of the cluster holding guest offset GUEST (L1 entry 0, 64 KiB clusters). */
function hostOffset(file: Uint8Array): number {
  const v = new DataView(file.buffer, file.byteOffset, file.byteLength);
  const l1 = Number(v.getBigUint64(40));
  const l2 = Number(v.getBigUint64(l1) & 0x00ff_ffff_ffff_fe00n);
  return Number(v.getBigUint64(l2 + 8 * (GUEST / 65536)) & 0x00ff_ffff_ffff_fe00n);
}

const io = (file: string, cmd: string) =>
  qemuIo(['--object', `secret,id=s,data=${PASS}`, '--image-opts', `driver=qcow2,encrypt.key-secret=s,file.filename=${file}`, '-c', cmd]);

describe('legacy qcow2 AES', () => {
  it('decrypts what qemu-io wrote and encrypts what qemu-io reads', async (t) => {
    if (!requireTools(t)) return;
    const file = join(tmpDir(), 'l.qcow2');
    const c = qemuImg(['create', '-q', '-f', 'qcow2', '--object', `secret,id=s,data=${PASS}`, '-o', 'encrypt.format=aes,encrypt.key-secret=s', file, '1M']);
    assert.equal(c.status, 0, c.stderr);
    assert.equal(io(file, `write -P 0x5a ${GUEST} 4k`).status, 0);
    const bytes = new Uint8Array(readFileSync(file));
    const host = hostOffset(bytes);
    const pass = new TextEncoder().encode(PASS);
    for (const p of [portableCrypto, nodeCrypto]) {
      const data = bytes.slice(host, host + 4096);
      await legacyAesCipher(pass, p).decrypt(GUEST / 512, data);
      assert.ok(data.every((b) => b === 0x5a));
    }
    const mine = new Uint8Array(4096).fill(0x3c);
    await legacyAesCipher(pass, nodeCrypto).encrypt(GUEST / 512, mine);
    bytes.set(mine, host);
    writeFileSync(file, bytes);
    const r = io(file, `read -P 0x3c ${GUEST} 4k`);
    assert.equal(r.status, 0, r.stderr);
    assert.doesNotMatch(r.stdout, /Pattern verification failed/);
  });
});
