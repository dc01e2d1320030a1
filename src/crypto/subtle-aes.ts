/**
 * AES-XTS and AES-CBC decryption of whole requests through WebCrypto
 * (`crypto.subtle`, native code in browsers, Deno and Node), for the
 * portable provider. WebCrypto has no ECB and no XTS, and its CBC pads, but
 * CBC decryption of blocks Y_1..Y_n with a zero IV yields D(Y_i) XOR Y_i-1
 * for every block independently, which is all both modes need:
 * - XTS: Y_i = C_i XOR T_i, then P_i = D(Y_i) XOR T_i;
 * - CBC with one IV per sector: P_i = D(C_i) XOR C_i-1, except at a sector's
 *   first block, where the sector's IV replaces C_i-1.
 * One extra block, E(Y_n XOR 16 x 0x10), makes the padding WebCrypto checks
 * valid; it decrypts to that padding, which WebCrypto strips. Encryption is
 * sequential (CBC) or needs ECB (XTS), so it stays word-wise in JS.
 */
import type { AesWordSectorCipher } from './aes-sectors.js';
import { checkSectorData, cipherAlgKeyLength, SECTOR_SIZE, type CipherSpec, type SectorCipher } from './sector-cipher.js';

/** Below this a request stays in JS: a WebCrypto call costs more than it saves. */
const MIN_BYTES = 4096;
const WORDS = SECTOR_SIZE / 4;
/** Four bytes of PKCS#7 padding for a whole block (16 x 0x10). */
const PAD_WORD = 0x10101010;
const ZERO_IV = new Uint8Array(16);

/** The part of WebCrypto's SubtleCrypto used here (the core is built without the DOM types). */
interface Subtle {
  importKey(format: 'raw', key: Uint8Array, algorithm: 'AES-CBC', extractable: false, usages: ['decrypt']): Promise<unknown>;
  decrypt(algorithm: { name: 'AES-CBC'; iv: Uint8Array }, key: unknown, data: Uint8Array): Promise<ArrayBuffer>;
}

export function withSubtleDecrypt(spec: CipherSpec, key: Uint8Array, words: AesWordSectorCipher): SectorCipher {
  const subtle = (globalThis as unknown as { crypto?: { subtle?: Subtle } }).crypto?.subtle;
  const half = cipherAlgKeyLength(spec.alg);
  // Browsers take 128- and 256-bit AES keys only.
  if (!subtle || (spec.mode !== 'xts' && spec.mode !== 'cbc') || half === 24) return words;
  let imported: Promise<unknown> | undefined;
  const cryptoKey = (): Promise<unknown> =>
    (imported ??= subtle.importKey('raw', key.slice(0, half), 'AES-CBC', false, ['decrypt']).then(
      (k) => k,
      () => null,
    ));

  const decrypt = async (first: number, data: Uint8Array): Promise<void> => {
    checkSectorData(data);
    const k = data.length >= MIN_BYTES ? await cryptoKey() : null;
    if (!k) return words.decrypt(first, data);
    const count = data.length / SECTOR_SIZE;
    const n = data.length / 4;
    const y = new Uint8Array(data.length + 16);
    y.set(data);
    const yw = new Uint32Array(y.buffer);
    const tweaks = spec.mode === 'xts' ? words.tweaks(first, count) : undefined;
    if (tweaks) for (let i = 0; i < n; i++) yw[i]! ^= tweaks[i]!;
    words.encryptAfter(yw, n, PAD_WORD);
    const out = new Uint32Array(await subtle.decrypt({ name: 'AES-CBC', iv: ZERO_IV }, k, y));
    if (tweaks) {
      // out_i = D(Y_i) XOR Y_i-1 (Y_0 = the zero IV), so P_i = out_i XOR Y_i-1 XOR T_i.
      for (let i = 0; i < 4; i++) out[i]! ^= tweaks[i]!;
      for (let i = 4; i < n; i++) out[i]! ^= yw[i - 4]! ^ tweaks[i]!;
    } else {
      // Within a sector out_i is already P_i; a sector's first block gets C_i-1 back and its IV instead.
      const ivs = new Uint32Array(words.ivs(first, count).buffer);
      for (let s = 0; s < count; s++) {
        const o = s * WORDS;
        for (let j = 0; j < 4; j++) out[o + j]! ^= (o > 0 ? yw[o - 4 + j]! : 0) ^ ivs[s * 4 + j]!;
      }
    }
    data.set(new Uint8Array(out.buffer, 0, data.length));
  };
  return { sectorSize: SECTOR_SIZE, encrypt: words.encrypt, decrypt };
}
