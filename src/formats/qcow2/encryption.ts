/**
 * The one gate for encrypted images. qimg holds no keys: an encrypted image
 * opens for metadata only (info), as qemu opens one without its secret.
 * Every other open, check included, and above all every writable one, is
 * refused here before anything is read or written, so no guest write can
 * reach an encrypted image as plaintext.
 */
import { ImageError } from '../../errors.js';
import * as C from './constants.js';
import type { Qcow2Header } from './header.js';
import type { DriverContext } from '../../block/driver.js';
import { requireEncryptionKey } from '../../block/secrets.js';

export const needsSecret = (): ImageError => new ImageError('needs-secret', "Parameter 'encrypt.key-secret' is required for cipher");

/**
 * Without a key: qemu's error for a missing or unknown key-secret. With
 * one: this build has no qcow2 decryption, and says so (the key is never
 * part of the message).
 */
export function refuseWithoutKey(
  header: Pick<Qcow2Header, 'cryptMethod'>,
  opts: { writable: boolean; metadataOnly: boolean } & Pick<DriverContext, 'encryptionKey' | 'encryptionKeySecret'>,
): void {
  if (header.cryptMethod === C.CRYPT_NONE || (!opts.writable && opts.metadataOnly)) return;
  requireEncryptionKey(opts, 'encrypt.key-secret');
  const what = header.cryptMethod === C.CRYPT_AES ? 'AES' : 'LUKS';
  throw new ImageError('unsupported', `Reading or writing ${what} encrypted qcow2 images is not supported by qimg yet`);
}
