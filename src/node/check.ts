/** qemu-img check on Node: an image file checked (and repaired) in place. */
import { checkImageStorage, CheckNotSupportedError, emptyCounts, type CheckResult, type RepairMode } from '../block/check.js';
import type { ImageFormat } from '../block/driver.js';
import { findFormat } from '../block/format.js';
import { imagePermissions } from '../block/perms.js';
import { parseFormatName, probeStorage } from '../block/probe.js';
import { strerror } from '../errno.js';
import { ImageError, isImageError } from '../errors.js';
import { dropsFlushes, type CacheMode } from '../io/cache.js';
import { nodeHost } from './host.js';
import type { Storage } from '../io/storage.js';
import type { OperationOptions } from '../ops/operation.js';
import { throwIfAborted } from '../ops/operation.js';
import { imageAccess, openImageFile, type ImageAccessOptions } from './open.js';
import { couldNotOpen } from './errors.js';

export interface CheckFileOptions extends Pick<OperationOptions, 'signal'>, ImageAccessOptions {
  /** The image's format; probed when absent. */
  format?: string;
  /** Repair leaked clusters, or every error that can be repaired (the file is opened for writing). */
  repair?: RepairMode;
  /** qemu's cache mode; `unsafe` skips the flushes of a repair. Default writeback. */
  cache?: CacheMode;
  /** Check even while another process writes the image (-U); not with `repair`. */
  forceShare?: boolean;
  /** Receives qemu's warnings (a probed raw image opened for repair). */
  onWarning?: (message: string) => void;
}

export interface CheckFileResult extends CheckResult {
  filename: string;
  format: ImageFormat;
}

/**
 * Check an image file as qemu-img check does: the image and the files it
 * names are opened first, then its metadata is cross-checked. Corruption is
 * reported in the result, not thrown; an image that cannot be opened
 * rejects with its reason, and raw images with CheckNotSupportedError.
 *
 * @example
 * const r = await checkImageFile('disk.qcow2', { repair: 'leaks' });
 * if (r.counts.corruptions) console.error(`${r.counts.corruptions} corruptions`);
 */
export async function checkImageFile(path: string, opts: CheckFileOptions = {}): Promise<CheckFileResult> {
  throwIfAborted(opts.signal);
  const repair = opts.repair ?? 'none';
  if (opts.forceShare && repair !== 'none') throw couldNotOpen(path, new ImageError('bad-argument', 'force-share=on can only be used with read-only images'));
  let storage: Storage;
  try {
    // Repairs flush as they go (and as qemu's driver does); cache=unsafe drops those flushes as qemu does.
    storage = await nodeHost.openStorage(path, { writable: repair !== 'none', unsafe: dropsFlushes(opts.cache ?? 'writeback') });
  } catch (e) {
    throw couldNotOpen(path, e);
  }
  try {
    const format = await formatOf(storage, path, opts.format);
    try {
      await storage.setPermissions?.(imagePermissions(format, { writable: repair !== 'none', forceShare: opts.forceShare }));
    } catch (e) {
      throw couldNotOpen(path, e);
    }
    if (!findFormat(format)?.check) {
      // -r opens the image for writing, which is when qemu warns about a probed raw image.
      if (repair !== 'none' && opts.format === undefined && format === 'raw') opts.onWarning?.(probedRawWarning(path));
      // qemu opens the image before it finds no check: an encrypted volume without its key fails there.
      await filesItNamesOpen(path, format, imageAccess(opts)).catch((e: unknown) => {
        throw couldNotOpen(path, e);
      });
      throw new CheckNotSupportedError();
    }
    let result: CheckResult;
    try {
      await filesItNamesOpen(path, format, imageAccess(opts));
      throwIfAborted(opts.signal);
      result = await checkImageStorage(storage, format, repair);
    } catch (e) {
      // The storage failed (or memory ran out) during the scan or a repair:
      // QEMU's bdrv_check returns -errno and qemu-img says "Check failed: <strerror>".
      if (!isImageError(e, 'io')) throw couldNotOpen(path, e);
      result = { counts: emptyCounts(), messages: [], errors: [], failed: strerror(e), exitCode: 1 };
    }
    return { ...result, filename: path, format };
  } finally {
    await storage.close();
  }
}

/** What qemu prints when it opens a probed raw image for writing (qemu-io, qemu-img check -r). */
export const probedRawWarning = (path: string): string =>
  `WARNING: Image format was not specified for '${path}' and probing guessed raw.\n` +
  '         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n' +
  "         Specify the 'raw' format explicitly to remove the restrictions.\n";

async function formatOf(storage: Storage, path: string, named: string | undefined): Promise<ImageFormat> {
  if (named !== undefined) {
    const f = parseFormatName(named);
    if (f === undefined) throw new ImageError('unsupported', `Could not open '${path}': Unknown driver '${named}'`);
    return f;
  }
  return await probeStorage(storage);
}

/**
 * qemu-img check opens the image with its backing chain and external data
 * file before checking, so one of those that cannot be opened fails the
 * check ("Could not open backing file: ...", "Could not open 'x.data': ...").
 * Other open failures are left to the check itself, which reports damage
 * qimg's regular open would refuse.
 */
async function filesItNamesOpen(path: string, format: ImageFormat, access: ImageAccessOptions): Promise<void> {
  let img;
  try {
    // Without locks: this call holds the image's (a repair's write lock would refuse a second open).
    img = await openImageFile(path, { format, ...access, locking: 'off' });
  } catch (e) {
    // The image itself is open already, so a file that cannot be opened is one it names.
    if (e instanceof ImageError && /^Could not open (backing file|')/.test(e.message)) throw e;
    // An open option the format does not take (--image-opts).
    if (e instanceof ImageError && e.message.startsWith('Block format ')) throw e;
    // qemu checks an encrypted image only once it is open with its key (the check itself reads metadata only).
    if (isImageError(e, 'needs-secret', 'bad-secret')) throw e;
    return;
  }
  await img.close();
}
