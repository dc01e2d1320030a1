/**
 * Opening an image and its backing chain: probing, backing names resolved
 * against the image's directory, backing formats from the image (probing
 * only where none is recorded, as qemu does), a depth limit and loop
 * detection. Implicit files (backing and data files) go through the open
 * policy.
 */
import { ImageError } from '../errors.js';
import type { Storage } from '../io/storage.js';
import type { HttpStorageOptions } from '../io/http-storage.js';
import { NO_CODECS, type Codecs } from './codecs.js';
import type { DriverContext, FormatDriver, ImageFormat } from './driver.js';
import { formatDescriptor } from './format.js';
import { BlockImage, type Image } from './image.js';
import { dataFilePermissions, imagePermissions } from './perms.js';
import { parseFormatName, probeStorage } from './probe.js';
import { noTemporarySnapshots, type InternalSnapshotRef } from './snapshot.js';
import type { CryptoProvider } from '../crypto/provider.js';
import { isSyntacticFilename, parseImageFilename, type LockingMode } from './open-target.js';
import { secretBytes, type SecretMap } from './secrets.js';

/** What the block layer needs from the host: files, paths and codecs. */
export interface Host {
  /** `name`, when given, is what the storage reports itself as instead of `path`. */
  openStorage(path: string, opts: { writable: boolean; unsafe?: boolean; name?: string; http?: HttpStorageOptions }): Promise<Storage>;
  /** The path of `name` as named by the image at `imagePath` (relative to its directory). */
  resolve(imagePath: string, name: string): string;
  /** A stable identity of the file behind `path`, for loop detection. */
  identity(path: string): Promise<string>;
  /** Whether the file behind `path` (links resolved) lies inside directory `dir`. */
  isInside?(path: string, dir: string): Promise<boolean>;
  codecs: Codecs;
  /** Ciphers and key derivation for encrypted images; the portable ones when absent. */
  crypto?: CryptoProvider;
  /**
   * A new, empty, writable file that nobody else can name and that goes away
   * when closed (snapshot mode's overlay). Hosts without files leave it out.
   */
  temporaryStorage?(): Promise<{ name: string; storage: Storage }>;
  /**
   * Create `path` (or truncate it to nothing) for a new image, locked as
   * qemu locks a file it creates. Hosts without files leave it out.
   */
  createStorage?(path: string): Promise<Storage>;
}

/** Whether `url` lies under `prefix`: same origin, and a path that starts with the prefix's. */
function urlUnder(url: string, prefix: string): boolean {
  try {
    const u = new URL(url);
    const p = new URL(prefix);
    return u.origin === p.origin && u.pathname.startsWith(p.pathname.endsWith('/') ? p.pathname : `${p.pathname}/`);
  } catch {
    return false;
  }
}

/** Whether a name is an http(s) URL, which hosts open as an HTTP range source. */
export function isRemoteName(name: string): boolean {
  return /^https?:\/\//i.test(name);
}

/**
 * Which files an image may open by itself (backing files, external data
 * files): any, none, or only files inside the given directories. An
 * http(s) URL an image names is opened under 'allow' (as qemu does), and
 * under `allowUnder` only when an entry is a URL prefix of it (such as
 * 'https://images.example.com/'), so an untrusted image cannot make the
 * caller fetch from the network. Names in qemu's json: or other protocol
 * syntaxes are never opened implicitly: they are how a hostile image points
 * qemu at devices and network resources.
 */
export type OpenPolicy = 'allow' | 'deny' | { allowUnder: string[] };

/** The name to open for an implicit file, or an error saying why it may not be opened. */
export async function checkImplicitFile(host: Host, policy: OpenPolicy, kind: 'Backing file' | 'Data file', name: string, resolved: string): Promise<string> {
  if (name.startsWith('json:')) {
    throw new ImageError('policy', `${kind} '${name}' uses the json: syntax, which qimg does not open`);
  }
  const protocol = /^([A-Za-z][A-Za-z0-9+.-]*):/.exec(name)?.[1];
  let path = resolved;
  if (isRemoteName(resolved)) {
    // A URL (named, or relative to an image read from a URL).
    if (policy === 'deny') throw new ImageError('policy', `${kind} '${name}' may not be opened (open policy)`);
    if (policy !== 'allow' && !policy.allowUnder.some((prefix) => isRemoteName(prefix) && urlUnder(resolved, prefix))) {
      throw new ImageError('policy', `${kind} '${name}' is a remote file the open policy does not allow`);
    }
    return resolved;
  }
  if (protocol !== undefined && protocol !== 'file') {
    throw new ImageError('policy', `${kind} '${name}' names the protocol '${protocol}', which qimg does not open`);
  }
  if (protocol === 'file') path = resolved.replace(/^file:/, '');
  if (policy === 'deny') throw new ImageError('policy', `${kind} '${name}' may not be opened (open policy)`);
  if (policy !== 'allow') {
    const inside = host.isInside ? await Promise.all(policy.allowUnder.map((d) => host.isInside!(path, d))) : [];
    if (!inside.some(Boolean)) {
      throw new ImageError('policy', `${kind} '${name}' lies outside the directories the open policy allows`);
    }
  }
  return path;
}

