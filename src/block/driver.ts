/**
 * The contract between the generic block layer and a format driver.
 *
 * A driver answers one question: where does a guest range live? The
 * generic layer (image.ts) does the reading, zero-filling, backing
 * recursion and merging, once for every format.
 */
import type { PersistentBitmapSet } from './bitmaps.js';
import type { Storage } from '../io/storage.js';
import type { Codecs } from './codecs.js';
import type { DriverInfo } from './info.js';
import type { InternalSnapshotRef } from './snapshot.js';
import type { CryptoProvider } from '../crypto/provider.js';

export type ImageFormat = 'qcow2' | 'qed' | 'raw' | 'luks';

/** How a resize fills the new area (qemu's PreallocMode). */
export type Preallocation = 'off' | 'metadata' | 'falloc' | 'full';

/** What a driver's resize gets; the caller has checked the size and the shrink permission. */
export interface ResizeRequest {
  preallocation: Preallocation;
}

/**
 * Where [offset, offset + length) lives in this layer. `length` is at most
 * the requested maximum and always > 0; a driver merges as many clusters of
 * the same kind (and, for data, contiguous host offsets) as it cheaply can.
 */
export type Mapping =
  /** Guest data at hostOffset in `storage` (the image file or an external data file). */
  | {
      kind: 'data';
      length: number;
      storage: Storage;
      hostOffset: number;
      /**
       * qemu's BDRV_BLOCK_RECURSE: the driver does not know whether the host
       * range holds data, so a hole in the host file reports as zero in map.
       */
      recurse?: boolean;
      /**
       * The host bytes are not the guest's (an encrypted image: `storage`
       * decrypts them). qemu reports no offset for such data, so neither
       * does block status.
       */
      opaque?: boolean;
    }
  /** Reads as zero and is allocated in this layer (hides the backing file). */
  | { kind: 'zero'; length: number; storage?: Storage; hostOffset?: number }
  /** Not allocated in this layer: the backing file shows through (zero without one). */
  | { kind: 'unallocated'; length: number; storage?: Storage; hostOffset?: number }
  /** Compressed: only the driver can read it (readCompressed). */
  | { kind: 'compressed'; length: number };

export interface BackingRef {
  /** The name as recorded in the image. */
  name: string;
  /** The format as recorded (qcow2 backing format extension; QED's no-probe bit means raw). */
  format?: string;
}

export interface FormatDriver {
  readonly format: ImageFormat;
  /** Virtual size in bytes. */
  readonly size: number;
  /** The image file. */
  readonly storage: Storage;
  readonly writable: boolean;
  /** The backing file the image names, if any. */
  readonly backing?: BackingRef;
  /**
   * Writes must start and end on multiples of this (an encrypted image's
   * cipher sector); the generic layer turns other writes into aligned
   * read-modify-writes. Absent: any byte range.
   */
  readonly requestAlignment?: number;

  getMapping(offset: number, maxLength: number): Promise<Mapping>;
  /** Read [offset, offset + into.length) from a range getMapping called compressed. */
  readCompressed?(offset: number, into: Uint8Array): Promise<void>;
  info(): Promise<DriverInfo>;
  flush(): Promise<void>;
  close(): Promise<void>;

  // Writing: drivers opened writable. The driver allocates, copies on write
  // (reading the backing file through attachBacking) and orders its own
  // metadata updates; the generic layer checks ranges and read-only state.
  write?(offset: number, data: Uint8Array, opts?: { compressed?: boolean }): Promise<void>;
  writeZeroes?(offset: number, length: number, opts: { mayUnmap: boolean }): Promise<void>;
  discard?(offset: number, length: number): Promise<void>;
  /**
   * Change the virtual size (qemu's bdrv_co_truncate): `size` reflects the
   * new value once this resolves. Absent: the format cannot be resized.
   */
  resize?(newSize: number, req: ResizeRequest): Promise<void>;
  /** Called once the backing chain is open (null when there is none). */
  attachBacking?(backing: BackingReader | null): void;
  /**
   * The persistent dirty bitmaps, for formats that store them. `forChange`:
   * the caller will change them (the image must be writable; they are
   * flagged in-use on disk first, and stored at close).
   */
  persistentBitmaps?(forChange: boolean): Promise<PersistentBitmapSet>;
  /**
   * Record a new backing file name and format in the image's metadata
   * (qemu's bdrv_change_backing_file); `name` undefined removes the backing
   * file. Only the header changes: the guest data is the caller's business.
   * Absent: the format cannot name a backing file ("Operation not supported").
   */
  setBacking?(name: string | undefined, format: string | undefined): Promise<void>;
  /**
   * Drop everything this layer allocates, so the backing file shows through
   * everywhere (qemu's bdrv_make_empty, after a commit). The image takes no
   * further writes until reopened. Absent: the format cannot (qemu then
   * leaves the image as it is).
   */
  makeEmpty?(): Promise<void>;
}

/** What a driver sees of its backing file: enough to copy on write. */
export interface BackingReader {
  readonly size: number;
  read(offset: number, into: Uint8Array): Promise<void>;
}

/** What opening one layer gets from the generic layer. */
export interface DriverContext {
  storage: Storage;
  writable: boolean;
  codecs: Codecs;
  /**
   * Open an implicit file the image names (an external data file), subject to
   * the open policy. Relative names resolve against the image's directory.
   */
  openDataFile(name: string): Promise<Storage>;
  /** Metadata only (qemu-img info): do not open data files, read no guest data. */
  metadataOnly: boolean;
  /** An explicit external data file given by the caller (qemu's data-file option). */
  dataFile?: Storage;
  /** The format was guessed from the contents, not named by the caller. */
  probed?: boolean;
  /** Read the guest contents as of this internal snapshot (read-only opens). */
  internalSnapshot?: InternalSnapshotRef;
  /** Ciphers and key derivation for encrypted images (the host's; portable ones otherwise). */
  crypto?: CryptoProvider;
  /** Where the lines qemu prints on stderr while opening go (see OpenOptions.onWarning). */
  onWarning?: (message: string) => void;
  /**
   * This layer's key: the bytes of the secret its key-secret option names
   * (a backing layer's comes from `backing.`-prefixed options), or the
   * caller's passphrase for the top layer. Use requireEncryptionKey
   * (block/secrets.ts), which gives qemu's errors when it is missing.
   */
  encryptionKey?: Uint8Array;
  /** The secret id this layer's key-secret option names (set even when no such secret exists). */
  encryptionKeySecret?: string;
  /** The level compressed writes use (a qimg extension; the format's default when absent). */
  compressionLevel?: number;
}

export type DriverOpener = (ctx: DriverContext) => Promise<FormatDriver>;
