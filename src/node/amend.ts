/** qemu-img amend on Node: options of an existing image file changed in place. */
import { hasHelpOption } from '../block/create-options.js';
import { findFormat } from '../block/format.js';
import { OptionBag } from '../block/options.js';
import { imagePermissions } from '../block/perms.js';
import { parseFormatName, probeStorage } from '../block/probe.js';
import type { ImageFormat } from '../block/driver.js';
import { ImageError } from '../errors.js';
import { rememberingPbkdf2 } from '../crypto/memo.js';
import { nodeCrypto } from '../io/crypto.js';
import { secretBytes } from '../block/secrets.js';
import { dropsFlushes, type CacheMode } from '../io/cache.js';
import { FileStorage } from '../io/file.js';
import type { Storage } from '../io/storage.js';
import type { OperationOptions } from '../ops/operation.js';
import { throwIfAborted } from '../ops/operation.js';
import { nodeHost } from './host.js';
import { borrowed, openImage, type Host } from '../block/open.js';
import { resizeImage } from '../ops/resize.js';
import { imageAccess, openImageFile, type ImageAccessOptions } from './open.js';
import { couldNotOpen } from './errors.js';
import { probedRawWarning } from './check.js';

/** What amend may change (qcow2): the names of createImageFile's options. */
export interface AmendOptions {
  /** compat: 3 (1.1) upgrades a v2 image. */
  version?: 2 | 3;
  lazyRefcounts?: boolean;
  refcountBits?: number;
  /** New virtual size in bytes (grow or shrink; 0: unchanged). */
  size?: number;
  /** Must equal the current one: amend does not rebase. */
  backingFile?: string;
  backingFormat?: string;
  /** New name of the external data file (images that have one). */
  dataFile?: string;
  /** Only `false` (clear the flag) or its current value. */
  dataFileRaw?: boolean;
  /** Add or erase LUKS key slots (qcow2 `encrypt.*`, raw luks). The image's own key comes from its key-secret. */
  keyslots?: KeyslotAmendment;
}

/** qemu-img amend's key-slot options; secrets are ids into AmendFileOptions.secrets. */
export interface KeyslotAmendment {
  /** active: add `newSecret` (in `keyslot` or the first free slot); inactive: erase `keyslot` or every slot `oldSecret` opens. */
  state: 'active' | 'inactive';
  keyslot?: number;
  /** Id of the secret the new slot holds. */
  newSecret?: string;
  /** Id of the secret whose slots are erased (or which `keyslot` must hold). */
  oldSecret?: string;
  /** Milliseconds PBKDF2 should take for the new slot (default 2000). */
  iterTime?: number;
}

export interface AmendFileOptions extends Pick<OperationOptions, 'signal' | 'onProgress'>, ImageAccessOptions {
  /** The image's format; probed when absent. */
  format?: string;
  /** qemu's cache mode; `unsafe` skips the flushes. Default writeback. */
  cache?: CacheMode;
  /** Called once the image is open and amendable, before anything changes (qemu-img's meter starts at 0 there). */
  onStart?: () => void;
  /** Receives qemu's warnings (a probed raw image opened for writing). */
  onWarning?: (message: string) => void;
  /** qemu-img amend --force: allows erasing the last key slot (and overwriting an active one). */
  force?: boolean;
}

const KEYS: Record<Exclude<keyof AmendOptions, 'keyslots'>, string> = {
  version: 'compat',
  lazyRefcounts: 'lazy_refcounts',
  refcountBits: 'refcount_bits',
  size: 'size',
  backingFile: 'backing_file',
  backingFormat: 'backing_fmt',
  dataFile: 'data_file',
  dataFileRaw: 'data_file_raw',
};

const KEYSLOT_KEYS: Record<keyof KeyslotAmendment, string> = {
  state: 'state',
  keyslot: 'keyslot',
  newSecret: 'new-secret',
  oldSecret: 'old-secret',
  iterTime: 'iter-time',
};

/**
 * Typed amendments as qemu's -o list; key-slot options get the format's
 * prefix (`encrypt.` for qcow2, none for a raw luks volume).
 */
export function amendOptionsToBag(o: AmendOptions, keyslotPrefix = 'encrypt.'): OptionBag {
  const bag = new OptionBag();
  for (const [k, v] of Object.entries(o.keyslots ?? {}) as Array<[keyof KeyslotAmendment, unknown]>) {
    if (v === undefined) continue;
    const key = KEYSLOT_KEYS[k];
    if (key === undefined) throw new ImageError('bad-argument', `Invalid parameter '${k}'`);
    bag.set(`${keyslotPrefix}${key}`, String(v));
  }
  for (const [k, v] of Object.entries(o) as Array<[keyof AmendOptions, unknown]>) {
    if (v === undefined || k === 'keyslots') continue;
    const key = KEYS[k as Exclude<keyof AmendOptions, 'keyslots'>];
    if (key === undefined) throw new ImageError('bad-argument', `Invalid parameter '${k}'`);
    const text = k === 'version' ? (v === 2 ? '0.10' : '1.1') : typeof v === 'boolean' ? (v ? 'on' : 'off') : String(v);
    bag.set(key, text);
  }
  return bag;
}

/**
 * Change options of an existing image file as qemu-img amend does (qcow2:
 * compat upgrade or downgrade, refcount_bits, size, lazy_refcounts,
 * data_file name, data_file_raw off; LUKS key slots of qcow2 and raw luks
 * images, which are unlocked with their key-secret first).
 * `options` is typed, or a qemu -o list. Rejects with qemu's messages;
 * formats without amendment reject with "does not support option amendment".
 *
 * @example
 * await amendImageFile('disk.qcow2', { version: 3, lazyRefcounts: true });
 */
