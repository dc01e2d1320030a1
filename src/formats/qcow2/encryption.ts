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

export const needsSecret = (): ImageError => new ImageError('needs-secret', "Parameter 'encrypt.key-secret' is required for cipher");

export function refuseWithoutKey(header: Pick<Qcow2Header, 'cryptMethod'>, opts: { writable: boolean; metadataOnly: boolean }): void {
  if (header.cryptMethod !== C.CRYPT_NONE && (opts.writable || !opts.metadataOnly)) throw needsSecret();
}
