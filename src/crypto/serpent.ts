import { ImageError } from '../errors.js';
import type { BlockCipher } from './block-cipher.js';

export function serpentBlockCipher(_key: Uint8Array): BlockCipher {
  throw new ImageError('unsupported', 'Cipher serpent is not supported');
}
