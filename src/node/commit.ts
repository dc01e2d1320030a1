/**
 * qemu-img commit on Node. The chain is looked at first (metadata only) to
 * find the base; the base file is then opened writable on its own, and the
 * top is opened writable with its chain, whose base layer reads through the
 * base's own file handle: one open of the base file, so qimg's read-only
 * chain open does not collide with its own write lock on the base (see
 * docs/locking.md).
 */
import type { Host } from '../block/open.js';
import type { Image } from '../block/image.js';
import { ImageError, isImageError } from '../errors.js';
import { dropsFlushes, parseCacheMode, type CacheMode } from '../io/cache.js';
import type { Storage } from '../io/storage.js';
import { commitImage } from '../ops/commit.js';
import { throwIfAborted, type OperationOptions } from '../ops/operation.js';
import type { ImageFormat } from '../block/driver.js';
import { nodeHost, resolveImplicitPath } from './host.js';
import { imageAccess, openImageFile, type ImageAccessOptions } from './open.js';
import { couldNotOpen, namedFormat } from './errors.js';
import { probedRawWarning } from './check.js';

export interface CommitFileOptions extends OperationOptions, ImageAccessOptions {
  /** The top image's format (-f); probed when absent. */
  format?: string;
  /**
   * The image to commit into (-b), named as in the chain (its recorded
   * name, or a path relative to the directory of the image above it).
   * Default: the top's backing file. Naming one implies `drop`, as in qemu-img.
   */
  base?: string;
  /** Leave the top image as it is (-d). */
  drop?: boolean;
  /** Cache mode (-t); unsafe skips flushes. Default writeback. */
  cache?: CacheMode | string;
  /** Bytes per second written into the base at most (-r). */
  rateLimit?: number;
  /** Receives qemu's warnings (a probed raw image opened for writing). */
  onWarning?: (message: string) => void;
}


/**
 * Commit the image file at `path` into its base, as qemu-img commit does:
 * the base then reads as the top did, and the top (unless dropped) is
 * emptied so it reads through to the base.
 *
 * @example
 * await commitImageFile('overlay.qcow2');                        // into its backing file, then empty it
 * await commitImageFile('top.qcow2', { base: 'base.qcow2' });   // through the middle layers, top kept
 */
export async function commitImageFile(path: string, opts: CommitFileOptions = {}): Promise<void> {
  throwIfAborted(opts.signal);
  const cache = parseCacheMode(opts.cache ?? 'writeback');
  if (cache === undefined) throw new ImageError('bad-argument', `Invalid cache option: ${opts.cache}`);
  const unsafe = dropsFlushes(cache);
  const format = namedFormat(path, opts.format);

  // Which file is the base: the chain's names, looked at without locking anything against writers.
  let target: { path: string; format: ImageFormat } | undefined;
  {
    let probe: Image;
    try {
      probe = await openImageFile(path, { format, metadataOnly: true, forceShare: true, ...imageAccess(opts) });
    } catch (e) {
      throw couldNotOpen(path, e);
    }
    if (format === undefined && probe.format === 'raw') opts.onWarning?.(probedRawWarning(path));
    try {
      const found = probe.backing ? await findBase(probe, path, opts.base) : undefined;
      target = found && { path: found.filename, format: found.format };
    } finally {
      await probe.close().catch(() => {});
    }
  }
  if (!target) {
    // qemu opens the image for writing before it finds no backing file: a dirty image is repaired all the same.
    try {
      await (await openImageFile(path, { format, writable: true, backing: false, unsafe, onWarning: opts.onWarning })).close();
    } catch (e) {
      throw couldNotOpen(path, e);
    }
    throw new ImageError('bad-argument', 'Image does not have a backing file');
  }

  let base: Image;
  try {
    base = await openImageFile(target.path, { format: target.format, writable: true, backing: false, unsafe, secrets: opts.secrets, onWarning: opts.onWarning });
  } catch (e) {
    // qemu finds a base in use when the commit job asks for write permission: the lock message alone.
    if (isImageError(e, 'locked')) throw e;
    throw couldNotOpen(target.path, e);
  }
  let top: Image | undefined;
  try {
    const baseId = await nodeHost.identity(target.path);
    const host: Host = {
      ...nodeHost,
      openStorage: async (p, o) => ((await nodeHost.identity(p)) === baseId ? shared(base.driver.storage) : nodeHost.openStorage(p, o)),
    };
    try {
      top = await openImageFile(path, { format, writable: true, unsafe, host, ...imageAccess(opts), onWarning: opts.onWarning });
    } catch (e) {
      throw couldNotOpen(path, e);
    }
    await commitImage(top, {
      base,
      drop: opts.drop || opts.base !== undefined,
      rateLimit: opts.rateLimit,
      signal: opts.signal,
      onProgress: opts.onProgress,
    });
    const closing = top;
    top = undefined;
    await closing.close();
    await base.close();
  } catch (e) {
    await top?.close().catch(() => {});
    await base.close().catch(() => {});
    throw e;
  }
}

/** qemu's bdrv_find_backing_image: the recorded name, or the same file as the name relative to the image above. */
async function findBase(top: Image, path: string, name: string | undefined): Promise<Image> {
  if (!top.backing) throw new ImageError('bad-argument', 'Image does not have a backing file');
  if (name === undefined) return top.backing;
  let above: Image = top;
  for (let b: Image | null = top.backing; b; above = b, b = b.backing) {
    if (above.driver.backing?.name === name) return b;
    if ((await nodeHost.identity(resolveImplicitPath(above.filename, name))) === (await nodeHost.identity(b.filename))) return b;
  }
  throw new ImageError('bad-argument', `Did not find '${name}' in the backing chain of '${path}'`);
}

/** The base's own file handle for its layer in the chain: its locks and its close stay with the base. */
function shared(s: Storage): Storage {
  return new Proxy(s, {
    get(target, prop, receiver) {
      if (prop === 'close' || prop === 'setPermissions') return async () => {};
      const v = Reflect.get(target, prop, receiver) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}