export interface OpenOptions {
  host: Host;
  /** Named format: never probed. */
  format?: ImageFormat;
  writable?: boolean;
  /** Open the backing chain (default true). */
  backing?: boolean;
  /** Metadata only, as qemu-img info: no data files, no guest data. */
  metadataOnly?: boolean;
  policy?: OpenPolicy;
  /** Longest backing chain accepted. */
  maxDepth?: number;
  /** qemu's cache=unsafe for the top image: flushes do nothing (convert targets). */
  unsafe?: boolean;
  /**
   * qemu's force-share (-U): let other processes write and resize the files
   * while they are open, and ignore their locks. Read-only opens only.
   */
  forceShare?: boolean;
  /**
   * qemu's snapshot mode (qemu-io -s): the image is opened read-only under a
   * temporary qcow2 overlay that takes every write and is gone on close.
   * Only meaningful with `writable`; a read-only open needs no overlay.
   */
  snapshot?: boolean;
  /**
   * Read the image as of one of its internal snapshots (qemu-img convert -l):
   * an id or name (id first), or `{ id, name }` that must both match.
   * Read-only; the backing chain opens as usual.
   */
  internalSnapshot?: InternalSnapshotRef;
  /**
   * Receives what qemu's block layer prints on stderr while opening: the
   * lines of the refcount repair a writable open of a dirty qcow2 image
   * runs, each line ending in a newline. Not called otherwise.
   */
  onWarning?: (message: string) => void;
  /**
   * Secrets by id, as qemu's `--object secret,id=ID,...` gives them (a
   * string is its UTF-8 bytes). Only looked up where an option names them;
   * never read from the environment, never shown in a message.
   */
  secrets?: SecretMap;
  /**
   * The image's open options in qemu's dotted keys, as --image-opts takes
   * them: `{ 'encrypt.key-secret': 'sec0', 'backing.encrypt.key-secret':
   * 'sec1' }`. `backing.` options go to the backing file (recursively).
   * A key the format does not take is refused with qemu's message.
   */
  blockOptions?: Readonly<Record<string, string>>;
  /** The top image's key, used when no key-secret option names a secret (callers without secret ids). */
  passphrase?: string | Uint8Array;
  /** qemu's file.locking: 'off' takes no locks on the top image file. */
  locking?: LockingMode;
  /**
   * The level compressed writes to the top image use (a qimg extension:
   * zlib 1..9, zstd 1..22 or negative fast levels; default: qemu's, zlib 6
   * and zstd 3). Refused for formats without compressed clusters.
   */
  compressionLevel?: number;
  /**
   * qemu's copy-on-read: guest data read from the backing chain is written
   * into the top image, so later reads find it there. Needs a writable open.
   */
  copyOnRead?: boolean;
  /**
   * qemu's discard option for the top image: 'unmap' (default) passes
   * discards to the format; 'ignore' makes discard do nothing (zero writes
   * that may unmap still do, as in qemu).
   */
  discard?: DiscardMode;
  /** How http(s) URLs (named by the caller, or by an image where the policy allows) are read: headers, timeout, cache and read-ahead sizes, and a stats object to count requests in. */
  http?: HttpStorageOptions;
}

export type DiscardMode = 'ignore' | 'unmap';

/** Writes a new empty overlay image over a backing file into `storage` (snapshot mode). */
export type OverlayCreator = (storage: Storage, o: { size: number; backingFile: string; backingFormat: ImageFormat }, codecs: Codecs) => Promise<void>;
let overlay: { format: ImageFormat; create: OverlayCreator } | undefined;

/** The format that makes snapshot mode's overlays registers itself here (qcow2, as in qemu). */
export function registerOverlayFormat(format: ImageFormat, create: OverlayCreator): void {
  overlay = { format, create };
}

export const DEFAULT_MAX_CHAIN_DEPTH = 64;

/**
 * Open the image at `path` and its backing chain through a Host (files,
 * path rules, codecs). On Node, openImageFile supplies the host; for
 * storage already in hand, see openStorageImage.
 */
export async function openImage(path: string, opts: OpenOptions): Promise<Image> {
  // The caller's own name may be in qemu's filename syntax (json:, file:); implicit files never are.
  if (isSyntacticFilename(path)) return openImage(...withFilenameOptions(path, opts));
  if (opts.copyOnRead && !opts.writable) throw new ImageError('read-only', "Can't use copy-on-read on read-only device");
  // Under snapshot mode the named image is read-only, so -U may apply to it.
  if (opts.snapshot && opts.writable) return openUnderOverlay(path, opts);
  if (opts.forceShare && opts.writable) throw new ImageError('bad-argument', 'force-share=on can only be used with read-only images');
  return openLayer(path, opts.format, opts, [], 0);
}