export async function amendImageFile(path: string, options: AmendOptions | string, opts: AmendFileOptions = {}): Promise<AmendFileResult> {
  throwIfAborted(opts.signal);
  // Opening unlocks an encrypted image and changing its key slots unlocks it again: the second costs no PBKDF2.
  const crypto = rememberingPbkdf2(nodeCrypto);
  // Before the writable open, whose lock a second open of the same file would meet.
  await filesItNamesOpen(path, opts.format, imageAccess(opts), { ...nodeHost, crypto });
  let storage: Storage;
  try {
    storage = await FileStorage.open(path, { writable: true, unsafe: dropsFlushes(opts.cache ?? 'writeback') });
  } catch (e) {
    throw couldNotOpen(path, e);
  }
  try {
    const format = await formatOf(storage, path, opts.format);
    try {
      await storage.setPermissions?.(imagePermissions(format, { writable: true }));
    } catch (e) {
      throw couldNotOpen(path, e);
    }
    if (opts.format === undefined && format === 'raw') opts.onWarning?.(probedRawWarning(path));
    if (typeof options === 'string' && hasHelpOption(options)) return { format, help: amendOptionHelp(format) };
    const d = findFormat(format);
    if (!d?.amend) throw notAmendable(format);
    const prefix = d.amendOptions?.some(([k]) => k === 'encrypt.state') ? 'encrypt.' : '';
    const bag = typeof options === 'string' ? parseAmendList(options) : amendOptionsToBag(options, prefix);
    throwIfAborted(opts.signal);
    await d.amend(storage, bag, {
      onProgress: opts.onProgress,
      onStart: opts.onStart,
      onWarning: opts.onWarning,
      resize: (size) => resizeOver(storage, path, format, size, { ...imageAccess(opts), crypto }),
      secrets: opts.secrets,
      encryptionKey: imageKey(d.openOptions, opts),
      crypto,
      force: opts.force,
    });
    return { format };
  } finally {
    await storage.close();
  }
}

export interface AmendFileResult {
  format: ImageFormat;
  /** Set when the -o list asked for help: the amendable options, and nothing was changed. */
  help?: string;
}

const notAmendable = (format: string): ImageError =>
  new ImageError('unsupported', `Format driver '${format}' does not support option amendment`);

/**
 * qemu-img amend -o help: the options `format` can amend, one a line as
 * qemu lists them. Throws for unknown formats and those that cannot amend.
 */
export function amendOptionHelp(format: string): string {
  const d = findFormat(format);
  if (!d) throw new ImageError('unsupported', `Unknown file format '${format}'`);
  if (!d.amend) throw notAmendable(format);
  const lines = (d.amendOptions ?? []).map(([name, type, desc]) => `  ${`${name}=<${type}>`.padEnd(22)} - ${desc}\n`);
  return `Amend options for '${format}':\n${lines.join('')}`;
}

/**
 * qemu-img amend opens the image with its backing chain and data file, so
 * one of those that cannot be opened fails the amendment before it starts.
 */
async function filesItNamesOpen(path: string, format: string | undefined, access: ImageAccessOptions, host: Host): Promise<void> {
  const named = format === undefined ? undefined : parseFormatName(format);
  if (format !== undefined && named === undefined) return;
  let img;
  try {
    img = await openImageFile(path, { format: named, ...access, host });
  } catch (e) {
    if (e instanceof ImageError && e.message.startsWith('Could not open backing file')) throw couldNotOpen(path, e);
    if (e instanceof ImageError && (e.code === 'needs-secret' || e.code === 'bad-secret' || e.message.startsWith('Block format '))) throw couldNotOpen(path, e);
    if (e instanceof ImageError && e.message.startsWith("Could not open '") && !e.message.startsWith(`Could not open '${path}'`)) throw couldNotOpen(path, e);
    return;
  }
  await img.close();
}

/** The image's key: the secret its key-secret open option names, else the passphrase given. */
function imageKey(openOptions: readonly string[] | undefined, o: ImageAccessOptions): Uint8Array | undefined {
  const option = openOptions?.find((k) => k === 'key-secret' || k.endsWith('.key-secret'));
  const id = option === undefined ? undefined : o.blockOptions?.[option];
  if (id === undefined) return o.passphrase === undefined ? undefined : secretBytes(o.passphrase);
  const v = o.secrets && Object.prototype.hasOwnProperty.call(o.secrets, id) ? o.secrets[id] : undefined;
  return v === undefined ? undefined : secretBytes(v);
}

/**
 * amend -o size: the image opened over the amendment's own storage (its
 * lock held) with its backing chain and data file, resized as qemu's amend
 * truncates it (shrinking allowed), closed.
 */
async function resizeOver(storage: Storage, path: string, format: ImageFormat, size: number, access: ImageAccessOptions & { crypto: Host['crypto'] }): Promise<void> {
  const { crypto, ...rest } = access;
  const host: Host = {
    ...nodeHost,
    crypto,
    openStorage: async (p, o) => (p === path ? borrowed(storage) : nodeHost.openStorage(p, o)),
  };
  const img = await openImage(path, { secrets: rest.secrets, blockOptions: rest.blockOptions, passphrase: rest.passphrase, host, format, writable: true });
  try {
    await resizeImage(img, size, { shrink: true });
  } finally {
    await img.close();
  }
}

/** qemu's option list parse, which also refuses a list ending in a lone comma (an empty last item). */
function parseAmendList(text: string): OptionBag {
  return OptionBag.parse(text);
}


async function formatOf(storage: Storage, path: string, named: string | undefined): Promise<ImageFormat> {
  if (named !== undefined) {
    const f = parseFormatName(named);
    if (f === undefined) throw new ImageError('unsupported', `Unknown file format '${named}'`);
    return f;
  }
  return await probeStorage(storage);
}
