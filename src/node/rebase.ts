/**
 * qemu-img rebase on Node: the image file opened writable with its chain,
 * the new backing file opened relative to the image's directory (or taken
 * from the chain when it is a layer of it), then rebaseImage.
 */
import { findFormat } from '../block/format.js';
import type { Image } from '../block/image.js';
import { parseFormatName } from '../block/probe.js';
import { ImageError } from '../errors.js';
import { dropsFlushes, parseCacheMode, type CacheMode } from '../io/cache.js';
import { throwIfAborted, type OperationOptions } from '../ops/operation.js';
import { rebaseImage } from '../ops/rebase.js';
import { probedRawWarning } from './check.js';
import { nodeHost, resolveImplicitPath } from './host.js';
import { isQemuDriverName } from './qemu-drivers.js';
import { imageAccess, openImageFile, type ImageAccessOptions } from './open.js';
import { couldNotOpen, namedFormat, prefixedError } from './errors.js';

export interface RebaseFileOptions extends OperationOptions, ImageAccessOptions {
  /** The image's format; probed when absent. */
  format?: string;
  /** The new backing file's format, recorded in the image (required unless backingFile is ''). */
  backingFormat?: string;
  /** Only rewrite the header (-u); the backing files are not opened. */
  unsafe?: boolean;
  /** The image's cache mode (-t); unsafe skips flushes. Default writeback. */
  cache?: CacheMode | string;
  /** The backing files' cache mode (-T); checked only, reads are not cached. */
  sourceCache?: CacheMode | string;
  /** Open the new backing file even while another process writes it (-U). */
  forceShare?: boolean;
  /** qemu-img -p's meter: increments in percent. */
  progress?: (deltaPercent: number) => void;
  /** Receives qemu's warnings (a probed raw image opened for writing). */
  onWarning?: (message: string) => void;
}


/**
 * Rebase the image file at `path` onto `backingFile` ('' for none), as
 * qemu-img rebase does: a relative name is relative to the image's
 * directory, and unless `unsafe`, what the guest reads stays the same.
 *
 * @example
 * await rebaseImageFile('overlay.qcow2', 'base-v2.qcow2', { backingFormat: 'qcow2' });
 */
export async function rebaseImageFile(path: string, backingFile: string, opts: RebaseFileOptions = {}): Promise<void> {
  throwIfAborted(opts.signal);
  // Unsafe mode only records the format, so any driver qemu knows will do (iotest 031: host_device).
  const recordable = (f: string): boolean => findFormat(f) !== undefined || (opts.unsafe === true && isQemuDriverName(f));
  if (opts.backingFormat !== undefined && !recordable(opts.backingFormat)) {
    throw new ImageError('bad-argument', `Invalid format name: '${opts.backingFormat}'`);
  }
  if (parseCacheMode(opts.sourceCache ?? 'writeback') === undefined) throw new ImageError('bad-argument', `Invalid source cache option: ${opts.sourceCache}`);
  const cache = parseCacheMode(opts.cache ?? 'writeback');
  if (cache === undefined) throw new ImageError('bad-argument', `Invalid cache option: ${opts.cache}`);
  const unsafe = opts.unsafe ?? false;

  const format = namedFormat(path, opts.format);
  let image: Image;
  try {
    // Unsafe mode never reads the backing files, so it does not open them (a missing one is fine).
    image = await openImageFile(path, { format, writable: true, backing: !unsafe, unsafe: dropsFlushes(cache), ...imageAccess(opts), onWarning: opts.onWarning });
  } catch (e) {
    throw couldNotOpen(path, e);
  }
  if (format === undefined && image.format === 'raw') opts.onWarning?.(probedRawWarning(path));
  let newBacking: Image | null = null;
  let ownsNewBacking = false;
  try {
    if (!unsafe && backingFile !== '') {
      const resolved = resolveImplicitPath(path, backingFile);
      newBacking = await chainLayer(image, resolved);
      if (!newBacking) {
        const bfmt = opts.backingFormat === undefined ? undefined : parseFormatName(opts.backingFormat);
        try {
          newBacking = await openImageFile(resolved, { format: bfmt, forceShare: opts.forceShare, secrets: opts.secrets });
        } catch (e) {
          throw prefixedError(`Could not open new backing file '${backingFile}': `, e);
        }
        ownsNewBacking = true;
      }
    }
    await rebaseImage(image, newBacking, {
      backingFile,
      backingFormat: opts.backingFormat,
      unsafe,
      signal: opts.signal,
      onProgress: opts.onProgress,
      progress: opts.progress,
    });
  } catch (e) {
    if (ownsNewBacking) await newBacking?.close().catch(() => {});
    await image.close().catch(() => {});
    throw e;
  }
  if (ownsNewBacking) await newBacking?.close().catch(() => {});
  await image.close();
}

/** The layer of `image`'s backing chain that is the file at `path`, if any (qemu's bdrv_find_backing_image). */
async function chainLayer(image: Image, path: string): Promise<Image | null> {
  const id = await nodeHost.identity(path);
  for (let b = image.backing; b; b = b.backing) {
    if ((await nodeHost.identity(b.filename)) === id) return b;
  }
  return null;
}
