/** Opening image files on Node. */
import { openImage, type Host, type OpenOptions } from '../block/open.js';
import type { Image } from '../block/image.js';
import { nodeHost } from './host.js';

export type OpenFileOptions = Omit<OpenOptions, 'host'> & { host?: Host };

/**
 * Open an image file and its backing chain. The format is probed unless
 * named; backing and data files the image names are opened subject to
 * `policy` (default: any). Read-only unless `writable`.
 *
 * @example
 * const img = await openImageFile('disk.qcow2');
 * const buf = new Uint8Array(512);
 * await img.read(0, buf);
 * await img.close();
 */
export function openImageFile(path: string, opts: OpenFileOptions = {}): Promise<Image> {
  return openImage(path, { ...opts, host: opts.host ?? nodeHost });
}

/**
 * How a file operation reaches secrets and qemu's open options: they apply
 * to the image the operation names (its backing chain takes `backing.`
 * options); other images it opens get `secrets` only.
 */
export type ImageAccessOptions = Pick<OpenOptions, 'secrets' | 'blockOptions' | 'passphrase' | 'locking'>;

/** The access options of `o` alone, to spread into an openImageFile call. */
export const imageAccess = (o: ImageAccessOptions): ImageAccessOptions => ({ secrets: o.secrets, blockOptions: o.blockOptions, passphrase: o.passphrase, locking: o.locking });
