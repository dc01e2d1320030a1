/**
 * CAST5 (CAST-128) is accepted by qemu-img for LUKS but not implemented here:
 * its eight 256-entry S-boxes are arbitrary constants that only the RFC 2144
 * tables define, and no maintained JS library provides them. Volumes that use
 * it parse (so `info` works) and fail to unlock with this one error.
 */
import { ImageError } from '../errors.js';
import type { BlockCipher } from './block-cipher.js';

export function cast5BlockCipher(_key: Uint8Array): BlockCipher {
  throw new ImageError('unsupported', 'Cipher cast5-128 is not supported by qimg');
}
