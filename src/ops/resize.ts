/**
 * Changing an image's virtual size (qemu-img resize, qemu-io truncate): the
 * rules every format shares live here, the format's own in its driver's
 * resize hook.
 */
import type { Preallocation } from '../block/driver.js';
import type { Image } from '../block/image.js';
import { ImageError } from '../errors.js';
import { throwIfAborted, type OperationOptions } from './operation.js';

export type { Preallocation };

export interface ResizeOptions extends OperationOptions {
  /** Allow a smaller size: everything past the new end is lost. Default false. */
  shrink?: boolean;
  /**
   * How the grown area is allocated (qemu's --preallocation). Each format
   * supports a subset (raw: off, falloc, full; QED: off) and none allows it
   * for shrinking. Default 'off'.
   */
  preallocation?: Preallocation;
}

const MODES: readonly Preallocation[] = ['off', 'metadata', 'falloc', 'full'];

/** A preallocation mode by qemu's name, or qemu's complaint. */
export function parsePreallocation(name: string): Preallocation {
  if ((MODES as readonly string[]).includes(name)) return name as Preallocation;
  throw new ImageError('bad-argument', `Invalid preallocation mode '${name}'`);
}

/**
 * Resize an image opened writable. Growing adds space that reads as zero;
 * shrinking (only with `shrink`) drops everything past the new end. When
 * the promise resolves, `image.size` is the new size.
 *
 * @example
 * const img = await openImageFile('disk.qcow2', { writable: true });
 * await resizeImage(img, img.size + 2 ** 30); // one GiB more
 * await img.close();
 */
export async function resizeImage(image: Image, newSize: number, opts: ResizeOptions = {}): Promise<void> {
  throwIfAborted(opts.signal);
  const preallocation = opts.preallocation ?? 'off';
  if (!MODES.includes(preallocation)) throw new ImageError('bad-argument', `Invalid preallocation mode '${String(preallocation)}'`);
  if (!Number.isInteger(newSize) || newSize <= 0) throw new ImageError('bad-argument', 'New image size must be positive');
  const current = image.size;
  if (newSize < current && !opts.shrink) throw new ImageError('bad-argument', 'Use the --shrink option to perform a shrink operation.');
  const driver = image.driver;
  if (!driver.writable) throw new ImageError('read-only', `Image '${image.filename}' is read-only`);
  if (!driver.resize) throw new ImageError('unsupported', 'Image format driver does not support resize');
  opts.onProgress?.(0, 1);
  await driver.resize(newSize, { preallocation });
  opts.onProgress?.(1, 1);
}

/**
 * The size a qemu-img resize argument names: an absolute size, or with a
 * leading `+`/`-` one relative to `current`. Returns undefined for a
 * negative result (qemu's "New image size must be positive" case is the
 * caller's to word).
 */
export function resolveResizeSize(current: number, amount: number, sign: '+' | '-' | ''): number {
  return sign === '+' ? current + amount : sign === '-' ? current - amount : amount;
}
