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
import { digestLength, type CryptoProvider, type HashAlg } from '../crypto/provider.js';
import {
  checkSectorData,
  cipherAlgKeyLength,
  cipherFamily,
  cipherIvLength,
  essivCipherAlg,
  SECTOR_SIZE,
  type CipherAlg,
  type CipherSpec,
  type SectorCipher,
} from '../crypto/sector-cipher.js';
import { ADDON_PBKDF2_HASHES, AddonIv, sectorCryptoAddon, type SectorCryptoAddon } from './sector-crypto-addon.js';

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

/**
 * PBKDF2 through the addon: each digest-sized block of the output is an
 * independent chain of iterations, so a LUKS slot key of two blocks (AES-256
 * XTS with SHA-256) is derived on two threads at once.
 */
async function addonPbkdf2(addon: SectorCryptoAddon, hash: HashAlg, password: Uint8Array, salt: Uint8Array, iterations: number, keyLength: number): Promise<Uint8Array> {
  const size = digestLength(hash);
  const count = Math.ceil(keyLength / size);
  const blocks = await Promise.all(Array.from({ length: count }, (_, i) => addon.pbkdf2Block(hash, password, salt, iterations, i + 1)));
  const out = new Uint8Array(count * size);
  blocks.forEach((b, i) => {
    out.set(b, i * size);
    b.fill(0);
  });
  return out.subarray(0, keyLength);
}

