/**
 * node --import tsx bench/crypto.ts: PBKDF2 iterations per second and sector
 * cipher throughput (MiB/s, each way) for the portable and Node crypto providers
 * (the Node one with the sectorcrypto addon when it is built).
 * Options (environment): BENCH_CRYPTO_MIB (default 16), BENCH_CRYPTO_NO_ADDON=1 (the Node
 * provider as without the addon: node:crypto alone).
 */
import { portableCrypto } from '../src/crypto/portable.js';
import type { CryptoProvider } from '../src/crypto/provider.js';
import { cipherKeyLength, type CipherSpec } from '../src/crypto/sector-cipher.js';
import { isImageError } from '../src/errors.js';
import { nodeCrypto } from '../src/io/crypto.js';
import { setSectorCryptoAddon } from '../src/io/sector-crypto-addon.js';

if (process.env.BENCH_CRYPTO_NO_ADDON === '1') setSectorCryptoAddon(null);

const mib = Number(process.env.BENCH_CRYPTO_MIB ?? 16);
const providers: [string, CryptoProvider][] = [
  ['portable', portableCrypto],
  ['node', nodeCrypto],
];
const specs: CipherSpec[] = [
  { alg: 'aes-256', mode: 'xts', ivgen: 'plain64' },
  { alg: 'aes-256', mode: 'cbc', ivgen: 'essiv', ivgenHash: 'sha256' },
  { alg: 'serpent-256', mode: 'xts', ivgen: 'plain64' },
  { alg: 'twofish-256', mode: 'xts', ivgen: 'plain64' },
  // Node: OpenSSL's legacy provider (run with --openssl-legacy-provider); portable: not available.
  { alg: 'cast5-128', mode: 'cbc', ivgen: 'plain64' },
];

/** MiB/s encrypting and decrypting 1 MiB requests, after one untimed request each way (JIT warm-up). */
async function throughput(p: CryptoProvider, spec: CipherSpec): Promise<[number, number]> {
  const key = p.randomBytes(cipherKeyLength(spec));
  const cipher = p.sectorCipher(spec, key);
  const data = new Uint8Array(1024 * 1024);
  const rate = async (op: 'encrypt' | 'decrypt'): Promise<number> => {
    await cipher[op](0, data);
    const start = performance.now();
    for (let i = 0; i < mib; i++) await cipher[op](i * 2048, data);
    return mib / ((performance.now() - start) / 1000);
  };
  return [await rate('encrypt'), await rate('decrypt')];
}

for (const [name, p] of providers) {
  const rate = await p.pbkdf2Rate!('sha256');
  console.log(`${name.padEnd(9)} PBKDF2-SHA256 ${Math.round(rate * 1000).toLocaleString('en')} iterations/s`);
  for (const spec of specs) {
    const label = `${spec.alg}-${spec.mode}-${spec.ivgen}`;
    let figure: string;
    try {
      const [enc, dec] = await throughput(p, spec);
      figure = `encrypt ${enc.toFixed(1)} MiB/s, decrypt ${dec.toFixed(1)} MiB/s`;
    } catch (e) {
      if (!isImageError(e, 'unsupported', 'cipher-unavailable')) throw e;
      figure = 'not available';
    }
    console.log(`${name.padEnd(9)} ${label.padEnd(24)} ${figure}`);
  }
}
