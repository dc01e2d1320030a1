/**
 * AES over whole requests of sectors for the portable provider, a 32-bit word
 * at a time on the data in place: the XTS tweak, CBC chain and CTR counter
 * stay in locals, where the generic path (block-sector-cipher.ts) moves every
 * block through byte reads and writes. Same results, several times faster.
 * Little-endian hosts only (the words are the block's bytes in LE order, as
 * noble's round function takes them); elsewhere the generic path runs.
 */
import { unsafe } from '@noble/ciphers/aes.js';
import { checkCipherKey, essivBlockCipher, type DigestFunction } from './block-sector-cipher.js';
import { portableBlockCipher } from './ciphers.js';
import { ivGenerator } from './ivgen.js';
import { checkSectorData, cipherAlgKeyLength, cipherFamily, SECTOR_SIZE, type CipherSpec, type SectorCipher } from './sector-cipher.js';

const LITTLE_ENDIAN = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1;
const WORDS = SECTOR_SIZE / 4;

/** Big-endian increment of a 16-byte counter, as CTR mode steps it. */
function increment(c: Uint8Array): void {
  for (let i = 15; i >= 0; i--) {
    c[i] = (c[i]! + 1) & 0xff;
    if (c[i] !== 0) return;
  }
}

/** The word-wise cipher and what the WebCrypto decryption (subtle-aes.ts) needs from it. */
export interface AesWordSectorCipher extends SectorCipher {
  /** Each sector's IV, 16 bytes apiece (zeros for ECB). */
  ivs(first: number, count: number): Uint8Array;
  /** XTS: each block's tweak, as four words per block. */
  tweaks(first: number, count: number): Uint32Array;
  /** Words o..o+3 of `w` become E(data key, words o-4..o-1 XOR `mask`). */
  encryptAfter(w: Uint32Array, o: number, mask: number): void;
}