function pbkdf2(hash: HashAlg, password: Uint8Array, salt: Uint8Array, iterations: number, keyLength: number): Promise<Uint8Array> {
  const addon = sectorCryptoAddon();
  if (addon && ADDON_PBKDF2_HASHES.has(hash) && iterations >= 1 && iterations <= 0xffffffff) {
    return addonPbkdf2(addon, hash, password, salt, iterations, keyLength);
  }
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

/** Big-endian increment of a 16-byte counter at `o`, as CTR mode steps it. */
function increment(c: Uint8Array, o: number): void {
  for (let i = o + 15; i >= o; i--) {
    c[i] = (c[i]! + 1) & 0xff;
    if (c[i] !== 0) return;
  }
}

/** Each sector's plain64 (or, with `bytes` 4, plain) IV, 16 bytes apiece. */
function plainIvs(sector: number, count: number, bytes: 4 | 8): Uint8Array {
  const ivs = new Uint8Array(count * 16);
  const v = new DataView(ivs.buffer);
  for (let i = 0; i < count; i++) {
    const s = sector + i;
    v.setUint32(i * 16, s >>> 0, true);
    if (bytes === 8) v.setUint32(i * 16 + 4, Math.floor(s / 0x1_0000_0000) >>> 0, true);
  }
  return ivs;
}

/** AES-ECB in one OpenSSL pass (no padding). */
function aesEcb(key: Uint8Array, enc: boolean, data: Uint8Array): Buffer {
  const name = `aes-${key.length * 8}-ecb`;
  const c = enc ? createCipheriv(name, key, null) : createDecipheriv(name, key, null);
  c.setAutoPadding(false);
  return c.update(data);
}

/** The IVs of a run of sectors for the spec's generator: plain64 encrypted under hash(master key) for essiv. */
function sectorIvMaker(spec: CipherSpec, key: Uint8Array): (sector: number, count: number) => Uint8Array {
  if (spec.ivgen !== 'essiv') {
    const bytes = spec.ivgen === 'plain' ? 4 : 8;
    return (sector, count) => plainIvs(sector, count, bytes);
  }
  const hash = spec.ivgenHash ?? 'sha256';
  const essivKey = Buffer.from(digest(hash, key).subarray(0, cipherAlgKeyLength(essivCipherAlg(spec.alg, hash))));
  return (sector, count) => new Uint8Array(aesEcb(essivKey, true, plainIvs(sector, count, 8)));
}

const equalHalves = (key: Uint8Array): boolean => {
  const h = key.length / 2;
  for (let i = 0; i < h; i++) if (key[i] !== key[h + i]) return false;
  return true;
};

/** Shorter requests are done on the main thread: waking a pool thread costs more than their work. */
const POOL_BYTES = 16 * 1024;
/** Requests this long or longer are split in two, one half per thread. */
const SPLIT_BYTES = 64 * 1024;

/**
 * AES sectors through the addon: one OpenSSL cipher context per request on
 * the thread pool (small ones on the main thread), large requests in two
 * halves so two cores work. plain and
 * plain64 IVs are made there from the sector number; essiv ones here.
 */
function addonAesSectorCipher(addon: SectorCryptoAddon, spec: CipherSpec, key: Uint8Array): SectorCipher {
  const name = `aes-${cipherAlgKeyLength(spec.alg) * 8}-${spec.mode}`;
  const k = key.slice();
  const ivMode = spec.mode === 'ecb' ? AddonIv.None : spec.ivgen === 'essiv' ? AddonIv.Given : spec.ivgen === 'plain' ? AddonIv.Plain : AddonIv.Plain64;
  const ivs = ivMode === AddonIv.Given ? sectorIvMaker(spec, key) : undefined;
  const part = (sector: number, data: Uint8Array, enc: boolean): Promise<void> =>
    addon.sectors(name, k, enc, data, sector, ivMode, ivs ? ivs(sector, data.length / SECTOR_SIZE) : null);
  const run = async (sector: number, data: Uint8Array, enc: boolean): Promise<void> => {
    checkSectorData(data);
    if (data.length === 0) return;
    if (data.length < POOL_BYTES) {
      addon.sectorsSync(name, k, enc, data, sector, ivMode, ivs ? ivs(sector, data.length / SECTOR_SIZE) : null);
      return;
    }
    if (data.length < SPLIT_BYTES) return part(sector, data, enc);
    const half = (data.length / SECTOR_SIZE) >> 1;
    await Promise.all([part(sector, data.subarray(0, half * SECTOR_SIZE), enc), part(sector + half, data.subarray(half * SECTOR_SIZE), enc)]);
  };
  return { sectorSize: SECTOR_SIZE, encrypt: (s, d) => run(s, d, true), decrypt: (s, d) => run(s, d, false) };
}

/**
 * AES sectors through node:crypto alone. Each sector has its own IV, so
 * rather than one cipher context per sector, every mode but CBC encryption is
 * expressed as one bulk ECB pass plus XORs computed here: XTS masks each
 * block with its tweak, CTR XORs an ECB-encrypted counter stream, CBC
 * decryption XORs the previous ciphertext block. CBC encryption is sequential
 * and goes sector by sector.
 */
function nodeAesSectorCipher(spec: CipherSpec, key: Uint8Array): SectorCipher {
  checkCipherKey(spec, key);
  const bits = cipherAlgKeyLength(spec.alg) * 8;
  const half = bits / 8;
  const addon = sectorCryptoAddon();
  // OpenSSL refuses XTS keys whose halves are equal; qemu takes them: those go the ECB way.
  if (addon && nodeCiphers.has(`aes-${bits}-${spec.mode}`) && !(spec.mode === 'xts' && equalHalves(key))) {
    return addonAesSectorCipher(addon, spec, key);
  }
  const dataKey = Buffer.from(key.subarray(0, half));
  const tweakKey = spec.mode === 'xts' ? Buffer.from(key.subarray(half, 2 * half)) : undefined;
  const sectorIvs = sectorIvMaker(spec, key);
  const run = (sector: number, data: Uint8Array, enc: boolean): Promise<void> => {
    checkSectorData(data);
    const count = data.length / SECTOR_SIZE;
    switch (spec.mode) {
      case 'ecb':
        data.set(aesEcb(dataKey, enc, data));
        break;
      case 'xts': {
        const mask = xtsMask(new Uint8Array(aesEcb(tweakKey!, true, sectorIvs(sector, count))), count);
        xorBytes(data, mask);
        data.set(aesEcb(dataKey, enc, data));
        xorBytes(data, mask);
        break;
      }
      case 'ctr': {
        const counters = new Uint8Array(data.length);
        const ivs = sectorIvs(sector, count);
        for (let i = 0; i < count; i++) {
          counters.set(ivs.subarray(i * 16, i * 16 + 16), i * SECTOR_SIZE);
          for (let o = i * SECTOR_SIZE + 16; o < (i + 1) * SECTOR_SIZE; o += 16) {
            counters.copyWithin(o, o - 16, o);
            increment(counters, o);
          }
        }
        xorBytes(data, aesEcb(dataKey, true, counters));
        break;
      }
      case 'cbc': {
        const ivs = sectorIvs(sector, count);
        if (enc) {
          for (let i = 0; i < count; i++) {
            const c = createCipheriv(`aes-${bits}-cbc`, dataKey, ivs.subarray(i * 16, i * 16 + 16));
            c.setAutoPadding(false);
            data.set(c.update(data.subarray(i * SECTOR_SIZE, (i + 1) * SECTOR_SIZE)), i * SECTOR_SIZE);
          }
        } else {
          // Each block's chaining value: the sector IV, then the previous ciphertext block.
          const chain = new Uint8Array(data.length);
          for (let i = 0; i < count; i++) {
            const o = i * SECTOR_SIZE;
            chain.set(ivs.subarray(i * 16, i * 16 + 16), o);
            chain.set(data.subarray(o, o + SECTOR_SIZE - 16), o + 16);
          }
          data.set(aesEcb(dataKey, false, data));
          xorBytes(data, chain);
        }
        break;
      }
    }
    return Promise.resolve();
  };
  return { sectorSize: SECTOR_SIZE, encrypt: (s, d) => run(s, d, true), decrypt: (s, d) => run(s, d, false) };
}

/** Big-endian increment of a `bs`-byte counter at `o`, as CTR mode steps it. */
function incrementBlock(c: Uint8Array, o: number, bs: number): void {
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
 * CAST5 sectors through OpenSSL (its legacy provider), the generic way. Each
 * sector has its own IV, so rather than one cipher context per sector, every
 * mode but CBC encryption is expressed as one bulk ECB pass plus XORs
 * computed here: XTS masks each block with its tweak, CTR XORs an
 * ECB-encrypted counter stream, CBC decryption XORs the previous ciphertext
 * block. CBC encryption is sequential and goes sector by sector.
 */
function legacySectorCipher(spec: CipherSpec, key: Uint8Array): SectorCipher {
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
            incrementBlock(counters, o, bs);
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
    if (family === 'aes' && nodeCiphers.has(`aes-${cipherAlgKeyLength(spec.alg) * 8}-ecb`)) return nodeAesSectorCipher(spec, key);
    if (family === 'cast5') {
      requireCast5();
      return legacySectorCipher(spec, key);
    }
    return blockSectorCipher(spec, key, portableBlockCipher, digest);
  },
  // CPU time, not wall time, as qemu times it: on a busy host wall time would
  // understate the rate and give weaker slots than qemu-img makes.
  pbkdf2Rate: (hash) => measurePbkdf2Rate(pbkdf2, hash, cpuMilliseconds),
};
