/**
 * The LUKS pieces on their own: anti-forensic split/merge, header round trip,
 * qemu's layout arithmetic, iteration calibration and its cap, and the rule
 * that src/crypto stays portable (no node: imports).
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { afMerge, afSplit } from '../../src/crypto/af.js';
import { luksSplitKeySectors } from '../../src/crypto/luks-header.js';
import { createLuks, iterationsFor, MAX_PBKDF2_ITERATIONS, parseLuksHeader, serializeLuksHeader, unlockLuks } from '../../src/crypto/luks.js';
import { portableCrypto } from '../../src/crypto/portable.js';
import { nodeCrypto } from '../../src/io/crypto.js';
import { HASH_ALGS } from '../../src/crypto/provider.js';
import { isImageError } from '../../src/errors.js';

const pw = new TextEncoder().encode('secret');

describe('LUKS core', () => {
  it('AF split then merge gives the key back for every hash; one flipped byte loses it', () => {
    const key = portableCrypto.randomBytes(48);
    for (const hash of HASH_ALGS) {
      const material = afSplit(hash, portableCrypto.digest, key, 4000, portableCrypto.randomBytes);
      assert.equal(material.length, 48 * 4000);
      assert.deepEqual(afMerge(hash, portableCrypto.digest, material, 48, 4000), key, hash);
      material[1234]! ^= 1;
      assert.notDeepEqual(afMerge(hash, portableCrypto.digest, material, 48, 4000), key, hash);
    }
  });

  it("key material areas are rounded to 4 KiB as qemu lays them out", () => {
    assert.equal(luksSplitKeySectors(64, 4000), 504); // 256000 bytes = 500 sectors
    assert.equal(luksSplitKeySectors(32, 4000), 256);
    assert.equal(luksSplitKeySectors(16, 4000), 128); // 125 sectors
  });

  it('a created volume round-trips through serialize/parse and unlocks from its own bytes', async () => {
    const made = await createLuks({ iterations: { slot: 1000, masterKey: 1000 }, uuid: '01234567-89ab-4cde-8f01-23456789abcd' }, pw, portableCrypto);
    assert.equal(made.payloadOffset, 4040 * 512);
    const h = parseLuksHeader(made.bytes);
    assert.deepEqual(serializeLuksHeader(h), made.bytes.subarray(0, 592));
    assert.equal(h.uuid, '01234567-89ab-4cde-8f01-23456789abcd');
    const readAt = (o: number, n: number): Promise<Uint8Array> => Promise.resolve(made.bytes.slice(o, o + n));
    const u = await unlockLuks(h, pw, readAt, portableCrypto);
    assert.deepEqual(u.masterKey, made.masterKey);
    await assert.rejects(unlockLuks(h, new TextEncoder().encode('other'), readAt, portableCrypto), (e) => isImageError(e, 'bad-secret'));
  });

  it('iterations follow the measured rate with qemu floor of 1000, and refuse past the cap', () => {
    assert.equal(iterationsFor(100, 2000), 200000);
    assert.equal(iterationsFor(100, 2000, 8), 25000);
    assert.equal(iterationsFor(0.001, 10), 1000);
    assert.throws(() => iterationsFor(MAX_PBKDF2_ITERATIONS, 2), (e) => isImageError(e, 'bad-argument'));
    // qemu's limits, in its words: the count must fit 32 bits, rate/s * iter-time 64 bits.
    assert.throws(() => iterationsFor(5000, 1e6), (e) => isImageError(e, 'bad-argument') && e.message === 'PBKDF iterations 5000000000 larger than 4294967295: Numerical result out of range');
    assert.throws(() => iterationsFor(5000, 1e6, 8), (e) => isImageError(e, 'bad-argument') && e.message === 'Too many password hash iterations for LUKS volume (625000000 > 67108864)');
    assert.throws(() => iterationsFor(5000, 1e13), (e) => isImageError(e, 'bad-argument') && e.message === 'PBKDF iterations 5000000 too large to scale: Numerical result out of range');
  });

  it('iter-time calibration counts PBKDF2 blocks: a 64-byte SHA-256 slot key costs two', async () => {
    // qemu-img's volumes show the same shape: slot/master-key iterations = 8 / blocks (4 for aes-256-xts + sha256, 2 with sha1).
    const fixedRate = { ...nodeCrypto, pbkdf2Rate: () => Promise.resolve(100) };
    const made = await createLuks({ iterTime: 2000 }, pw, fixedRate);
    assert.equal(made.header.slots[0]!.iterations, 100000);
    assert.equal(made.header.mkDigestIter, 25000);
    const sha1 = await createLuks({ iterTime: 2000, hashAlg: 'sha1' }, pw, fixedRate);
    assert.equal(sha1.header.slots[0]!.iterations, 50000);
    assert.equal(sha1.header.mkDigestIter, 25000);
  });

  it('src/crypto imports nothing from node:', () => {
    const dir = join(import.meta.dirname, '../../src/crypto');
    for (const f of readdirSync(dir)) {
      assert.doesNotMatch(readFileSync(join(dir, f), 'utf8'), /from ['"]node:/, f);
    }
  });
});
