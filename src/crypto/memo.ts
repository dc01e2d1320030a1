/**
 * A provider that remembers its PBKDF2 results, for one operation that
 * unlocks the same LUKS header twice (amend opens the image, then unlocks
 * it again to change its key slots): the second unlock costs nothing. Keep
 * it only as long as that operation: it holds derived keys in memory.
 */
import type { CryptoProvider, HashAlg } from './provider.js';

const hex = (b: Uint8Array): string => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');

export function rememberingPbkdf2(p: CryptoProvider): CryptoProvider {
  const done = new Map<string, Promise<Uint8Array>>();
  return {
    pbkdf2(hash: HashAlg, password: Uint8Array, salt: Uint8Array, iterations: number, keyLength: number): Promise<Uint8Array> {
      const key = `${hash}:${hex(password)}:${hex(salt)}:${iterations}:${keyLength}`;
      let r = done.get(key);
      if (!r) {
        r = p.pbkdf2(hash, password, salt, iterations, keyLength);
        done.set(key, r);
        r.catch(() => done.delete(key));
      }
      return r.then((b) => b.slice());
    },
    digest: (hash, data) => p.digest(hash, data),
    randomBytes: (n) => p.randomBytes(n),
    sectorCipher: (spec, key) => p.sectorCipher(spec, key),
    ...(p.pbkdf2Rate ? { pbkdf2Rate: (hash: HashAlg) => p.pbkdf2Rate!(hash) } : {}),
  };
}
