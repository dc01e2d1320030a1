/**
 * The Node provider's CAST5 sectors (OpenSSL's legacy provider, bulk ECB
 * with the modes' XORs done around it) against RFC 2144's vector and against
 * the generic sector modes over OpenSSL's single-block CAST5. The cipher
 * needs --openssl-legacy-provider, which `npm test` does not pass: without
 * it this file runs itself again under `node --openssl-legacy-provider`.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import type { BlockCipher } from '../../src/crypto/block-cipher.js';
import { blockSectorCipher } from '../../src/crypto/block-sector-cipher.js';
import { portableCrypto } from '../../src/crypto/portable.js';
import type { CipherMode, CipherSpec, IvGenAlg } from '../../src/crypto/sector-cipher.js';
import { cast5Available } from '../../src/io/cast5.js';
import { nodeCrypto } from '../../src/io/crypto.js';

/** One CAST5 block through OpenSSL, for the generic modes (slow, but independent of the bulk path). */
function openSslBlock(key: Uint8Array): BlockCipher {
  const one = (enc: boolean, b: Uint8Array, o: number): void => {
    const c = enc ? createCipheriv('cast5-ecb', key, null) : createDecipheriv('cast5-ecb', key, null);
    c.setAutoPadding(false);
    b.set(c.update(b.subarray(o, o + 8)), o);
  };
  return { blockSize: 8, encryptBlock: (b, o) => one(true, b, o), decryptBlock: (b, o) => one(false, b, o) };
}

const hex = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s, 'hex'));

if (!cast5Available()) {
  it('runs again under node --openssl-legacy-provider', () => {
    const env = { ...process.env };
    delete env.NODE_TEST_CONTEXT; // a test run of its own, not a child reporting to this one
    const r = spawnSync(process.execPath, ['--openssl-legacy-provider', '--import', 'tsx', '--test', '--test-reporter=spec', fileURLToPath(import.meta.url)], {
      env,
      encoding: 'utf8',
      timeout: 120_000,
    });
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /ℹ pass [1-9]/);
    assert.match(r.stdout, /ℹ fail 0/);
  });
} else {
  describe('CAST5 through the Node provider', () => {
    it("ECB sectors give RFC 2144's 128-bit test vector in every block", async () => {
      const key = hex('0123456712345678234567893456789a');
      const sector = new Uint8Array(512);
      for (let o = 0; o < 512; o += 8) sector.set(hex('0123456789abcdef'), o);
      const c = nodeCrypto.sectorCipher({ alg: 'cast5-128', mode: 'ecb', ivgen: 'plain64' }, key);
      await c.encrypt(7, sector);
      for (let o = 0; o < 512; o += 8) assert.equal(Buffer.from(sector.subarray(o, o + 8)).toString('hex'), '238b4fe5847e44b2');
      await c.decrypt(7, sector);
      assert.equal(Buffer.from(sector.subarray(0, 8)).toString('hex'), '0123456789abcdef');
    });

    const modes: CipherMode[] = ['cbc', 'ecb', 'ctr'];
    const ivgens: IvGenAlg[] = ['plain', 'plain64'];
    for (const mode of modes) {
      for (const ivgen of ivgens) {
        it(`${mode}-${ivgen}: the bulk path equals the generic modes, both ways`, async () => {
          const spec: CipherSpec = { alg: 'cast5-128', mode, ivgen };
          const key = new Uint8Array(randomBytes(16));
          const plain = new Uint8Array(randomBytes(4 * 512));
          // Sector numbers across 2^32, where plain and plain64 IVs part.
          const first = 2 ** 32 - 2;
          const bulk = plain.slice();
          await nodeCrypto.sectorCipher(spec, key).encrypt(first, bulk);
          const generic = plain.slice();
          await blockSectorCipher(spec, key, (_alg, k) => openSslBlock(k), portableCrypto.digest).encrypt(first, generic);
          assert.deepEqual(bulk, generic);
          assert.notDeepEqual(bulk, plain);
          await nodeCrypto.sectorCipher(spec, key).decrypt(first, bulk);
          assert.deepEqual(bulk, plain);
        });
      }
    }

    it("cbc decryption (bulk ECB and XOR) equals OpenSSL's own cast5-cbc per sector", async () => {
      const key = new Uint8Array(randomBytes(16));
      const data = new Uint8Array(randomBytes(2 * 512));
      const ours = data.slice();
      await nodeCrypto.sectorCipher({ alg: 'cast5-128', mode: 'cbc', ivgen: 'plain64' }, key).decrypt(5, ours);
      for (let i = 0; i < 2; i++) {
        const iv = new Uint8Array(8);
        new DataView(iv.buffer).setBigUint64(0, BigInt(5 + i), true);
        const d = createDecipheriv('cast5-cbc', key, iv);
        d.setAutoPadding(false);
        assert.deepEqual(new Uint8Array(d.update(data.subarray(i * 512, (i + 1) * 512))), ours.subarray(i * 512, (i + 1) * 512));
      }
    });
  });
}
