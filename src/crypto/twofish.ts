import { ImageError } from '../errors.js';
import type { BlockCipher } from './block-cipher.js';

export function twofishBlockCipher(_key: Uint8Array): BlockCipher {
  throw new ImageError('unsupported', 'Cipher twofish is not supported');
}
