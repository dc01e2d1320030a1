import { ImageError } from '../errors.js';
import type { BlockCipher } from './block-cipher.js';

export function cast5BlockCipher(_key: Uint8Array): BlockCipher {
  throw new ImageError('unsupported', 'Cipher cast5 is not supported');
}