/** The path a json:/file: name opens, with its options merged into `opts` (the caller's own win). */
function withFilenameOptions(name: string, opts: OpenOptions): [string, OpenOptions] {
  const t = parseImageFilename(name);
  if (t.readOnly && opts.writable) throw new ImageError('read-only', 'Block node is read-only');
  const blockOptions = { ...t.blockOptions, ...opts.blockOptions };
  return [t.path, { ...opts, format: opts.format ?? t.format, locking: opts.locking ?? t.locking, blockOptions }];
}

/** This layer's own options and what its backing file gets (the `backing.` prefix removed). */
function splitLayerOptions(all: Readonly<Record<string, string>> | undefined, fmt: ImageFormat, backingOpened: boolean): { own: Record<string, string>; backing: Record<string, string> } {
  const own: Record<string, string> = {};
  const backing: Record<string, string> = {};
  const descriptor = formatDescriptor(fmt);
  for (const [key, value] of Object.entries(all ?? {})) {
    if (key.startsWith('backing.') && backingOpened && descriptor.supportsBacking) backing[key.slice(8)] = value;
    else if (descriptor.openOptions?.includes(key)) own[key] = value;
    else throw new ImageError('bad-argument', `Block format '${fmt}' does not support the option '${key}'`);
  }
  return { own, backing };
}

/**
 * Snapshot mode: the image and its chain open read-only, so nothing below
 * the overlay can be written whatever the caller does; the overlay lives in
 * a temporary file the host removes.
 */
async function openUnderOverlay(path: string, opts: OpenOptions): Promise<Image> {
  const { host } = opts;
  if (!overlay || !host.temporaryStorage) throw new ImageError('unsupported', 'Snapshot mode needs temporary files, which this host does not provide');
  const base = await openLayer(path, opts.format, { ...opts, writable: false, compressionLevel: undefined }, [], 0);
  try {
    const tmp = await host.temporaryStorage();
    try {
      await overlay.create(tmp.storage, { size: base.size, backingFile: await host.identity(path), backingFormat: base.format }, host.codecs);
      const overlayOpts = { ...opts, metadataOnly: false, forceShare: false, blockOptions: undefined, passphrase: undefined, locking: undefined };
      const driver = await openDriver(tmp.storage, overlay.format, overlayOpts, tmp.name, true);
      return new BlockImage({ driver, filename: tmp.name, backing: base, backingPath: base.filename, copyOnRead: opts.copyOnRead, discard: opts.discard });
    } catch (e) {
      await tmp.storage.close().catch(() => {});
      throw e;
    }
  } catch (e) {
    await base.close().catch(() => {});
    throw e;
  }
}

async function openLayer(
  path: string,
  format: ImageFormat | undefined,
  opts: OpenOptions,
  seen: string[],
  depth: number,
): Promise<Image> {
  const { host } = opts;
  const max = opts.maxDepth ?? DEFAULT_MAX_CHAIN_DEPTH;
  if (depth > max) throw new ImageError('invalid', `Backing chain of '${path}' is deeper than ${max} images`);
  const id = await host.identity(path);
  if (seen.includes(id)) throw new ImageError('invalid', `Backing file '${path}' creates an infinite loop.`);

  const writable = depth === 0 && (opts.writable ?? false);
  const storage = await host.openStorage(path, { writable, unsafe: depth === 0 && opts.unsafe === true, http: opts.http });
  let driver: FormatDriver;
  try {
    driver = await openDriver(storage, format, opts, path, writable);
  } catch (e) {
    await storage.close().catch(() => {});
    throw e;
  }

  let backing: Image | null = null;
  let backingPath: string | undefined;
  const backingOptions = splitLayerOptions(opts.blockOptions, driver.format, opts.backing !== false).backing;
  if (driver.backing) {
    backingPath = host.resolve(path, driver.backing.name);
    if (opts.backing !== false) {
      try {
        backingPath = await checkImplicitFile(host, opts.policy ?? 'allow', 'Backing file', driver.backing.name, backingPath);
        const bfmt = driver.backing.format === undefined ? undefined : parseFormatName(driver.backing.format);
        if (driver.backing.format !== undefined && bfmt === undefined) {
          throw new ImageError('unsupported', `Unknown driver '${driver.backing.format}'`);
        }
        const layer = { ...opts, writable: false, internalSnapshot: undefined, passphrase: undefined, locking: undefined, compressionLevel: undefined, blockOptions: backingOptions };
        backing = await openLayer(backingPath, bfmt, layer, [...seen, id], depth + 1);
      } catch (e) {
        await driver.close().catch(() => {});
        throw e instanceof ImageError && e.code !== 'invalid' && !e.message.startsWith('Could not open backing file')
          ? new ImageError(e.code, `Could not open backing file: ${e.message}`, { cause: e })
          : e;
      }
    }
  }
  const top = depth === 0 ? { copyOnRead: opts.copyOnRead === true && writable, discard: opts.discard } : {};
  return new BlockImage({ driver, filename: path, backing, backingPath, ...top });
}

