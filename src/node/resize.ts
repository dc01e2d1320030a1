/** qemu-img resize on Node: an image file opened for writing, resized, closed. */
import { parseFormatName } from '../block/probe.js';
import { ImageError } from '../errors.js';
import { resizeImage, resolveResizeSize, type ResizeOptions } from '../ops/resize.js';
import { throwIfAborted } from '../ops/operation.js';
import { parseSize } from '../units.js';
import { imageAccess, openImageFile, type ImageAccessOptions } from './open.js';

export interface ResizeFileOptions extends ResizeOptions, ImageAccessOptions {
  /** The image's format; probed when absent. */
  format?: string;
  /** Receives what qemu prints on stderr while opening (a dirty image's repair). */
  onWarning?: (message: string) => void;
}

/**
 * Resize an image file in place. `size` is a byte count, or qemu-img's
 * text: `10G` sets the size, `+1G` / `-512M` change it. Resolves with the new
 * virtual size.
 *
 * @example
 * await resizeImageFile('disk.qcow2', '+10G');
 * await resizeImageFile('disk.qcow2', '20G', { shrink: true });
 */
export async function resizeImageFile(path: string, size: number | string, opts: ResizeFileOptions = {}): Promise<number> {
  throwIfAborted(opts.signal);
  let sign: '+' | '-' | '' = '';
  let amount: number;
  if (typeof size === 'number') {
    amount = size;
  } else {
    if (size.startsWith('+') || size.startsWith('-')) sign = size[0] as '+' | '-';
    const n = parseSize(sign ? size.slice(1) : size);
    if (n === undefined) throw new ImageError('bad-argument', `Invalid size '${size}'`);
    amount = n;
  }
  const format = opts.format === undefined ? undefined : parseFormatName(opts.format);
  if (opts.format !== undefined && format === undefined) throw new ImageError('unsupported', `Unknown driver '${opts.format}'`);
  const image = await openImageFile(path, { format, writable: true, ...imageAccess(opts), onWarning: opts.onWarning });
  try {
    await resizeImage(image, resolveResizeSize(image.size, amount, sign), opts);
    return image.size;
  } finally {
    await image.close();
  }
}
