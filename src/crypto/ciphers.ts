/** The portable block cipher for each algorithm name. */
import { aesBlockCipher } from './aes.js';
import type { BlockCipher } from './block-cipher.js';
import { cast5BlockCipher } from './cast5.js';
import { cipherFamily, type CipherAlg } from './sector-cipher.js';
import { serpentBlockCipher } from './serpent.js';
import { twofishBlockCipher } from './twofish.js';

export function portableBlockCipher(alg: CipherAlg, key: Uint8Array): BlockCipher {
  switch (cipherFamily(alg)) {
    case 'aes':
      return aesBlockCipher(key);
    case 'serpent':
      return serpentBlockCipher(key);
    case 'twofish':
      return twofishBlockCipher(key);
    case 'cast5':
      return cast5BlockCipher(key);
  }
}