/** The word-wise AES sector cipher, or undefined where it does not apply (not AES, big-endian host). */
export function aesWordSectorCipher(spec: CipherSpec, key: Uint8Array, digest: DigestFunction): AesWordSectorCipher | undefined {
  if (!LITTLE_ENDIAN || cipherFamily(spec.alg) !== 'aes') return undefined;
  checkCipherKey(spec, key);
  const half = cipherAlgKeyLength(spec.alg);
  const ek = unsafe.expandKeyLE(key.subarray(0, half));
  const dk = unsafe.expandKeyDecLE(key.subarray(0, half));
  const tk = spec.mode === 'xts' ? unsafe.expandKeyLE(key.subarray(half, 2 * half)) : ek;
  const ivgen = spec.mode === 'ecb' ? undefined : ivGenerator(spec.ivgen, spec.ivgen === 'essiv' ? essivBlockCipher(spec, key, portableBlockCipher, digest) : undefined);
  const iv = new Uint8Array(16);
  const ivw = new Uint32Array(iv.buffer);
  const counter = new Uint8Array(16);
  const cw = new Uint32Array(counter.buffer);
  const { encrypt: E, decrypt: D } = unsafe;

  const sector = (w: Uint32Array, o: number, enc: boolean): void => {
    const end = o + WORDS;
    switch (spec.mode) {
      case 'ecb':
        for (; o < end; o += 4) {
          const x = enc ? E(ek, w[o]!, w[o + 1]!, w[o + 2]!, w[o + 3]!) : D(dk, w[o]!, w[o + 1]!, w[o + 2]!, w[o + 3]!);
          w[o] = x.s0;
          w[o + 1] = x.s1;
          w[o + 2] = x.s2;
          w[o + 3] = x.s3;
        }
        return;
      case 'xts': {
        const t = E(tk, ivw[0]!, ivw[1]!, ivw[2]!, ivw[3]!);
        let t0 = t.s0;
        let t1 = t.s1;
        let t2 = t.s2;
        let t3 = t.s3;
        for (; o < end; o += 4) {
          const a = w[o]! ^ t0;
          const b = w[o + 1]! ^ t1;
          const c = w[o + 2]! ^ t2;
          const d = w[o + 3]! ^ t3;
          const x = enc ? E(ek, a, b, c, d) : D(dk, a, b, c, d);
          w[o] = x.s0 ^ t0;
          w[o + 1] = x.s1 ^ t1;
          w[o + 2] = x.s2 ^ t2;
          w[o + 3] = x.s3 ^ t3;
          // The tweak times alpha in GF(2^128): a 128-bit little-endian shift left, 0x87 folded in.
          const carry = t3 >>> 31;
          t3 = (t3 << 1) | (t2 >>> 31);
          t2 = (t2 << 1) | (t1 >>> 31);
          t1 = (t1 << 1) | (t0 >>> 31);
          t0 = (t0 << 1) ^ (carry * 0x87);
        }
        return;
      }
      case 'cbc': {
        let c0 = ivw[0]!;
        let c1 = ivw[1]!;
        let c2 = ivw[2]!;
        let c3 = ivw[3]!;
        for (; o < end; o += 4) {
          const a = w[o]!;
          const b = w[o + 1]!;
          const c = w[o + 2]!;
          const d = w[o + 3]!;
          if (enc) {
            const x = E(ek, a ^ c0, b ^ c1, c ^ c2, d ^ c3);
            w[o] = c0 = x.s0;
            w[o + 1] = c1 = x.s1;
            w[o + 2] = c2 = x.s2;
            w[o + 3] = c3 = x.s3;
          } else {
            const x = D(dk, a, b, c, d);
            w[o] = x.s0 ^ c0;
            w[o + 1] = x.s1 ^ c1;
            w[o + 2] = x.s2 ^ c2;
            w[o + 3] = x.s3 ^ c3;
            c0 = a;
            c1 = b;
            c2 = c;
            c3 = d;
          }
        }
        return;
      }
      case 'ctr':
        counter.set(iv);
        for (; o < end; o += 4) {
          const x = E(ek, cw[0]!, cw[1]!, cw[2]!, cw[3]!);
          w[o]! ^= x.s0;
          w[o + 1]! ^= x.s1;
          w[o + 2]! ^= x.s2;
          w[o + 3]! ^= x.s3;
          increment(counter);
        }
        return;
    }
  };

  const run = (first: number, data: Uint8Array, enc: boolean): Promise<void> => {
    checkSectorData(data);
    // Word views need 4-byte alignment: work on an aligned copy otherwise.
    const buf = data.byteOffset % 4 === 0 ? data : data.slice();
    const w = new Uint32Array(buf.buffer, buf.byteOffset, buf.length / 4);
    for (let s = 0, o = 0; o < w.length; s++, o += WORDS) {
      ivgen?.(first + s, iv);
      sector(w, o, enc);
    }
    if (buf !== data) data.set(buf);
    return Promise.resolve();
  };
  return {
    sectorSize: SECTOR_SIZE,
    encrypt: (s, d) => run(s, d, true),
    decrypt: (s, d) => run(s, d, false),
    ivs(first, count) {
      const out = new Uint8Array(count * 16);
      for (let s = 0; s < count; s++) ivgen?.(first + s, out.subarray(s * 16, s * 16 + 16));
      return out;
    },
    tweaks(first, count) {
      const m = new Uint32Array(count * WORDS);
      for (let s = 0, o = 0; s < count; s++) {
        ivgen?.(first + s, iv);
        const t = E(tk, ivw[0]!, ivw[1]!, ivw[2]!, ivw[3]!);
        let t0 = t.s0;
        let t1 = t.s1;
        let t2 = t.s2;
        let t3 = t.s3;
        for (let j = 0; j < WORDS / 4; j++, o += 4) {
          m[o] = t0;
          m[o + 1] = t1;
          m[o + 2] = t2;
          m[o + 3] = t3;
          const carry = t3 >>> 31;
          t3 = (t3 << 1) | (t2 >>> 31);
          t2 = (t2 << 1) | (t1 >>> 31);
          t1 = (t1 << 1) | (t0 >>> 31);
          t0 = (t0 << 1) ^ (carry * 0x87);
        }
      }
      return m;
    },
    encryptAfter(w, o, mask) {
      const x = E(ek, w[o - 4]! ^ mask, w[o - 3]! ^ mask, w[o - 2]! ^ mask, w[o - 1]! ^ mask);
      w[o] = x.s0;
      w[o + 1] = x.s1;
      w[o + 2] = x.s2;
      w[o + 3] = x.s3;
    },
  };
}
