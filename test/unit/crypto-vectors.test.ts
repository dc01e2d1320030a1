/**
 * Published test vectors for what the crypto core implements or wraps:
 * XTS-AES (IEEE 1619-2007 Annex B), PBKDF2 (RFC 6070 for SHA-1, RFC 7914 §11
 * and common vectors for SHA-2), Serpent (NESSIE), Twofish (the designers'
 * ECB_TBL), and the two providers agreeing on every hash and cipher.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { aesBlockCipher } from '../../src/crypto/aes.js';
import { sectorMode } from '../../src/crypto/modes.js';
import { portableCrypto } from '../../src/crypto/portable.js';
import { HASH_ALGS, digestLength } from '../../src/crypto/provider.js';
import { CIPHER_ALGS, CIPHER_MODES, IVGEN_ALGS, cipherKeyLength, type CipherSpec } from '../../src/crypto/sector-cipher.js';
import { serpentBlockCipher } from '../../src/crypto/serpent.js';
import { twofishBlockCipher } from '../../src/crypto/twofish.js';
import { legacyAesCipher } from '../../src/crypto/legacy-aes.js';
import { nodeCrypto } from '../../src/io/crypto.js';

const hex = (s: string): Uint8Array => Uint8Array.from(s.replace(/\s+/g, '').match(/../g) ?? [], (h) => parseInt(h, 16));
const toHex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const utf8 = (s: string): Uint8Array => new TextEncoder().encode(s);

describe('XTS-AES (IEEE 1619-2007 vectors)', () => {
  const cases = [
    {
      name: 'vector 1',
      key1: '00000000000000000000000000000000',
      key2: '00000000000000000000000000000000',
      tweak: '00000000000000000000000000000000',
      ptx: '0000000000000000000000000000000000000000000000000000000000000000',
      ctx: '917cf69ebd68b2ec9b9fe9a3eadda692cd43d2f59598ed858c02c2652fbf922e',
    },
    {
      name: 'vector 2',
      key1: '11111111111111111111111111111111',
      key2: '22222222222222222222222222222222',
      tweak: '33333333330000000000000000000000',
      ptx: '4444444444444444444444444444444444444444444444444444444444444444',
      ctx: 'c454185e6a16936e39334038acef838bfb186fff7480adc4289382ecd6d394f0',
    },
    {
      name: 'vector 3',
      key1: 'fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0',
      key2: '22222222222222222222222222222222',
      tweak: '33333333330000000000000000000000',
      ptx: '4444444444444444444444444444444444444444444444444444444444444444',
      ctx: 'af85336b597afc1a900b2eb21ec949d292df4c047e0b21532186a5971a227a89',
    },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const mode = sectorMode('xts', aesBlockCipher(hex(c.key1)), aesBlockCipher(hex(c.key2)));
      const data = hex(c.ptx);
      mode.encrypt(hex(c.tweak), data, 0, data.length);
      assert.equal(toHex(data), c.ctx);
      mode.decrypt(hex(c.tweak), data, 0, data.length);
      assert.equal(toHex(data), c.ptx);
    });
  }

  it('vector 4 (a 512-byte data unit) through both providers', async () => {
    const key = hex('27182818284590452353602874713526' + '31415926535897932384626433832795');
    const ptx = Uint8Array.from({ length: 512 }, (_, i) => i & 0xff);
    const spec: CipherSpec = { alg: 'aes-128', mode: 'xts', ivgen: 'plain64' };
    const outs: Uint8Array[] = [];
    for (const p of [portableCrypto, nodeCrypto]) {
      const d = ptx.slice();
      await p.sectorCipher(spec, key).encrypt(0, d);
      outs.push(d);
    }
    assert.equal(toHex(outs[0]!.subarray(0, 32)), '27a7479befa1d476489f308cd4cfa6e2a96e4bbe3208ff25287dd3819616e89c');
    assert.deepEqual(outs[0], outs[1], 'OpenSSL and the portable XTS agree');
  });
});

describe('PBKDF2', () => {
  const vectors: [CipherHash, string, string, number, number, string][] = [
    ['sha1', 'password', 'salt', 1, 20, '0c60c80f961f0e71f3a9b524af6012062fe037a6'],
    ['sha1', 'password', 'salt', 2, 20, 'ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957'],
    ['sha1', 'password', 'salt', 4096, 20, '4b007901b765489abead49d926f721d065a429c1'],
    ['sha1', 'passwordPASSWORDpassword', 'saltSALTsaltSALTsaltSALTsaltSALTsalt', 4096, 25, '3d2eec4fe41c849b80c8d83662c0e44a8b291a964cf2f07038'],
    ['sha1', 'pass\0word', 'sa\0lt', 4096, 16, '56fa6aa75548099dcc37d7f03425e0c3'],
    ['sha256', 'password', 'salt', 1, 32, '120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b'],
    ['sha256', 'password', 'salt', 2, 32, 'ae4d0c95af6b46d32d0adff928f06dd02a303f8ef3c251dfd6e2d85a95474c43'],
    ['sha256', 'password', 'salt', 4096, 32, 'c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a'],
    [
      'sha512',
      'password',
      'salt',
      1,
      64,
      '867f70cf1ade02cff3752599a3a53dc4af34c7a669815ae5d513554e1c8cf252c02d470a285a0501bad999bfe943c08f050235d7d68b1da55e63f73b60a57fce',
    ],
  ];
  for (const [hash, pw, salt, c, len, want] of vectors) {
    it(`${hash} ${JSON.stringify(pw)} c=${c}`, async () => {
      for (const p of [portableCrypto, nodeCrypto]) {
        assert.equal(toHex(await p.pbkdf2(hash, utf8(pw), utf8(salt), c, len)), want);
      }
    });
  }

  it('the providers agree for every hash LUKS names', async () => {
    for (const hash of HASH_ALGS) {
      const a = await portableCrypto.pbkdf2(hash, utf8('pw'), utf8('salty'), 1000, 48);
      const b = await nodeCrypto.pbkdf2(hash, utf8('pw'), utf8('salty'), 1000, 48);
      assert.deepEqual(a, b, hash);
      const d = portableCrypto.digest(hash, utf8('abc'));
      assert.equal(d.length, digestLength(hash));
      assert.deepEqual(d, nodeCrypto.digest(hash, utf8('abc')), hash);
    }
  });
});

type CipherHash = 'sha1' | 'sha256' | 'sha512';

describe('Serpent', () => {
  it('NESSIE set 1 vector 0 (128-bit key)', () => {
    const c = serpentBlockCipher(hex('80000000000000000000000000000000'));
    const b = new Uint8Array(16);
    c.encryptBlock(b, 0);
    assert.equal(toHex(b), '264e5481eff42a4606abda06c0bfda3d');
    c.decryptBlock(b, 0);
    assert.deepEqual(b, new Uint8Array(16));
  });
});

describe('Twofish', () => {
  it('zero key, zero block for 128, 192 and 256-bit keys', () => {
    const want: Record<number, string> = {
      16: '9f589f5cf6122c32b6bfec2f2ae8c35a',
      24: 'efa71f788965bd4453f860178fc19101',
      32: '57ff739d4dc92c1bd7fc01700cc8216f',
    };
    for (const n of [16, 24, 32]) {
      const c = twofishBlockCipher(new Uint8Array(n));
      const b = new Uint8Array(16);
      c.encryptBlock(b, 0);
      assert.equal(toHex(b), want[n]);
      c.decryptBlock(b, 0);
      assert.deepEqual(b, new Uint8Array(16));
    }
  });

  it('ECB_TBL 128-bit chain: each ciphertext keys or feeds the next', () => {
    // I=2: key 0, PT = CT(I=1); I=3: key = CT(I=1), PT = CT(I=2).
    const ct1 = hex('9f589f5cf6122c32b6bfec2f2ae8c35a');
    const b = ct1.slice();
    twofishBlockCipher(new Uint8Array(16)).encryptBlock(b, 0);
    assert.equal(toHex(b), 'd491db16e7b1c39e86cb086b789f5419');
    twofishBlockCipher(ct1).encryptBlock(b, 0);
    assert.equal(toHex(b), '019f9809de1711858faac3a3ba20fbc3');
  });
});

describe('sector ciphers', () => {
  it('both providers give the same bytes for every cipher, mode and IV generator', async () => {
    const data = Uint8Array.from({ length: 2048 }, (_, i) => (i * 7) & 0xff);
    for (const alg of CIPHER_ALGS.filter((a) => !a.startsWith('cast5'))) {
      for (const mode of CIPHER_MODES) {
        for (const ivgen of IVGEN_ALGS) {
          const spec: CipherSpec = { alg, mode, ivgen, ...(ivgen === 'essiv' ? { ivgenHash: alg.endsWith('128') ? 'md5' : 'sha256' } : {}) };
          if (ivgen === 'essiv' && alg.endsWith('192')) continue; // no 24-byte digest
          const key = Uint8Array.from({ length: cipherKeyLength(spec) }, (_, i) => i + 1);
          const a = data.slice();
          const b = data.slice();
          await portableCrypto.sectorCipher(spec, key).encrypt(0x1_0000_0003, a);
          await nodeCrypto.sectorCipher(spec, key).encrypt(0x1_0000_0003, b);
          assert.notDeepEqual(a, data);
          assert.deepEqual(a, b, JSON.stringify(spec));
          await nodeCrypto.sectorCipher(spec, key).decrypt(0x1_0000_0003, a);
          assert.deepEqual(a, data, JSON.stringify(spec));
        }
      }
    }
  });

  it('plain and plain64 differ only past 2^32 sectors; each sector has its own IV', async () => {
    const key = new Uint8Array(32).fill(9);
    const run = async (ivgen: CipherSpec['ivgen'], sector: number): Promise<Uint8Array> => {
      const d = new Uint8Array(512);
      await portableCrypto.sectorCipher({ alg: 'aes-256', mode: 'cbc', ivgen }, key).encrypt(sector, d);
      return d;
    };
    assert.deepEqual(await run('plain', 5), await run('plain64', 5));
    assert.deepEqual(await run('plain', 0x1_0000_0005), await run('plain64', 5));
    assert.notDeepEqual(await run('plain64', 0x1_0000_0005), await run('plain64', 5));
    assert.notDeepEqual(await run('plain64', 6), await run('plain64', 5));
  });

  it('legacy qcow2 AES: AES-128-CBC, passphrase bytes as key, plain64 IVs', async () => {
    const pass = utf8('a passphrase longer than sixteen bytes');
    const d = new Uint8Array(1024).fill(1);
    await legacyAesCipher(pass, nodeCrypto).encrypt(7, d);
    const { createCipheriv } = await import('node:crypto');
    const iv = new Uint8Array(16);
    iv[0] = 8; // second sector
    const c = createCipheriv('aes-128-cbc', pass.subarray(0, 16), iv).setAutoPadding(false);
    assert.deepEqual(new Uint8Array(c.update(new Uint8Array(512).fill(1))), d.subarray(512));
  });
});