async function openDriver(
  storage: Storage,
  format: ImageFormat | undefined,
  opts: OpenOptions,
  path: string,
  writable: boolean,
): Promise<FormatDriver> {
  let fmt = format;
  if (fmt === undefined) {
    fmt = await probeStorage(storage);
  }
  const descriptor = formatDescriptor(fmt);
  if (opts.internalSnapshot !== undefined && !descriptor.snapshots) throw noTemporarySnapshots(fmt);
  const opener = descriptor.open;
  if (opts.compressionLevel !== undefined && !descriptor.compresses) {
    throw new ImageError('bad-argument', `Format '${fmt}' has no compressed clusters: 'compression_level' does not apply`);
  }
  // Locked once the format is known (it decides the permissions), before the header is trusted.
  const req = { writable, metadataOnly: opts.metadataOnly, forceShare: opts.forceShare };
  if (opts.locking !== 'off') await storage.setPermissions?.(imagePermissions(fmt, req));
  const { own } = splitLayerOptions(opts.blockOptions, fmt, opts.backing !== false);
  const keySecret = descriptor.openOptions?.find((k) => k === 'key-secret' || k.endsWith('.key-secret'));
  const secretId = keySecret === undefined ? undefined : own[keySecret];
  const secret = secretId === undefined ? opts.passphrase : opts.secrets && Object.prototype.hasOwnProperty.call(opts.secrets, secretId) ? opts.secrets[secretId] : undefined;
  const ctx: DriverContext = {
    storage,
    writable,
    codecs: opts.host.codecs,
    metadataOnly: opts.metadataOnly ?? false,
    probed: format === undefined,
    internalSnapshot: opts.internalSnapshot,
    crypto: opts.host.crypto,
    onWarning: opts.onWarning,
    encryptionKey: secret === undefined ? undefined : secretBytes(secret),
    encryptionKeySecret: secretId,
    compressionLevel: opts.compressionLevel,
    openDataFile: async (name: string) => {
      const resolved = await checkImplicitFile(opts.host, opts.policy ?? 'allow', 'Data file', name, opts.host.resolve(path, name));
      // qemu names the data file's node by the name the image records (it
      // opens that name as given), and qemu-img map prints that name.
      const data = await opts.host.openStorage(resolved, { writable, name: name.replace(/^file:/, ''), http: opts.http });
      try {
        await data.setPermissions?.(dataFilePermissions(req));
      } catch (e) {
        await data.close().catch(() => {});
        throw e;
      }
      return data;
    },
  };
  return opener(ctx);
}


export interface OpenStorageOptions extends Omit<OpenOptions, 'host' | 'policy' | 'backing' | 'snapshot'> {
  /** Decompression (and compression) for compressed clusters; the Node entry point's nodeCodecs on Node. */
  codecs?: Codecs;
  /** The name the image reports itself as (default 'memory'). */
  name?: string;
  /** Other storages by the name an image records for its backing file (memory chains). */
  files?: Readonly<Record<string, Storage>>;
}

/**
 * Open an image held in a Storage (memory, a browser file, any byte
 * source). A backing file the image names is opened only from `files`;
 * anything else is refused by the open policy.
 *
 * @example
 * const storage = new MemoryStorage();
 * await createImage(storage, { format: 'qcow2', size: 1 << 20 });
 * const img = await openStorageImage(storage, { writable: true });
 */
export function openStorageImage(storage: Storage, opts: OpenStorageOptions = {}): Promise<Image> {
  const name = opts.name ?? 'memory';
  const files: Record<string, Storage> = { ...opts.files, [name]: storage };
  const host: Host = {
    openStorage: async (path) => {
      const s = files[path];
      if (!s) throw new ImageError('not-found', `Could not open '${path}': No such file or directory`);
      return borrowed(s);
    },
    resolve: (_image, n) => n,
    identity: async (p) => p,
    codecs: opts.codecs ?? NO_CODECS,
  };
  return openImage(name, { ...opts, host, policy: 'allow', backing: true });
}

/** The caller owns a storage it passes in: closing the image must not close it. */
export function borrowed(s: Storage): Storage {
  return new Proxy(s, {
    get(target, prop, receiver) {
      if (prop === 'close') return async () => {};
      const v = Reflect.get(target, prop, receiver) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}
