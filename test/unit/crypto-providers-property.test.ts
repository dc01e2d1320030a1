/**
 * The fast AES paths against the generic block-at-a-time one (itself checked
 * against published vectors in crypto-vectors.test.ts), byte for byte: the
 * Node provider (the sectorcrypto addon: PBKDF2 blocks on two threads, whole
 * requests of sectors on the thread pool; without it, bulk ECB plus XOR
 * masks) and the portable one (word-wise AES; WebCrypto AES-CBC for large
 * XTS and CBC decryptions). Random specs, keys, first
 * sectors (past 2^32, where plain and plain64 differ), lengths (past the
 * size where a request is split in two) and buffer offsets (unaligned too).
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import fc from 'fast-check';
import { aesWordSectorCipher } from '../../src/crypto/aes-sectors.js';
import { blockSectorCipher } from '../../src/crypto/block-sector-cipher.js';
import { portableBlockCipher } from '../../src/crypto/ciphers.js';
import { portableDigest } from '../../src/crypto/hashes.js';
import { portableCrypto } from '../../src/crypto/portable.js';
import type { CryptoProvider } from '../../src/crypto/provider.js';
import { HASH_ALGS, digestLength } from '../../src/crypto/provider.js';
import { CIPHER_MODES, IVGEN_ALGS, cipherKeyLength, type CipherSpec } from '../../src/crypto/sector-cipher.js';
import { nodeCrypto } from '../../src/io/crypto.js';
import { sectorCryptoAddon, setSectorCryptoAddon } from '../../src/io/sector-crypto-addon.js';

const AES = ['aes-128', 'aes-192', 'aes-256'] as const;

const specArb = fc
  .record({ alg: fc.constantFrom(...AES), mode: fc.constantFrom(...CIPHER_MODES), ivgen: fc.constantFrom(...IVGEN_ALGS), ivgenHash: fc.constantFrom('sha256', 'sha1', 'md5') })
  .map(({ alg, mode, ivgen, ivgenHash }): CipherSpec => (ivgen === 'essiv' ? { alg, mode, ivgen, ivgenHash } : { alg, mode, ivgen }))
  // essiv needs a hash as long as some AES key (md5: 16, sha256: 32); sha1's 20 fits none.
  .filter((s) => s.ivgen !== 'essiv' || s.ivgenHash !== 'sha1');

const caseArb = fc.record({
  spec: specArb,
  seed: fc.uint8Array({ minLength: 64, maxLength: 64 }),
  sector: fc.oneof(fc.nat(1 << 20), fc.constant(0xffff_fff0), fc.integer({ min: 2 ** 32 - 200, max: 2 ** 40 })),
  // Up to 300 sectors: past the 64 KiB at which the addon splits a request.
  sectors: fc.oneof(fc.integer({ min: 0, max: 8 }), fc.integer({ min: 120, max: 300 })),
  equalHalves: fc.boolean(),
  offset: fc.constantFrom(0, 1, 4, 16),
});

type Case = typeof caseArb extends fc.Arbitrary<infer T> ? T : never;

function keyFor(c: Case): Uint8Array {
  const n = cipherKeyLength(c.spec);
  const key = c.seed.slice(0, n);
  // XTS keys with equal halves: OpenSSL refuses them, qemu (and qimg) take them.
  if (c.spec.mode === 'xts' && c.equalHalves) key.copyWithin(n / 2, 0, n / 2);
  return key;
}

/** The case's plaintext, `offset` bytes into a larger buffer. */
function data(c: Case): Uint8Array {
  const d = new Uint8Array(c.offset + c.sectors * 512).subarray(c.offset);
  for (let i = 0; i < d.length; i++) d[i] = (i * 131 + c.seed[i % 64]!) & 0xff;
  return d;
}

async function agree(p: Pick<CryptoProvider, 'sectorCipher'>, c: Case): Promise<void> {
  const key = keyFor(c);
  const plain = data(c);
  const want = plain.slice();
  await blockSectorCipher(c.spec, key, portableBlockCipher, portableDigest).encrypt(c.sector, want);
  const fast = p.sectorCipher(c.spec, key);
  const got = data(c);
  await fast.encrypt(c.sector, got);
  assert.deepEqual(got, want, 'encrypt');
  await fast.decrypt(c.sector, got);
  assert.deepEqual(got, plain, 'decrypt');
}

const modes: [string, () => void][] = [
  ['with the addon', () => setSectorCryptoAddon(undefined)],
  ['without the addon (node:crypto)', () => setSectorCryptoAddon(null)],
];

after(() => setSectorCryptoAddon(undefined));

describe('fast AES sector paths agree with the generic one', () => {
  it('the addon is built (npm install builds it)', (t) => {
    setSectorCryptoAddon(undefined);
    if (sectorCryptoAddon()) return;
    if (process.env.CI) throw new Error('the sectorcrypto addon is required when CI is set (npm install builds it)');
    t.skip('sectorcrypto addon not built');
  });

  for (const [name, use] of modes) {
    it(`AES sectors, every mode and IV generator, ${name}`, async () => {
      use();
      await fc.assert(fc.asyncProperty(caseArb, (c) => agree(nodeCrypto, c)), { numRuns: 150 });
    });

    it(`PBKDF2 of one to several blocks, ${name}`, async () => {
      use();
      await fc.assert(
        fc.asyncProperty(
          fc.constantFrom(...HASH_ALGS),
          fc.uint8Array({ maxLength: 200 }),
          fc.uint8Array({ maxLength: 40 }),
          fc.integer({ min: 1, max: 300 }),
          fc.integer({ min: 1, max: 150 }),
          async (hash, password, salt, iterations, keyLength) => {
            const got = await nodeCrypto.pbkdf2(hash, password, salt, iterations, keyLength);
            const want = await portableCrypto.pbkdf2(hash, password, salt, iterations, keyLength);
            assert.equal(got.length, keyLength, `${digestLength(hash)}-byte digest`);
            assert.deepEqual(new Uint8Array(got), new Uint8Array(want));
          },
        ),
        { numRuns: 60 },
      );
    });
  }

  it('portable AES (WebCrypto for large XTS/CBC decryption), every mode and IV generator', async () => {
    await fc.assert(fc.asyncProperty(caseArb, (c) => agree(portableCrypto, c)), { numRuns: 100 });
  });

  it('portable word-wise AES alone (hosts without WebCrypto), every mode and IV generator', async () => {
    const words = { sectorCipher: (spec: CipherSpec, key: Uint8Array) => aesWordSectorCipher(spec, key, portableDigest)! };
    await fc.assert(fc.asyncProperty(caseArb, (c) => agree(words, c)), { numRuns: 100 });
  });

  it('sectors of one request are independent of how the request is cut', async () => {
    setSectorCryptoAddon(undefined);
    await fc.assert(
      fc.asyncProperty(caseArb, fc.nat(), async (c, cutSeed) => {
        const key = keyFor(c);
        const node = nodeCrypto.sectorCipher(c.spec, key);
        const whole = data(c);
        await node.encrypt(c.sector, whole);
        const pieces = data(c);
        const cut = c.sectors === 0 ? 0 : cutSeed % (c.sectors + 1);
        await node.encrypt(c.sector, pieces.subarray(0, cut * 512));
        await node.encrypt(c.sector + cut, pieces.subarray(cut * 512));
        assert.deepEqual(pieces, whole);
      }),
      { numRuns: 60 },
    );
  });
});
