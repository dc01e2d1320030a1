/**
 * qemu-img convert on Node: source image files (concatenated) copied into
 * a new (or, with noCreate, an existing) image file of any format, with
 * qemu-img's checks, messages and defaults.
 */
import { availableParallelism } from 'node:os';
import { rm } from 'node:fs/promises';
import { createFormattedOn } from '../block/create.js';
import { optionsToBag, parseCreateOptions } from '../block/create-options.js';
import type { ImageFormat } from '../block/driver.js';
import { findFormat } from '../block/format.js';
import type { Image } from '../block/image.js';
import type { OptionBag } from '../block/options.js';
import { checkCompressionLevel, splitCompressionLevel } from '../block/compression-level.js';
import { imagePermissions } from '../block/perms.js';
import { parseFormatName } from '../block/probe.js';
import { ImageError, isImageError } from '../errors.js';
import { dropsFlushes, flushesEachWrite, parseCacheMode, type CacheMode } from '../io/cache.js';
import { FileStorage } from '../io/file.js';
import type { Storage } from '../io/storage.js';
import { convertImages, ConvertError, totalSize, type ConvertTarget } from '../ops/convert.js';
import { imageTarget, storageTarget } from '../ops/convert-targets.js';
import { checkSourceBitmaps, checkTargetBitmaps, copyBitmaps } from '../ops/convert-bitmaps.js';
import { abortError, throwIfAborted, type OperationOptions } from '../ops/operation.js';
import { rateLimited } from '../ops/ratelimit.js';
import { writethroughTarget } from '../ops/writethrough.js';
import { nodeHost } from './host.js';
import { openImageFile, type ImageAccessOptions } from './open.js';
import { SnapshotLoadError, type InternalSnapshotRef } from '../block/snapshot.js';
import { couldNotOpen, messageOf, namedFormat } from './errors.js';

const SECTOR = 512;

export interface ConvertFileOptions extends OperationOptions {
  /** Secrets by id for the sources' and the target's key-secret options (see OpenOptions.secrets). */
  secrets?: ImageAccessOptions['secrets'];
  /** Open options for every source (qemu's --image-opts), e.g. `{ 'encrypt.key-secret': 'sec0' }`. */
  sourceBlockOptions?: ImageAccessOptions['blockOptions'];
  /** Open options for the target, which must exist (qemu's --target-image-opts with -n). */
  targetBlockOptions?: ImageAccessOptions['blockOptions'];
  /** Output format (default raw). */
  format?: string;
  /** Format of the sources; probed when absent. */
  sourceFormat?: string;
  /**
   * The output's creation options: typed as for createImageFile (without
   * `format` and `size`), or as qemu-img's -o list.
   */
  options?: Readonly<Record<string, unknown>> | string;
  /** A backing file for the output (-B): only what the source's top layer allocates is copied. */
  backingFile?: string;
  /** Its format (required with backingFile). */
  backingFormat?: string;
  /** Compress every data cluster (-c; qcow2 outputs). */
  compress?: boolean;
  /**
   * With compress: the level (a qimg extension, also `-o compression_level=N`):
   * zlib 1..9, zstd 1..22 or negative fast levels. Default: qemu's (6, 3).
   */
  compressionLevel?: number;
  /** Write into an existing output, which must be large enough (-n). */
  noCreate?: boolean;
  /** With noCreate: the output reads as zeros already (--target-is-zero). */
  targetIsZero?: boolean;
  /** Zero detection granularity (-S); 0 allocates everything. Default 4096. */
  sparseSize?: number;
  /** Requests in flight (-m), 1..16. Default 8. */
  parallel?: number;
  /** Write in image order (default true; -W turns it off). */
  inOrder?: boolean;
  /** Limit writes to this many bytes per second (-r). */
  rateLimit?: number;
  /** Read unreadable sectors as zeros, reporting each here (--salvage). */
  salvage?: (offset: number, message: string) => void;
  /** Output cache mode (-t). Default unsafe: no flush until the end, as qemu-img. */
  cache?: CacheMode | string;
  /**
   * Read the first source as of one of its internal snapshots (-l): an id or
   * name (id first), or `{ id, name }` that must both match.
   */
  sourceSnapshot?: InternalSnapshotRef;
  /** Read the sources even while another process writes them (-U). */
  forceShare?: boolean;
  /** qemu-img's percentage progress (0..100), as -p prints it. */
  onPercent?: (percent: number) => void;
  /** Copy the source's persistent dirty bitmaps to the (qcow2) output (--bitmaps). */
  bitmaps?: boolean;
  /** With bitmaps: skip inconsistent (in-use) bitmaps, warning about each, instead of failing. */
  skipBrokenBitmaps?: boolean;
  /** Warnings qemu-img prints with "warning:" (a skipped bitmap). */
  onWarning?: (message: string) => void;
}

