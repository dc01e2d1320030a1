/**
 * The gate for encrypted qcow2 images. Without its key an encrypted image
 * opens for metadata only (info), as qemu opens one without its secret;
 * every other open needs the key, which unlocks the image's cipher here
 * (LUKS: a key slot of the LUKS header the image carries; legacy AES: the
 * passphrase itself). The driver then reads and writes guest data only
 * through that cipher (block/cipher-storage.ts), so no path can write
 * plaintext into an encrypted image.
 */
import type { DriverContext } from '../../block/driver.js';
import { requireEncryptionKey } from '../../block/secrets.js';
import { legacyAesCipher } from '../../crypto/legacy-aes.js';
import { LUKS_HEADER_SIZE } from '../../crypto/luks-header.js';
import { luksInfo, type LuksInfo } from '../../crypto/luks-info.js';
import { parseLuksHeader, unlockLuks, type LuksHeader } from '../../crypto/luks.js';
import { portableCrypto } from '../../crypto/portable.js';
import type { SectorCipher } from '../../crypto/sector-cipher.js';
import { ImageError } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import * as C from './constants.js';
import type { Qcow2Header } from './header.js';

export const needsSecret = (): ImageError => new ImageError('needs-secret', "Parameter 'encrypt.key-secret' is required for cipher");

/** qemu-img info's encrypt block of a qcow2 image with LUKS. */
export type Qcow2LuksInfo = LuksInfo & { format: 'luks' };

export interface Qcow2Encryption {
  /** The LUKS header's description, for info. */
  luks?: Qcow2LuksInfo;
  /** The unlocked cipher; absent without a key (metadata-only opens) or for a plain image. */
  cipher?: SectorCipher;
  /** IVs count guest sectors (legacy AES) rather than host sectors (LUKS). */
  ivFromGuest: boolean;
}

/**
 * Read what an encrypted image's header says about its encryption and,
 * where the open needs guest data, unlock the cipher with the layer's key.
 */
export async function openEncryption(storage: Storage, header: Qcow2Header, ctx: DriverContext): Promise<Qcow2Encryption> {
  if (header.cryptMethod === C.CRYPT_NONE) return { ivFromGuest: false };
  const ivFromGuest = header.cryptMethod === C.CRYPT_AES;
  const needsData = ctx.writable || !ctx.metadataOnly;
  // As qemu: an open for data without the key stops here, before the LUKS header is read.
  // qemu-img info opens for metadata only and never unlocks, even given a key (a wrong one included).
  const key = needsData ? requireEncryptionKey(ctx, 'encrypt.key-secret') : undefined;
  let luks: { header: LuksHeader; offset: number; length: number } | undefined;
  if (header.cryptMethod === C.CRYPT_LUKS) {
    const ext = header.extensions.cryptoHeader;
    if (!ext) throw new ImageError('invalid', 'LUKS encrypted image has no encryption header extension');
    const buf = new Uint8Array(LUKS_HEADER_SIZE);
    await storage.read(buf, ext.offset);
    luks = { header: parseLuksHeader(buf), offset: ext.offset, length: ext.length };
  }
  const info = luks && ({ format: 'luks', ...luksInfo(luks.header) } as Qcow2LuksInfo);
  if (!key) return { luks: info, ivFromGuest };
  const crypto = ctx.crypto ?? portableCrypto;
  if (!luks) return { cipher: legacyAesCipher(key, crypto), ivFromGuest };
  const { offset, length } = luks;
  // Key material is read from inside the header area the extension names, never beyond it.
  const readAt = async (at: number, n: number): Promise<Uint8Array> => {
    if (at + n > length) throw new ImageError('invalid', 'LUKS key material lies past the end of the encryption header');
    const b = new Uint8Array(n);
    await storage.read(b, offset + at);
    return b;
  };
  const { cipher } = await unlockLuks(luks.header, key, readAt, crypto);
  return { luks: info, cipher, ivFromGuest };
}
