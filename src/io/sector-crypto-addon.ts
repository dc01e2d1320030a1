/**
 * The optional sectorcrypto addon (native/sectorcrypto): PBKDF2 blocks and
 * AES over whole requests of sectors, on libuv's thread pool, with the
 * OpenSSL Node links. Without it (not built, another platform) the Node
 * provider does the same work through node:crypto, more slowly.
 */
import { createRequire } from 'node:module';

/** How the addon makes each sector's IV: none (ECB), plain, plain64 from the first sector, or given. */
export const AddonIv = { None: 0, Plain: 1, Plain64: 2, Given: 3 } as const;
export type AddonIv = (typeof AddonIv)[keyof typeof AddonIv];

export interface SectorCryptoAddon {
  /** PBKDF2-HMAC output block `index` (from 1), one digest long; hashes sha1, sha224, sha256, sha384, sha512. */
  pbkdf2Block(hash: string, password: Uint8Array, salt: Uint8Array, iterations: number, index: number): Promise<Uint8Array>;
  /** In place over whole 512-byte sectors; `ivs` holds 16 bytes per sector when ivMode is Given. */
  sectors(cipher: string, key: Uint8Array, encrypt: boolean, data: Uint8Array, firstSector: number, ivMode: AddonIv, ivs: Uint8Array | null): Promise<void>;
  /** `sectors` on the calling thread (small requests: no round trip through the pool). */
  sectorsSync(cipher: string, key: Uint8Array, encrypt: boolean, data: Uint8Array, firstSector: number, ivMode: AddonIv, ivs: Uint8Array | null): void;
}

/** The hashes pbkdf2Block computes. */
export const ADDON_PBKDF2_HASHES: ReadonlySet<string> = new Set(['sha1', 'sha224', 'sha256', 'sha384', 'sha512']);

let addon: SectorCryptoAddon | null | undefined;

export function sectorCryptoAddon(): SectorCryptoAddon | null {
  if (addon === undefined) {
    try {
      // Two levels up from both src/io and dist/io.
      addon = createRequire(import.meta.url)('../../native/sectorcrypto/build/Release/sectorcrypto.node') as SectorCryptoAddon;
    } catch {
      addon = null;
    }
  }
  return addon;
}

/** Replace the addon (tests); null behaves as a system without it, undefined reloads it. */
export function setSectorCryptoAddon(a: SectorCryptoAddon | null | undefined): void {
  addon = a;
}
