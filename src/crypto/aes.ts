/**
 * AES blocks from @noble/ciphers' round function. Its public ECB/CBC API
 * allocates per call; sectors need one block at a time in place (XTS, CTR),
 * so this uses the expanded-key primitives it exports for that purpose. The
 * version is pinned in package.json because that surface may change.
 */
import { unsafe } from '@noble/ciphers/aes.js';
import { readLE32, writeLE32, type BlockCipher } from './block-cipher.js';

export function aesBlockCipher(key: Uint8Array): BlockCipher {
  if (key.length !== 16 && key.length !== 24 && key.length !== 32) throw new RangeError(`AES key of ${key.length} bytes`);
  const enc = unsafe.expandKeyLE(key);
  const dec = unsafe.expandKeyDecLE(key);
  const run = (xk: Uint32Array, f: typeof unsafe.encrypt, b: Uint8Array, o: number): void => {
    const r = f(xk, readLE32(b, o), readLE32(b, o + 4), readLE32(b, o + 8), readLE32(b, o + 12));
    writeLE32(b, o, r.s0);
    writeLE32(b, o + 4, r.s1);
    writeLE32(b, o + 8, r.s2);
    writeLE32(b, o + 12, r.s3);
  };
  return {
    blockSize: 16,
    encryptBlock: (b, o) => run(enc, unsafe.encrypt, b, o),
    decryptBlock: (b, o) => run(dec, unsafe.decrypt, b, o),
  };
}
