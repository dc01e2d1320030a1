/**
 * The Node CryptoProvider: OpenSSL (node:crypto) for the hashes, PBKDF2 on
 * libuv's thread pool and AES in ECB/CBC/CTR/XTS; the portable code for what
 * OpenSSL lacks or leaves to its legacy provider (Serpent, Twofish, CAST5, and
 * RIPEMD-160 when the build has none).
 */
import { createCipheriv, createDecipheriv, createHash, getCiphers, getHashes, pbkdf2 as nodePbkdf2, randomFillSync } from 'node:crypto';
import { blockSectorCipher, checkCipherKey, essivBlockCipher } from '../crypto/block-sector-cipher.js';
import { portableBlockCipher } from '../crypto/ciphers.js';
import { ivGenerator } from '../crypto/ivgen.js';
import { measurePbkdf2Rate, portableCrypto } from '../crypto/portable.js';
import type { CryptoProvider, HashAlg } from '../crypto/provider.js';
import {
  checkSectorData,
  cipherAlgKeyLength,
  cipherFamily,
  cipherIvLength,
  SECTOR_SIZE,
  type CipherSpec,
  type SectorCipher,
} from '../crypto/sector-cipher.js';

const nodeHashes = new Set(getHashes());
const nodeCiphers = new Set(getCiphers());
const hasHash = (hash: HashAlg): boolean => nodeHashes.has(hash) && probeHash(hash);

function probeHash(hash: HashAlg): boolean {
  try {
    createHash(hash).update('').digest();
    return true;
  } catch {
    return false; // listed but in OpenSSL 3's legacy provider, which is not loaded
  }
}

const usable = new Map<HashAlg, boolean>();
function nodeHas(hash: HashAlg): boolean {
  let ok = usable.get(hash);
  if (ok === undefined) usable.set(hash, (ok = hasHash(hash)));
  return ok;
}

function digest(hash: HashAlg, data: Uint8Array): Uint8Array {
  if (!nodeHas(hash)) return portableCrypto.digest(hash, data);
  const b = createHash(hash).update(data).digest();
  return new Uint8Array(b.buffer, b.byteOffset, b.length);
}

function pbkdf2(hash: HashAlg, password: Uint8Array, salt: Uint8Array, iterations: number, keyLength: number): Promise<Uint8Array> {
  if (!nodeHas(hash)) return portableCrypto.pbkdf2(hash, password, salt, iterations, keyLength);
  return new Promise((resolve, reject) => {
    nodePbkdf2(password, salt, iterations, keyLength, hash, (err, key) => {
      if (err) reject(err);
      else resolve(new Uint8Array(key.buffer, key.byteOffset, key.length));
    });
  });
}

/** OpenSSL's name for AES in a mode, e.g. aes-256-xts (whose key holds both halves). */
function opensslName(spec: CipherSpec): string {
  return `aes-${cipherAlgKeyLength(spec.alg) * 8}-${spec.mode}`;
}

/** AES sectors through OpenSSL: one cipher context per sector (each sector has its own IV). */
function nodeAesSectorCipher(spec: CipherSpec, key: Uint8Array): SectorCipher {
  checkCipherKey(spec, key);
  const name = opensslName(spec);
  const niv = cipherIvLength(spec);
  const ivgen = niv > 0 ? ivGenerator(spec.ivgen, spec.ivgen === 'essiv' ? essivBlockCipher(spec, key, portableBlockCipher, digest) : undefined) : undefined;
  const iv = new Uint8Array(niv);
  const keyBuf = Buffer.from(key);
  const run = (sector: number, data: Uint8Array, enc: boolean): Promise<void> => {
    checkSectorData(data);
    if (spec.mode === 'ecb') {
      // No IV: the whole run is one ECB stream.
      const c = enc ? createCipheriv(name, keyBuf, null) : createDecipheriv(name, keyBuf, null);
      c.setAutoPadding(false);
      data.set(c.update(data));
      return Promise.resolve();
    }
    for (let o = 0, s = sector; o < data.length; o += SECTOR_SIZE, s++) {
      ivgen!(s, iv);
      const c = enc ? createCipheriv(name, keyBuf, iv) : createDecipheriv(name, keyBuf, iv);
      c.setAutoPadding(false);
      const out = c.update(data.subarray(o, o + SECTOR_SIZE));
      data.set(out, o);
    }
    return Promise.resolve();
  };
  return { sectorSize: SECTOR_SIZE, encrypt: (s, d) => run(s, d, true), decrypt: (s, d) => run(s, d, false) };
}

function equalHalves(key: Uint8Array): boolean {
  const h = key.length / 2;
  for (let i = 0; i < h; i++) if (key[i] !== key[h + i]) return false;
  return true;
}

export const nodeCrypto: CryptoProvider = {
  pbkdf2,
  digest,
  randomBytes(n) {
    return randomFillSync(new Uint8Array(n));
  },
  sectorCipher(spec, key) {
    // OpenSSL refuses XTS keys whose two halves are equal (IEEE 1619 allows them).
    const sameHalves = spec.mode === 'xts' && equalHalves(key);
    // OpenSSL has no aes-192-xts.
    if (cipherFamily(spec.alg) === 'aes' && !sameHalves && nodeCiphers.has(opensslName(spec))) return nodeAesSectorCipher(spec, key);
    return blockSectorCipher(spec, key, portableBlockCipher, digest);
  },
  pbkdf2Rate: (hash) => measurePbkdf2Rate(pbkdf2, hash),
};
