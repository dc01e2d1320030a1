/**
 * What a LUKS (or legacy qcow2 AES) volume encrypts its sectors with: a cipher,
 * a chaining mode and an IV generator, applied to each 512-byte sector on its
 * own with the sector's number as IV source, as dm-crypt and qemu do.
 */
import { ImageError } from '../errors.js';
import type { CipherFamily } from './block-cipher.js';
import { digestLength, type HashAlg } from './provider.js';

export type CipherAlg =
  | 'aes-128'
  | 'aes-192'
  | 'aes-256'
  | 'serpent-128'
  | 'serpent-192'
  | 'serpent-256'
  | 'twofish-128'
  | 'twofish-192'
  | 'twofish-256'
  | 'cast5-128';
export type CipherMode = 'xts' | 'cbc' | 'ecb' | 'ctr';
export type IvGenAlg = 'plain' | 'plain64' | 'essiv';

export const CIPHER_ALGS: readonly CipherAlg[] = [
  'aes-128',
  'aes-192',
  'aes-256',
  'serpent-128',
  'serpent-192',
  'serpent-256',
  'twofish-128',
  'twofish-192',
  'twofish-256',
  'cast5-128',
];
export const CIPHER_MODES: readonly CipherMode[] = ['xts', 'cbc', 'ecb', 'ctr'];
export const IVGEN_ALGS: readonly IvGenAlg[] = ['plain', 'plain64', 'essiv'];

export interface CipherSpec {
  alg: CipherAlg;
  mode: CipherMode;
  ivgen: IvGenAlg;
  /** Only for essiv: the hash of the master key that keys the IV cipher. */
  ivgenHash?: HashAlg;
}

export interface SectorCipher {
  readonly sectorSize: number; // 512
  /** In place; data.length a multiple of sectorSize; `sector` = number of the first sector (IV source). */
  encrypt(sector: number, data: Uint8Array): Promise<void>;
  decrypt(sector: number, data: Uint8Array): Promise<void>;
}

export const SECTOR_SIZE = 512;

export function cipherFamily(alg: CipherAlg): CipherFamily {
  return alg.slice(0, alg.indexOf('-')) as CipherFamily;
}

/** Bytes of key for one instance of the cipher (one XTS half). */
export function cipherAlgKeyLength(alg: CipherAlg): number {
  return Number(alg.slice(alg.indexOf('-') + 1)) / 8;
}

export function cipherBlockSize(alg: CipherAlg): number {
  return cipherFamily(alg) === 'cast5' ? 8 : 16;
}

/** Bytes of master key the spec takes: XTS needs a data key and a tweak key. */
export function cipherKeyLength(spec: CipherSpec): number {
  return cipherAlgKeyLength(spec.alg) * (spec.mode === 'xts' ? 2 : 1);
}

/** IV bytes per sector: none for ECB, one block otherwise. */
export function cipherIvLength(spec: Pick<CipherSpec, 'alg' | 'mode'>): number {
  return spec.mode === 'ecb' ? 0 : cipherBlockSize(spec.alg);
}

export function cipherAlgFor(family: CipherFamily, keyBytes: number): CipherAlg | undefined {
  const alg = `${family}-${keyBytes * 8}`;
  return (CIPHER_ALGS as readonly string[]).includes(alg) ? (alg as CipherAlg) : undefined;
}

const FAMILY_TITLE: Record<CipherFamily, string> = { aes: 'AES', serpent: 'Serpent', twofish: 'Twofish', cast5: 'CAST5' };

/**
 * The cipher that encrypts ESSIV IVs: the same family keyed with the hash of
 * the master key, so its key length must equal the digest length (qemu's words
 * when none fits).
 */
export function essivCipherAlg(alg: CipherAlg, hash: HashAlg): CipherAlg {
  const n = digestLength(hash);
  if (cipherAlgKeyLength(alg) === n) return alg;
  const family = cipherFamily(alg);
  if (family === 'cast5') throw new ImageError('unsupported', `Cipher ${alg} not supported with essiv`);
  const found = cipherAlgFor(family, n);
  if (!found) throw new ImageError('unsupported', `No ${FAMILY_TITLE[family]} cipher with key size ${n} available`);
  return found;
}

/** The checks qemu makes before it builds a cipher for a spec. */
export function validateCipherSpec(spec: CipherSpec): void {
  if (spec.mode === 'xts' && cipherBlockSize(spec.alg) !== 16) {
    throw new ImageError('unsupported', `Unsupported cipher mode ${spec.mode}`);
  }
  if (spec.ivgen === 'essiv') essivCipherAlg(spec.alg, spec.ivgenHash ?? 'sha256');
}

export function checkSectorData(data: Uint8Array): void {
  if (data.length % SECTOR_SIZE !== 0) {
    throw new ImageError('bad-argument', `Length ${data.length} must be a multiple of sector size ${SECTOR_SIZE}`);
  }
}
