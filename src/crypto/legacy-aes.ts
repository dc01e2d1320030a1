/**
 * qcow2 crypt_method 1 ("aes"): AES-128-CBC with plain64 IVs and a key that is
 * the passphrase's bytes, zero-padded or cut to 16. Weak by design; kept so
 * old images can be read and converted.
 */
import type { CryptoProvider } from './provider.js';
import type { SectorCipher } from './sector-cipher.js';

export function legacyAesKey(passphrase: Uint8Array): Uint8Array {
  const key = new Uint8Array(16);
  key.set(passphrase.subarray(0, 16));
  return key;
}

export function legacyAesCipher(passphrase: Uint8Array, p: CryptoProvider): SectorCipher {
  return p.sectorCipher({ alg: 'aes-128', mode: 'cbc', ivgen: 'plain64' }, legacyAesKey(passphrase));
}
