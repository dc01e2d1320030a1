/** The hash functions LUKS names, from @noble/hashes (audited, maintained, pure JS). */
import { md5, ripemd160, sha1 } from '@noble/hashes/legacy.js';
import { sha224, sha256, sha384, sha512 } from '@noble/hashes/sha2.js';
import { pbkdf2Async } from '@noble/hashes/pbkdf2.js';
import type { HashAlg } from './provider.js';

const HASHES = { md5, sha1, sha224, sha256, sha384, sha512, ripemd160 } as const;

export function portableDigest(hash: HashAlg, data: Uint8Array): Uint8Array {
  return HASHES[hash](data);
}

/** PBKDF2-HMAC; noble's async form yields to the event loop between chunks of iterations. */
export function portablePbkdf2(
  hash: HashAlg,
  password: Uint8Array,
  salt: Uint8Array,
  iterations: number,
  keyLength: number,
): Promise<Uint8Array> {
  return pbkdf2Async(HASHES[hash], password, salt, { c: iterations, dkLen: keyLength, asyncTick: 20 });
}
