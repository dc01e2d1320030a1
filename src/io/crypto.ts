/**
 * The Node CryptoProvider: OpenSSL (node:crypto) for the hashes, PBKDF2 on
 * libuv's thread pool, AES in ECB/CBC/CTR/XTS and CAST5 (from OpenSSL's
 * legacy provider, see cast5.ts); the portable code for what OpenSSL lacks
 * (Serpent, Twofish, and RIPEMD-160 when the build has none).
 */
import { createCipheriv, createDecipheriv, createHash, getCiphers, getHashes, pbkdf2 as nodePbkdf2, randomFillSync } from 'node:crypto';
import { blockSectorCipher, checkCipherKey, essivBlockCipher } from '../crypto/block-sector-cipher.js';
import { portableBlockCipher } from '../crypto/ciphers.js';
import { ivGenerator } from '../crypto/ivgen.js';
import { requireCast5 } from './cast5.js';
import { xtsDouble } from '../crypto/modes.js';
import { measurePbkdf2Rate, portableCrypto } from '../crypto/portable.js';
import type { CryptoProvider, HashAlg } from '../crypto/provider.js';
import {
  checkSectorData,
  cipherAlgKeyLength,
  cipherFamily,
  cipherIvLength,
  SECTOR_SIZE,
  type CipherAlg,
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


const LITTLE_ENDIAN = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1;

/** dst ^= src, a word at a time when both are aligned (the bulk of XTS/CTR/CBC time here). */
function xorBytes(dst: Uint8Array, src: Uint8Array): void {
  const n = dst.length;
  if (dst.byteOffset % 4 === 0 && src.byteOffset % 4 === 0 && n % 4 === 0) {
    const d = new Uint32Array(dst.buffer, dst.byteOffset, n / 4);
    const s = new Uint32Array(src.buffer, src.byteOffset, n / 4);
    for (let i = 0; i < d.length; i++) d[i]! ^= s[i]!;
    return;
  }
  for (let i = 0; i < n; i++) dst[i]! ^= src[i]!;
}

/** Each sector's 32 XTS tweaks from its first (already encrypted) one. */
function xtsMask(first: Uint8Array, count: number): Uint8Array {
  const mask = new Uint8Array(count * SECTOR_SIZE);
  if (!LITTLE_ENDIAN) {
    for (let i = 0; i < count; i++) {
      const t = first.slice(i * 16, i * 16 + 16);
      for (let o = i * SECTOR_SIZE; o < (i + 1) * SECTOR_SIZE; o += 16) {
        mask.set(t, o);
        xtsDouble(t);
      }
    }
    return mask;
  }
  const m = new Uint32Array(mask.buffer);
  const f = new Uint32Array(first.buffer, first.byteOffset, count * 4);
  for (let i = 0, k = 0; i < count; i++) {
    let t0 = f[4 * i]!;
    let t1 = f[4 * i + 1]!;
    let t2 = f[4 * i + 2]!;
    let t3 = f[4 * i + 3]!;
    for (let j = 0; j < SECTOR_SIZE / 16; j++, k += 4) {
      m[k] = t0;
      m[k + 1] = t1;
      m[k + 2] = t2;
      m[k + 3] = t3;
      const carry = t3 >>> 31;
      t3 = ((t3 << 1) | (t2 >>> 31)) >>> 0;
      t2 = ((t2 << 1) | (t1 >>> 31)) >>> 0;
      t1 = ((t1 << 1) | (t0 >>> 31)) >>> 0;
      t0 = ((t0 << 1) ^ (carry * 0x87)) >>> 0;
    }
  }
  return mask;
}

/** Big-endian increment of a `bs`-byte counter at `o`, as CTR mode steps it. */
function increment(c: Uint8Array, o: number, bs: number): void {
  for (let i = o + bs - 1; i >= o; i--) {
    c[i] = (c[i]! + 1) & 0xff;
    if (c[i] !== 0) return;
  }
}

/** The OpenSSL names of one block cipher: its ECB and CBC forms, and its block size. */
interface OpenSslCipher {
  ecb: string;
  cbc: string;
  blockSize: number;
}

function openSslCipher(alg: CipherAlg): OpenSslCipher {
  if (cipherFamily(alg) === 'cast5') return { ecb: 'cast5-ecb', cbc: 'cast5-cbc', blockSize: 8 };
  const bits = cipherAlgKeyLength(alg) * 8;
  return { ecb: `aes-${bits}-ecb`, cbc: `aes-${bits}-cbc`, blockSize: 16 };
}

/**
 * Sectors through OpenSSL (AES, and CAST5 with the legacy provider). Each
 * sector has its own IV, so rather than one cipher context per sector, every
 * mode but CBC encryption is expressed as one bulk ECB pass plus XORs
 * computed here: XTS masks each block with its tweak, CTR XORs an
 * ECB-encrypted counter stream, CBC decryption XORs the previous ciphertext
 * block. CBC encryption is sequential and goes sector by sector.
 */
function nodeSectorCipher(spec: CipherSpec, key: Uint8Array): SectorCipher {
  checkCipherKey(spec, key);
  const names = openSslCipher(spec.alg);
  const bs = names.blockSize;
  const half = cipherAlgKeyLength(spec.alg);
  const dataKey = Buffer.from(key.subarray(0, half));
  const tweakKey = spec.mode === 'xts' ? Buffer.from(key.subarray(half, 2 * half)) : undefined;
  const niv = cipherIvLength(spec);
  const ivgen = niv > 0 ? ivGenerator(spec.ivgen, spec.ivgen === 'essiv' ? essivBlockCipher(spec, key, portableBlockCipher, digest) : undefined) : undefined;
  const ecb = (k: Buffer, enc: boolean, data: Uint8Array): Buffer => {
    const c = enc ? createCipheriv(names.ecb, k, null) : createDecipheriv(names.ecb, k, null);
    c.setAutoPadding(false);
    return c.update(data);
  };
  /** The IV of each sector, one block apiece. */
  const sectorIvs = (sector: number, count: number): Uint8Array => {
    const ivs = new Uint8Array(count * bs);
    for (let i = 0; i < count; i++) ivgen!(sector + i, ivs.subarray(i * bs, i * bs + bs));
    return ivs;
  };
  const run = (sector: number, data: Uint8Array, enc: boolean): Promise<void> => {
    checkSectorData(data);
    const count = data.length / SECTOR_SIZE;
    switch (spec.mode) {
      case 'ecb':
        data.set(ecb(dataKey, enc, data));
        break;
      case 'xts': {
        const mask = xtsMask(new Uint8Array(ecb(tweakKey!, true, sectorIvs(sector, count))), count);
        xorBytes(data, mask);
        data.set(ecb(dataKey, enc, data));
        xorBytes(data, mask);
        break;
      }
      case 'ctr': {
        const counters = new Uint8Array(data.length);
        const ivs = sectorIvs(sector, count);
        for (let i = 0; i < count; i++) {
          counters.set(ivs.subarray(i * bs, i * bs + bs), i * SECTOR_SIZE);
          for (let o = i * SECTOR_SIZE + bs; o < (i + 1) * SECTOR_SIZE; o += bs) {
            counters.copyWithin(o, o - bs, o);
            increment(counters, o, bs);
          }
        }
        xorBytes(data, ecb(dataKey, true, counters));
        break;
      }
      case 'cbc': {
        const ivs = sectorIvs(sector, count);
        if (enc) {
          for (let i = 0; i < count; i++) {
            const c = createCipheriv(names.cbc, dataKey, ivs.subarray(i * bs, i * bs + bs));
            c.setAutoPadding(false);
            data.set(c.update(data.subarray(i * SECTOR_SIZE, (i + 1) * SECTOR_SIZE)), i * SECTOR_SIZE);
          }
        } else {
          // Each block's chaining value: the sector IV, then the previous ciphertext block.
          const chain = new Uint8Array(data.length);
          for (let i = 0; i < count; i++) {
            const o = i * SECTOR_SIZE;
            chain.set(ivs.subarray(i * bs, i * bs + bs), o);
            chain.set(data.subarray(o, o + SECTOR_SIZE - bs), o + bs);
          }
          data.set(ecb(dataKey, false, data));
          xorBytes(data, chain);
        }
        break;
      }
    }
    return Promise.resolve();
  };
  return { sectorSize: SECTOR_SIZE, encrypt: (s, d) => run(s, d, true), decrypt: (s, d) => run(s, d, false) };
}

function cpuMilliseconds(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

export const nodeCrypto: CryptoProvider = {
  pbkdf2,
  digest,
  randomBytes(n) {
    return randomFillSync(new Uint8Array(n));
  },
  sectorCipher(spec, key) {
    const family = cipherFamily(spec.alg);
    if (family === 'aes' && nodeCiphers.has(`aes-${cipherAlgKeyLength(spec.alg) * 8}-ecb`)) return nodeSectorCipher(spec, key);
    if (family === 'cast5') {
      requireCast5();
      return nodeSectorCipher(spec, key);
    }
    return blockSectorCipher(spec, key, portableBlockCipher, digest);
  },
  // CPU time, not wall time, as qemu times it: on a busy host wall time would
  // understate the rate and give weaker slots than qemu-img makes.
  pbkdf2Rate: (hash) => measurePbkdf2Rate(pbkdf2, hash, cpuMilliseconds),
};
