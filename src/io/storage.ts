import type { Permissions } from '../block/perms.js';

/**
 * Byte storage under an image: a host file, memory, later an HTTP range
 * source or a browser Blob. Everything above io/ talks only to this.
 */
export interface Storage {
  /** What the user would call it: a path, or a label for memory storage. */
  readonly name: string;
  readonly writable: boolean;
  size(): Promise<number>;
  /** Fills `into` completely; bytes past the end of the storage read as zero. */
  read(into: Uint8Array, offset: number): Promise<void>;
  /** Writes all of `data`, growing the storage as needed. */
  write(data: Uint8Array, offset: number): Promise<void>;
  /** Make [offset, offset+length) read as zero; with `mayUnmap`, deallocating where possible. */
  writeZeroes?(offset: number, length: number, opts?: { mayUnmap?: boolean }): Promise<void>;
  /** Deallocate a range, which then reads as zero; false when the storage cannot (nothing changed). */
  punchHole?(offset: number, length: number): Promise<boolean>;
  /** Allocate a range's blocks without writing data (preallocation=falloc); false when the storage cannot. */
  allocate?(offset: number, length: number): Promise<boolean>;
  truncate(size: number): Promise<void>;
  flush(): Promise<void>;
  close(): Promise<void>;
  /**
   * The storage answers no block-level info (qemu's curl driver has no
   * bdrv_get_info): a format that forwards info to it (raw) reports no dirty
   * flag, as qemu-img info shows for a raw image read over HTTP.
   */
  readonly noBlockInfo?: boolean;
  /** Bytes the host really allocates (qemu-img's "disk size"), if known. */
  allocatedSize?(): Promise<number | undefined>;
  /**
   * Whether the bytes at `offset` are allocated on the host or a hole, and
   * for how many bytes (at most `length`) that holds: qemu's file-level block
   * status (SEEK_DATA/SEEK_HOLE). Absent when the host cannot tell; callers
   * then treat everything as data.
   */
  allocation?(offset: number, length: number): Promise<{ data: boolean; length: number }>;
  /**
   * Take QEMU's image locks for these permissions (see block/perms.ts),
   * replacing earlier ones; fails when another process conflicts. Absent
   * when the storage is not a file others could open.
   */
  setPermissions?(p: Permissions): Promise<void>;
}
