/**
 * LUKS algorithm names <-> CipherSpec: header strings such as "aes" +
 * "xts-plain64" + "sha256", checked in qemu's order with qemu's messages.
 */
import { ImageError } from '../errors.js';
import type { CipherFamily } from './block-cipher.js';
import type { LuksHeader } from './luks-header.js';
import { isHashAlg, type HashAlg } from './provider.js';
import {
  cipherAlgFor,
  cipherFamily,
  CIPHER_MODES,
  essivCipherAlg,
  IVGEN_ALGS,
  type CipherMode,
  type CipherSpec,
  type IvGenAlg,
} from './sector-cipher.js';

const FAMILIES: readonly CipherFamily[] = ['aes', 'serpent', 'twofish', 'cast5'];

const unsupported = (msg: string): ImageError => new ImageError('unsupported', msg);

export function luksHashAlg(name: string): HashAlg {
  if (!isHashAlg(name)) throw unsupported(`Hash algorithm '${name}' not supported`);
  return name;
}

export interface LuksAlgorithms {
  spec: CipherSpec;
  /** PBKDF2 and anti-forensic hash (hash_spec). */
  hash: HashAlg;
}

export function luksAlgorithms(h: Pick<LuksHeader, 'cipherName' | 'cipherMode' | 'hashSpec' | 'keyBytes'>): LuksAlgorithms {
  const dash = h.cipherMode.indexOf('-');
  if (dash < 0) throw unsupported(`Unexpected cipher mode string format '${h.cipherMode}'`);
  const modeName = h.cipherMode.slice(0, dash);
  let ivgenName = h.cipherMode.slice(dash + 1);
  let ivgenHash: HashAlg | undefined;
  const colon = ivgenName.indexOf(':');
  if (colon >= 0) {
    ivgenHash = luksHashAlg(ivgenName.slice(colon + 1));
    ivgenName = ivgenName.slice(0, colon);
  }
  if (!(CIPHER_MODES as readonly string[]).includes(modeName)) throw unsupported(`Cipher mode '${modeName}' not supported`);
  const mode = modeName as CipherMode;
  const algKeyBytes = mode === 'xts' ? Math.floor(h.keyBytes / 2) : h.keyBytes;
  const family = FAMILIES.find((f) => f === h.cipherName);
  const alg = family && cipherAlgFor(family, algKeyBytes);
  if (!alg) throw unsupported(`Algorithm '${h.cipherName}' with key size ${algKeyBytes} bytes not supported`);
  const hash = luksHashAlg(h.hashSpec);
  if (!(IVGEN_ALGS as readonly string[]).includes(ivgenName)) throw unsupported(`IV generator '${ivgenName}' not supported`);
  const ivgen = ivgenName as IvGenAlg;
  const spec: CipherSpec = { alg, mode, ivgen };
  if (ivgen === 'essiv') {
    if (!ivgenHash) throw unsupported('Missing IV generator hash specification');
    essivCipherAlg(alg, ivgenHash);
    spec.ivgenHash = ivgenHash;
  }
  return { spec, hash };
}

/** Header strings for a spec: cipher_name "aes", cipher_mode "xts-plain64" or "cbc-essiv:sha256". */
export function luksNames(spec: CipherSpec): { cipherName: string; cipherMode: string } {
  const ivgen = spec.ivgen === 'essiv' ? `essiv:${spec.ivgenHash ?? 'sha256'}` : spec.ivgen;
  return { cipherName: cipherFamily(spec.alg), cipherMode: `${spec.mode}-${ivgen}` };
}
