/**
 * Creating images: `createImage` writes a new image of any registered
 * format into a Storage; `createImageOn` is qemu's bdrv_img_create on a
 * host with files (the backing file opened to learn its size and check its
 * format, qemu's Formatting line, the target created, then the format's
 * create). Options come typed, or as qemu-img's -o list in an OptionBag.
 */
import { checkCipherAvailable } from '../crypto/luks.js';
import { portableCrypto } from '../crypto/portable.js';
import { ImageError, isImageError } from '../errors.js';
import type { Storage } from '../io/storage.js';
import { NO_CODECS } from './codecs.js';
import { optionsToBag } from './create-options.js';
import { formatDescriptor, type CreateContext } from './format.js';
import { openImage, type Host } from './open.js';
import type { OptionBag } from './options.js';
import { parseFormatName } from './probe.js';
import type { SecretMap } from './secrets.js';


/** Typed creation options: `format`, `size` and the format's keys (see CreateImageOptions). */
export interface TypedCreateOptions {
  readonly format: string;
  readonly size?: number;
}

/**
 * Write a new, empty image into `storage` (whatever it held is discarded).
 * The size is required here: with no host to open a backing file, it
 * cannot come from one.
 */
export async function createImage(storage: Storage, options: TypedCreateOptions, ctx: Partial<CreateContext> = {}): Promise<void> {
  if (options.size === undefined) throw new ImageError('bad-argument', 'Image creation needs a size parameter');
  const bag = optionsToBag(options.format, { ...options });
  await formatDescriptor(options.format).create(storage, bag, { codecs: ctx.codecs ?? NO_CODECS, openDataFile: ctx.openDataFile, secrets: ctx.secrets, crypto: ctx.crypto });
}

export interface CreateOnHostRequest {
  format: string;
  /** The -o options, as parsed by parseCreateOptions (or optionsToBag). */
  options: OptionBag;
  /** The virtual size; may come from the options or the backing file instead. */
  size?: number;
  /** qemu-img create -u: do not open the backing file (its size and format are not checked). */
  backingUnsafe?: boolean;
  /** Receives qemu-img's "Formatting 'FILE', fmt=..." line before the image is written. */
  onFormatting?: (line: string) => void;
  /** Secrets by id (qemu's --object secret), for encrypt.key-secret; also opens an encrypted backing file. */
  secrets?: SecretMap;
}

/**
 * qemu's bdrv_img_create: checks in qemu's order and with its messages,
 * then the file. The host must be able to create files (`createStorage`).
 */
export async function createImageOn(host: Host, filename: string, req: CreateOnHostRequest): Promise<void> {
  const d = formatDescriptor(req.format);
  const bag = req.options;
  if (bag.has('size') && req.size !== undefined) throw new ImageError('bad-argument', 'The image size must be specified only once');
  if (!d.supportsBacking) {
    if (bag.has('backing_file')) throw new ImageError('bad-argument', `Backing file not supported for file format '${req.format}'`);
    if (bag.has('backing_fmt')) throw new ImageError('bad-argument', `Backing file format not supported for file format '${req.format}'`);
  }
  const backingFile = bag.peek('backing_file');
  if (backingFile !== undefined) {
    if (backingFile === filename) throw new ImageError('bad-argument', 'Error: Trying to create an image with the same filename as the backing file');
    if (backingFile === '') throw new ImageError('bad-argument', 'Expected backing file name, got empty string');
  }
  const backingFmt = bag.peek('backing_fmt');
  let size = bag.has('size') ? bag.clone().size('size') : req.size;
  if (backingFile !== undefined && !req.backingUnsafe) {
    const full = host.resolve(filename, backingFile);
    let detected: string;
    let backingSize: number;
    try {
      const fmt = backingFmt === undefined ? undefined : parseFormatName(backingFmt);
      if (backingFmt !== undefined && fmt === undefined) throw new ImageError('unsupported', `Unknown driver '${backingFmt}'`);
      // As qemu: the backing file is only looked at, so it may be in use (a live snapshot).
      const img = await openImage(full, { host, format: fmt, forceShare: true, metadataOnly: true, secrets: req.secrets });
      detected = img.format;
      backingSize = img.size;
      await img.close();
    } catch (e) {
      throw new ImageError(isImageError(e) ? e.code : 'io', backingOpenMessage(e, full, backingFmt), { cause: e, hint: 'Could not open backing image.\n' });
    }
    if (backingFmt === undefined) throw new ImageError('bad-argument', 'Backing file specified without backing format', { hint: `Detected format of ${detected}.` });
    size ??= backingSize;
  } else if (backingFile !== undefined && backingFmt === undefined) {
    throw new ImageError('bad-argument', 'Backing file specified without backing format');
  }
  if (size === undefined) throw new ImageError('bad-argument', 'Image creation needs a size parameter');
  await createFormattedOn(host, filename, { ...req, size });
}

/**
 * The format's create step (bdrv_create) on a host file: the Formatting
 * line, then the target file created (truncated) and written. The options
 * hold backing_file and backing_fmt by now; `size` is final.
 */
export async function createFormattedOn(host: Host, filename: string, req: CreateOnHostRequest & { size: number }): Promise<void> {
  const d = formatDescriptor(req.format);
  if (!host.createStorage) throw new ImageError('unsupported', 'This host cannot create files');
  const bag = req.options;
  bag.set('size', String(req.size));
  // Before the Formatting line and the file: a cipher this host cannot run
  // leaves nothing behind (and nothing printed, so the command may be rerun).
  const spec = d.createCipher?.(bag);
  if (spec) checkCipherAvailable(host.crypto ?? portableCrypto, spec);
  req.onFormatting?.(d.createLine(filename, bag));
  const storage = await host.createStorage(filename);
  try {
    await d.create(storage, bag, {
      codecs: host.codecs,
      openDataFile: (name) => host.createStorage!(name),
      secrets: req.secrets,
      crypto: host.crypto,
    });
  } finally {
    await storage.close();
  }
}

/** qemu's wording when a backing file opened with a named driver is not of that format. */
function backingOpenMessage(e: unknown, path: string, fmt: string | undefined): string {
  const msg = e instanceof Error ? e.message : String(e);
  if (fmt === 'qed' && isImageError(e, 'invalid')) return 'Image not in QED format';
  if (fmt === 'qcow2' && isImageError(e, 'invalid')) return 'Image is not in qcow2 format';
  if (msg.startsWith('Could not open')) return msg;
  return msg.includes(path) || fmt !== undefined ? msg : `Could not open '${path}': ${msg}`;
}