/**
 * Convert image files into `output`. On failure the error says what failed
 * in qemu-img's words; when cancelled through `signal`, an output this call
 * created is removed and the sources are untouched.
 *
 * @example
 * await convertImageFile(['disk.raw'], 'disk.qcow2', { format: 'qcow2', compress: true, onProgress: (done, total) => {} });
 */
export async function convertImageFile(sources: string | readonly string[], output: string, opts: ConvertFileOptions = {}): Promise<void> {
  const srcPaths = typeof sources === 'string' ? [sources] : [...sources];
  const outFmt = opts.format ?? 'raw';
  const noCreate = opts.noCreate ?? false;
  const bad = (msg: string) => new ImageError('bad-argument', msg);
  if (opts.targetIsZero && !noCreate) throw bad('--target-is-zero requires use of -n flag');
  const split = typeof opts.options === 'string' ? splitCompressionLevel(opts.options) : undefined;
  const options = split ? split.options : opts.options;
  const level = split?.level ?? opts.compressionLevel;
  if (noCreate && options !== undefined) throw bad('-o has no effect when skipping image creation');
  if (opts.skipBrokenBitmaps && !opts.bitmaps) throw bad('Use of --skip-broken-bitmaps requires --bitmaps');
  if (srcPaths.length === 0) throw bad('Must specify image file name');
  throwIfAborted(opts.signal);

  const images: Image[] = [];
  let storage: Storage | undefined;
  let image: Image | undefined;
  let created = false;
  let sourceFailed = false;
  try {
    if (typeof opts.sourceSnapshot === 'string' && srcPaths.length > 1) throw bad('No support for concatenating multiple snapshot');
    for (const [i, p] of srcPaths.entries()) images.push(await openSource(p, opts, i === 0 ? opts.sourceSnapshot : undefined));
    if (opts.bitmaps) await checkSourceBitmaps(images, opts.skipBrokenBitmaps ?? false);
    const total = totalSize(images);
    const descriptor = findFormat(outFmt);
    if (!noCreate && !descriptor) throw bad(`Unknown file format '${outFmt}'`);
    const fmt = (descriptor?.name ?? 'raw') as ImageFormat;
    const bag = createBag(parseFormatName(outFmt) ?? 'raw', options);
    const isImageFmt = fmt !== 'raw';
    if (opts.backingFile !== undefined) {
      if (!descriptor?.supportsBacking) throw bad(`Backing file not supported for file format '${outFmt}'`);
      bag.set('backing_file', opts.backingFile);
    }
    if (opts.backingFormat !== undefined) {
      if (!descriptor?.supportsBacking) throw bad(`Backing file format not supported for file format '${outFmt}'`);
      bag.set('backing_fmt', opts.backingFormat);
    }
    const targetHasBacking = bag.has('backing_file');
    if (targetHasBacking) {
      // qemu-img 7.2 prints this and exits 0 without converting; failing keeps scripts from taking it for success.
      if (opts.targetIsZero) throw bad('Cannot use --target-is-zero when the destination image has a backing file');
      if (srcPaths.length > 1) throw bad('Having a backing file for the target makes no sense when concatenating multiple input images');
      if (!bag.has('backing_fmt')) throw bad('Use of backing file requires explicit backing format');
    }
    if (opts.compress) {
      if (outFmt !== 'qcow2') throw bad('Compression not supported for this file format');
      if (bag.peek('encryption') === 'on' || bag.has('encrypt.format')) throw bad('Compression and encryption not supported at the same time');
      const pre = bag.peek('preallocation');
      if (pre !== undefined && pre !== 'off') throw bad('Compression and preallocation not supported at the same time');
      if (level !== undefined && !noCreate) checkCompressionLevel(bag.peek('compression_type') === 'zstd' ? 'zstd' : 'zlib', level);
    } else if (level !== undefined) {
      throw bad("'compression_level' applies to compressed output only (-c)");
    }
    const cacheMode = parseCacheMode(opts.cache ?? 'unsafe');
    if (cacheMode === undefined) throw bad(`Invalid cache option: ${opts.cache}`);
    const targetUnsafe = dropsFlushes(cacheMode);

    // A target created encrypted is opened with the key its creation options name, as qemu does.
    const createdKey = noCreate ? {} : keySecretOptions(descriptor?.openOptions ?? [], bag);
    if (!noCreate) {
      try {
        await createFormattedOn(nodeHost, output, { format: fmt, options: bag, size: total, secrets: opts.secrets });
        created = true;
      } catch (e) {
        const hint = isImageError(e) && e.hint ? e.hint.replace(/\n$/, '') : '';
        throw new ImageError(isImageError(e) ? e.code : 'io', `${output}: error while converting ${outFmt}: ${messageOf(e)}${hint}`, { cause: e });
      }
    }

    let target: ConvertTarget;
    let clusterSize: number | undefined;
    if (isImageFmt) {
      try {
        image = await openImageFile(output, {
          format: fmt,
          writable: true,
          unsafe: targetUnsafe,
          secrets: opts.secrets,
          blockOptions: { ...createdKey, ...opts.targetBlockOptions },
          compressionLevel: level,
        });
      } catch (e) {
        throw couldNotOpen(output, e);
      }
      if (noCreate && image.size < total) throw bad('output file is smaller than input file');
      target = imageTarget(image);
      if (opts.compress) clusterSize = (await image.info())['cluster-size'];
    } else {
      try {
        storage = await FileStorage.open(output, { writable: true, unsafe: targetUnsafe, permissions: imagePermissions('raw', { writable: true }) });
      } catch (e) {
        throw couldNotOpen(output, e);
      }
      if (noCreate) {
        const outSize = Math.ceil((await storage.size()) / SECTOR) * SECTOR;
        if (outSize < total) throw bad('output file is smaller than input file');
      }
      target = storageTarget(storage);
    }
    if (opts.bitmaps) await checkTargetBitmaps(image, fmt);
    if (flushesEachWrite(cacheMode)) target = writethroughTarget(target);
    if (opts.rateLimit !== undefined && opts.rateLimit > 0) target = rateLimited(target, opts.rateLimit);
    const parallel = opts.parallel ?? 8;
    try {
      await convertImages(images, target, {
        sparseSize: opts.sparseSize,
        // Compression runs on the libuv pool: keep every core busy.
        parallel: opts.compress ? Math.max(parallel, 2 * availableParallelism()) : parallel,
        targetIsZero: noCreate ? (opts.targetIsZero ?? false) : !descriptor?.notZeroInitialized,
        targetHasBacking,
        inOrder: opts.inOrder ?? true,
        salvage: opts.salvage,
        compressClusterSize: clusterSize,
        progress: opts.onPercent,
        signal: opts.signal,
        onProgress: opts.onProgress,
      });
    } catch (e) {
      if (isImageError(e, 'aborted')) throw e;
      sourceFailed = e instanceof ConvertError && e.op === 'reading';
      throw new ImageError(isImageError(e) ? e.code : 'io', e instanceof ConvertError ? e.message : `error while converting: ${messageOf(e)}`, { cause: e });
    }
    if (opts.bitmaps && image) await copyBitmaps(images[0]!, image, opts.skipBrokenBitmaps ?? false, opts.onWarning ?? (() => {}));
    // Closed here rather than in `finally`, whose errors are dropped: closing
    // writes the last metadata (and syncs unless cache=unsafe), so a failure
    // now means the output is incomplete.
    const closing = image ?? storage;
    image = storage = undefined;
    try {
      await closing?.close();
    } catch (e) {
      throw new ImageError(isImageError(e) ? e.code : 'io', `error while converting: ${messageOf(e)}`, { cause: e });
    }
    throwIfAborted(opts.signal);
  } catch (e) {
    await storage?.close().catch(() => {});
    await image?.close().catch(() => {});
    storage = image = undefined;
    // A cancelled conversion leaves nothing behind that it created.
    if (created && opts.signal?.aborted) {
      await rm(output, { force: true }).catch(() => {});
      throw isImageError(e, 'aborted') ? e : abortError(opts.signal);
    }
    // Nor does one whose source failed (a remote server gone mid-way): its
    // output would pass for a whole image. (qemu-img leaves it; a failed
    // write, such as a full disk, leaves the output as qemu-img does.)
    if (created && sourceFailed) await rm(output, { force: true }).catch(() => {});
    throw e;
  } finally {
    await storage?.close().catch(() => {});
    await image?.close().catch(() => {});
    for (const s of images) await s.close().catch(() => {});
  }
}



async function openSource(path: string, opts: ConvertFileOptions, internalSnapshot: InternalSnapshotRef | undefined): Promise<Image> {
  const format = namedFormat(path, opts.sourceFormat);
  try {
    return await openImageFile(path, { format, forceShare: opts.forceShare, internalSnapshot, secrets: opts.secrets, blockOptions: opts.sourceBlockOptions });
  } catch (e) {
    // qemu loads the snapshot once the image is open: its errors are not open errors.
    if (e instanceof SnapshotLoadError) throw e;
    throw couldNotOpen(path, e);
  }
}

/** The output's creation options as the bag qemu's parser reads (checked as qemu_opts_do_parse does). */
function createBag(format: string, options: ConvertFileOptions['options']): OptionBag {
  if (options === undefined || typeof options === 'string') return parseCreateOptions(format, options);
  return optionsToBag(format, options);
}

/** The key-secret open options (`encrypt.key-secret`, `key-secret`) a creation bag sets. */
function keySecretOptions(openOptions: readonly string[], bag: OptionBag): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of openOptions) {
    const v = k.endsWith('key-secret') ? bag.peek(k) : undefined;
    if (v !== undefined) out[k] = v;
  }
  return out;
}
