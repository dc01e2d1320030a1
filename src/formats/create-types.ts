/**
 * Typed creation options of every format, as a program passes them to
 * createImage / createImageFile. Each key is one of qemu-img's -o options
 * (named in the comment); anything left out takes qemu's default.
 */

export interface Qcow2CreateImageOptions {
  format: 'qcow2';
  /** Virtual size in bytes (may come from the backing file with createImageFile). */
  size?: number;
  /** compat: 2 (0.10) or 3 (1.1, default). */
  version?: 2 | 3;
  /** cluster_size: a power of two from 512 to 2 MiB (default 64 KiB). */
  clusterSize?: number;
  /** refcount_bits: 1 to 64, a power of two (default 16; v2 images only 16). */
  refcountBits?: number;
  /** lazy_refcounts (v3). */
  lazyRefcounts?: boolean;
  /** extended_l2: 32 subclusters per cluster (v3, clusters of 16 KiB or more). */
  extendedL2?: boolean;
  /** compression_type (zstd needs v3). */
  compressionType?: 'zlib' | 'zstd';
  /** preallocation (default off). */
  preallocation?: 'off' | 'metadata' | 'falloc' | 'full';
  /** backing_file: as it is recorded, relative to the new image's directory. */
  backingFile?: string;
  /** backing_fmt: required with backingFile. */
  backingFormat?: string;
  /** data_file: an external data file (v3), created alongside. */
  dataFile?: string;
  /** data_file_raw: the data file stays a valid raw image. */
  dataFileRaw?: boolean;
  /** encrypt.format: 'luks' or 'aes' (needs encryptKeySecret and the secret in the call's secrets). */
  encryptFormat?: 'luks' | 'aes';
  /** encrypt.key-secret: the id of the secret holding the passphrase. */
  encryptKeySecret?: string;
}

export interface QedCreateImageOptions {
  format: 'qed';
  size?: number;
  /** cluster_size: a power of two from 4 KiB to 64 MiB (default 64 KiB). */
  clusterSize?: number;
  /** table_size: L1/L2 table size in clusters, 1 to 16 (default 4). */
  tableSize?: number;
  backingFile?: string;
  backingFormat?: string;
  /** The file protocol's preallocation (off, falloc, full). */
  preallocation?: 'off' | 'falloc' | 'full';
}

export interface RawCreateImageOptions {
  format: 'raw';
  size: number;
  /** off (sparse, default), falloc or full: the file's bytes are allocated. */
  preallocation?: 'off' | 'falloc' | 'full';
}

export type CreateImageOptions = Qcow2CreateImageOptions | QedCreateImageOptions | RawCreateImageOptions;
