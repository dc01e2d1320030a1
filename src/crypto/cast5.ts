/**
 * CAST5 (CAST-128) has no portable implementation here: its eight 256-entry
 * S-boxes are arbitrary constants that only the RFC 2144 tables define.
 * The Node provider runs it through OpenSSL (src/io/cast5.ts); the portable
 * provider refuses it with this one error.
 */
import { ImageError } from '../errors.js';
import type { BlockCipher } from './block-cipher.js';

export function cast5BlockCipher(_key: Uint8Array): BlockCipher {
  throw new ImageError('unsupported', 'Cipher cast5-128 is not supported by this build: on Node, use the nodeCrypto provider with OpenSSL\'s legacy provider');
}
