/**
 * Make a LUKS header qemu wrote the same on every run, and still openable
 * with the fuzz passphrase: a fixed master key, salts, UUID and AF-split
 * randomness, 1000 PBKDF2 iterations (slot and digest), slot 0 sealed again
 * under FUZZ_PASSPHRASE; the other slots stay empty. Synchronous, with
 * OpenSSL (AES-XTS, the only cipher the seeds use), so seeds stay a plain
 * function call.
 */
import { createCipheriv, createHash, pbkdf2Sync } from 'node:crypto';
import { afSplit } from '../../src/crypto/af.js';
import { decodeLuksHeader, encodeLuksHeader, LUKS_SECTOR, LUKS_STRIPES } from '../../src/crypto/luks-header.js';
import type { HashAlg } from '../../src/crypto/provider.js';

export const FUZZ_PASSPHRASE = 'fuzz';
export const FUZZ_ITERATIONS = 1000;

const fixed = (n: number, x: number): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (x + i * 7) & 0xff);

/** AES-XTS over whole sectors, each with its plain64 number (from `firstSector`) as tweak. */
export function xtsEncrypt(key: Uint8Array, data: Uint8Array, firstSector: number): Uint8Array {
  const out = new Uint8Array(data.length);
  for (let s = 0; s * LUKS_SECTOR < data.length; s++) {
    const iv = Buffer.alloc(16);
    iv.writeBigUInt64LE(BigInt(firstSector + s));
    const c = createCipheriv(`aes-${(key.length / 2) * 8}-xts`, key, iv).setAutoPadding(false);
    const part = data.subarray(s * LUKS_SECTOR, (s + 1) * LUKS_SECTOR);
    out.set(Buffer.concat([c.update(part), c.final()]), s * LUKS_SECTOR);
  }
  return out;
}

/** Rewrite the LUKS header at `off` in place; returns the fixed master key. */
export function rekeyLuks(b: Uint8Array, off: number): Uint8Array {
  const h = decodeLuksHeader(b.subarray(off, off + 592));
  if (h.cipherName !== 'aes' || !h.cipherMode.startsWith('xts')) throw new Error(`fuzz seeds use aes-xts, not ${h.cipherName}-${h.cipherMode}`);
  const hash = h.hashSpec as HashAlg;
  const masterKey = fixed(h.keyBytes, 0x40);
  h.mkDigestSalt = fixed(32, 2);
  h.mkDigestIter = FUZZ_ITERATIONS;
  h.mkDigest = pbkdf2Sync(masterKey, h.mkDigestSalt, FUZZ_ITERATIONS, 20, hash);
  h.uuid = '01234567-89ab-cdef-0123-456789abcdef';
  let counter = 0;
  const random = (n: number): Uint8Array => fixed(n, 0x11 + counter++);
  const digest = (alg: HashAlg, data: Uint8Array): Uint8Array => createHash(alg).update(data).digest();
  h.slots.forEach((s, i) => {
    s.salt = i === 0 ? fixed(32, 3) : new Uint8Array(32);
    s.iterations = i === 0 ? FUZZ_ITERATIONS : 0;
    s.active = i === 0;
  });
  const slot = h.slots[0]!;
  const slotKey = pbkdf2Sync(FUZZ_PASSPHRASE, slot.salt, FUZZ_ITERATIONS, h.keyBytes, hash);
  const split = afSplit(hash, digest, masterKey, LUKS_STRIPES, random);
  const padded = new Uint8Array(Math.ceil(split.length / LUKS_SECTOR) * LUKS_SECTOR);
  padded.set(split);
  const material = xtsEncrypt(slotKey, padded, 0).subarray(0, split.length);
  // Every slot area the same deterministic filler, then slot 0's material.
  const from = off + h.slots[0]!.keyMaterialOffsetSectors * LUKS_SECTOR;
  const to = Math.min(b.length, off + h.payloadOffsetSectors * LUKS_SECTOR);
  for (let i = from; i < to; i++) b[i] = (i * 13) & 0xff;
  b.set(material, from);
  b.set(encodeLuksHeader(h), off);
  return masterKey;
}
