/** A SectorCipher from block ciphers: key split for XTS, IV per sector, one mode. */
import { ImageError } from '../errors.js';
import type { BlockCipher } from './block-cipher.js';
import { ivGenerator } from './ivgen.js';
import { sectorMode } from './modes.js';
import type { HashAlg } from './provider.js';
import {
  checkSectorData,
  cipherAlgKeyLength,
  cipherAlgFor,
  cipherFamily,
  cipherIvLength,
  cipherKeyLength,
  essivCipherAlg,
  SECTOR_SIZE,
  validateCipherSpec,
  type CipherAlg,
  type CipherSpec,
  type SectorCipher,
} from './sector-cipher.js';

export type BlockCipherFactory = (alg: CipherAlg, key: Uint8Array) => BlockCipher;
export type DigestFunction = (hash: HashAlg, data: Uint8Array) => Uint8Array;

export function checkCipherKey(spec: CipherSpec, key: Uint8Array): void {
  validateCipherSpec(spec);
  const want = cipherKeyLength(spec);
  if (key.length !== want) {
    throw new ImageError('bad-argument', `Cipher key length ${key.length} should be ${want}`);
  }
}

/** The IV cipher for essiv: keyed with hash(master key), the whole key including both XTS halves. */
export function essivBlockCipher(spec: CipherSpec, key: Uint8Array, newCipher: BlockCipherFactory, digest: DigestFunction): BlockCipher {
  const hash = spec.ivgenHash ?? 'sha256';
  const alg = essivCipherAlg(spec.alg, hash);
  return newCipher(alg, digest(hash, key).subarray(0, cipherAlgKeyLength(alg)));
}

export function blockSectorCipher(
  spec: CipherSpec,
  key: Uint8Array,
  newCipher: BlockCipherFactory,
  digest: DigestFunction,
): SectorCipher {
  checkCipherKey(spec, key);
  const half = cipherAlgKeyLength(spec.alg);
  const cipher = newCipher(spec.alg, key.subarray(0, half));
  const tweak = spec.mode === 'xts' ? newCipher(spec.alg, key.subarray(half, 2 * half)) : undefined;
  const mode = sectorMode(spec.mode, cipher, tweak);
  const niv = cipherIvLength(spec);
  const ivgen = niv > 0 ? ivGenerator(spec.ivgen, spec.ivgen === 'essiv' ? essivBlockCipher(spec, key, newCipher, digest) : undefined) : undefined;
  const iv = new Uint8Array(niv);
  const run = (sector: number, data: Uint8Array, enc: boolean): Promise<void> => {
    checkSectorData(data);
    for (let o = 0, s = sector; o < data.length; o += SECTOR_SIZE, s++) {
      ivgen?.(s, iv);
      if (enc) mode.encrypt(iv, data, o, o + SECTOR_SIZE);
      else mode.decrypt(iv, data, o, o + SECTOR_SIZE);
    }
    return Promise.resolve();
  };
  return {
    sectorSize: SECTOR_SIZE,
    encrypt: (sector, data) => run(sector, data, true),
    decrypt: (sector, data) => run(sector, data, false),
  };
}

export { cipherAlgFor, cipherFamily };
