/**
 * qemu opens an encrypted image only with its key (--object secret plus
 * encrypt.key-secret), which qimg cannot take. Without one, every qemu-img
 * command that reads guest data or checks the image fails when it opens the
 * image; only info, which opens for metadata alone, works. qimg's library
 * opens such images and fails on the first read, so the CLI refuses them up
 * front to print what qemu-img prints, and nothing else (map would otherwise
 * have printed its opening '[' already).
 */
import type { Image } from '../block/image.js';
import { ImageError } from '../errors.js';

export const NEEDS_SECRET = "Parameter 'encrypt.key-secret' is required for cipher";

/** Close `img` and throw when it is encrypted. */
export async function refuseEncrypted(img: Image): Promise<void> {
  let encrypted: boolean;
  try {
    encrypted = (await img.info()).encrypted === true;
  } catch (e) {
    await img.close();
    throw e;
  }
  if (encrypted) {
    await img.close();
    throw new ImageError('needs-secret', NEEDS_SECRET);
  }
}
