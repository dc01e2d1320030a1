/** The pure-JS CryptoProvider: runs wherever the core runs (browsers, Deno, Node). */
import { aesWordSectorCipher } from './aes-sectors.js';
import { blockSectorCipher } from './block-sector-cipher.js';
import { withSubtleDecrypt } from './subtle-aes.js';
import { portableBlockCipher } from './ciphers.js';
import { portableDigest, portablePbkdf2 } from './hashes.js';
import { digestLength, type CryptoProvider, type HashAlg } from './provider.js';

/**
 * Iterations per millisecond of PBKDF2 with `hash`, timed over a short run,
 * for an output of one digest (callers scale by the blocks they derive).
 */
export async function measurePbkdf2Rate(
  pbkdf2: CryptoProvider['pbkdf2'],
  hash: HashAlg,
  now: () => number = () => performance.now(),
): Promise<number> {
  const password = new Uint8Array(32);
  const salt = new Uint8Array(32);
  let iterations = 1 << 10;
  // One untimed run first: a cold JIT would make the first short run look slow.
  const out = digestLength(hash);
  await pbkdf2(hash, password, salt, iterations, out);
  for (;;) {
    const start = now();
    await pbkdf2(hash, password, salt, iterations, out);
    const ms = now() - start;
    // Time at least 100 ms so timer resolution and warm-up do not dominate.
    if (ms >= 100 || iterations >= 1 << 30) return iterations / Math.max(ms, 1e-3);
    iterations *= 2;
  }
}

export const portableCrypto: CryptoProvider = {
  pbkdf2: portablePbkdf2,
  digest: portableDigest,
  randomBytes(n) {
    const out = new Uint8Array(n);
    // getRandomValues fills at most 65536 bytes per call.
    for (let o = 0; o < n; o += 65536) crypto.getRandomValues(out.subarray(o, Math.min(n, o + 65536)));
    return out;
  },
  sectorCipher(spec, key) {
    const words = aesWordSectorCipher(spec, key, portableDigest);
    return words ? withSubtleDecrypt(spec, key, words) : blockSectorCipher(spec, key, portableBlockCipher, portableDigest);
  },
  pbkdf2Rate: (hash) => measurePbkdf2Rate(portablePbkdf2, hash),
};
