/**
 * ECB, CBC, CTR and XTS over one sector with any BlockCipher. XTS is written
 * here (IEEE 1619-2007 over whole 16-byte blocks, no ciphertext stealing since
 * sectors are 512 bytes): no maintained JS library offers it.
 */
import type { BlockCipher } from './block-cipher.js';
import type { CipherMode } from './sector-cipher.js';

export interface SectorMode {
  encrypt(iv: Uint8Array, data: Uint8Array, start: number, end: number): void;
  decrypt(iv: Uint8Array, data: Uint8Array, start: number, end: number): void;
}

function xorInto(data: Uint8Array, at: number, src: Uint8Array, n: number): void {
  for (let i = 0; i < n; i++) data[at + i]! ^= src[i]!;
}

/** Multiply the XTS tweak by alpha in GF(2^128), little-endian byte order. */
export function xtsDouble(t: Uint8Array): void {
  let carry = 0;
  for (let i = 0; i < 16; i++) {
    const b = t[i]!;
    t[i] = ((b << 1) | carry) & 0xff;
    carry = b >>> 7;
  }
  if (carry) t[0]! ^= 0x87;
}

/** Big-endian increment of the whole counter block (as OpenSSL, nettle and gcrypt do). */
function incrementCounter(c: Uint8Array): void {
  for (let i = c.length - 1; i >= 0; i--) {
    c[i] = (c[i]! + 1) & 0xff;
    if (c[i] !== 0) return;
  }
}

export function sectorMode(mode: CipherMode, cipher: BlockCipher, tweakCipher?: BlockCipher): SectorMode {
  const bs = cipher.blockSize;
  switch (mode) {
    case 'ecb':
      return {
        encrypt: (_iv, d, s, e) => {
          for (let o = s; o < e; o += bs) cipher.encryptBlock(d, o);
        },
        decrypt: (_iv, d, s, e) => {
          for (let o = s; o < e; o += bs) cipher.decryptBlock(d, o);
        },
      };
    case 'cbc': {
      const prev = new Uint8Array(bs);
      const saved = new Uint8Array(bs);
      return {
        encrypt: (iv, d, s, e) => {
          let chain: Uint8Array = iv;
          let chainAt = 0;
          for (let o = s; o < e; o += bs) {
            for (let i = 0; i < bs; i++) d[o + i]! ^= chain[chainAt + i]!;
            cipher.encryptBlock(d, o);
            chain = d;
            chainAt = o;
          }
        },
        decrypt: (iv, d, s, e) => {
          prev.set(iv);
          for (let o = s; o < e; o += bs) {
            saved.set(d.subarray(o, o + bs));
            cipher.decryptBlock(d, o);
            xorInto(d, o, prev, bs);
            prev.set(saved);
          }
        },
      };
    }
    case 'ctr': {
      const counter = new Uint8Array(bs);
      const stream = new Uint8Array(bs);
      const run = (iv: Uint8Array, d: Uint8Array, s: number, e: number): void => {
        counter.set(iv);
        for (let o = s; o < e; o += bs) {
          stream.set(counter);
          cipher.encryptBlock(stream, 0);
          xorInto(d, o, stream, Math.min(bs, e - o));
          incrementCounter(counter);
        }
      };
      return { encrypt: run, decrypt: run };
    }
    case 'xts': {
      if (!tweakCipher || bs !== 16) throw new Error('XTS needs a 16-byte block cipher and a tweak key');
      const t = new Uint8Array(16);
      const run = (iv: Uint8Array, d: Uint8Array, s: number, e: number, enc: boolean): void => {
        t.set(iv);
        tweakCipher.encryptBlock(t, 0);
        for (let o = s; o < e; o += 16) {
          xorInto(d, o, t, 16);
          if (enc) cipher.encryptBlock(d, o);
          else cipher.decryptBlock(d, o);
          xorInto(d, o, t, 16);
          xtsDouble(t);
        }
      };
      return {
        encrypt: (iv, d, s, e) => run(iv, d, s, e, true),
        decrypt: (iv, d, s, e) => run(iv, d, s, e, false),
      };
    }
  }
}
