/**
 * Per-sector IVs, as dm-crypt defines them: plain (sector number mod 2^32,
 * little-endian), plain64 (64-bit little-endian), essiv (plain64 encrypted
 * with a cipher keyed by the hash of the master key, so IVs are unpredictable).
 */
import type { BlockCipher } from './block-cipher.js';
import type { IvGenAlg } from './sector-cipher.js';

export type IvGenerator = (sector: number, iv: Uint8Array) => void;

function writeSector(sector: number, bytes: number, out: Uint8Array): void {
  out.fill(0);
  let lo = sector >>> 0;
  let hi = Math.floor(sector / 0x1_0000_0000) >>> 0;
  const n = Math.min(bytes, out.length);
  for (let i = 0; i < n; i++) {
    if (i < 4) {
      out[i] = lo & 0xff;
      lo >>>= 8;
    } else {
      out[i] = hi & 0xff;
      hi >>>= 8;
    }
  }
}

/** `essivCipher` is the IV cipher already keyed with hash(master key). */
export function ivGenerator(alg: IvGenAlg, essivCipher?: BlockCipher): IvGenerator {
  switch (alg) {
    case 'plain':
      return (sector, iv) => writeSector(sector, 4, iv);
    case 'plain64':
      return (sector, iv) => writeSector(sector, 8, iv);
    case 'essiv': {
      if (!essivCipher) throw new Error('essiv needs its cipher');
      const block = new Uint8Array(essivCipher.blockSize);
      return (sector, iv) => {
        writeSector(sector, 8, block);
        essivCipher.encryptBlock(block, 0);
        iv.fill(0);
        iv.set(block.subarray(0, Math.min(block.length, iv.length)));
      };
    }
  }
}
