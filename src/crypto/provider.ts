/**
 * The cryptographic primitives encrypted images need, behind one interface so
 * the core stays portable: `portableCrypto` (pure JS, runs anywhere) and
 * `nodeCrypto` (src/io/crypto.ts, OpenSSL where it has the algorithm).
 */
import type { CipherSpec, SectorCipher } from './sector-cipher.js';

export type HashAlg = 'md5' | 'sha1' | 'sha224' | 'sha256' | 'sha384' | 'sha512' | 'ripemd160';

export const HASH_ALGS: readonly HashAlg[] = ['md5', 'sha1', 'sha224', 'sha256', 'sha384', 'sha512', 'ripemd160'];

const DIGEST_LENGTH: Record<HashAlg, number> = {
  md5: 16,
  sha1: 20,
  sha224: 28,
  sha256: 32,
  sha384: 48,
  sha512: 64,
  ripemd160: 20,
};

export function digestLength(hash: HashAlg): number {
  return DIGEST_LENGTH[hash];
}

export function isHashAlg(name: string): name is HashAlg {
  return (HASH_ALGS as readonly string[]).includes(name);
}

export interface CryptoProvider {
  /** Must not block the event loop for long (Node: crypto.pbkdf2 on libuv's pool). */
  pbkdf2(hash: HashAlg, password: Uint8Array, salt: Uint8Array, iterations: number, keyLength: number): Promise<Uint8Array>;
  /** Synchronous: the anti-forensic diffuse calls it thousands of times per key slot. */
  digest(hash: HashAlg, data: Uint8Array): Uint8Array;
  randomBytes(n: number): Uint8Array;
  /** A sector cipher for alg/mode/ivgen with this key (the key already includes both XTS halves). */
  sectorCipher(spec: CipherSpec, key: Uint8Array): SectorCipher;
  /** Iterations of PBKDF2 with `hash` per millisecond, measured now (for iter-time calibration), deriving one digest's worth of output. */
  pbkdf2Rate?(hash: HashAlg): Promise<number>;
}

export type { CipherSpec, SectorCipher } from './sector-cipher.js';
