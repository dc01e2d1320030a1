/**
 * QED on-disk constants (qed-spec.rst). Everything is little-endian.
 */

export const QED_MAGIC = 0x00444551; // "QED\0" read as a little-endian u32

/** The fixed header; backing_filename_* are part of it whether or not the feature is set. */
export const HEADER_BYTES = 64;
export const HEADER = {
  magic: 0,
  clusterSize: 4,
  tableSize: 8,
  headerSize: 12,
  features: 16,
  compatFeatures: 24,
  autoclearFeatures: 32,
  l1TableOffset: 40,
  imageSize: 48,
  backingFilenameOffset: 56,
  backingFilenameSize: 60,
} as const;

export const MIN_CLUSTER_SIZE = 4096;
export const MAX_CLUSTER_SIZE = 64 * 1024 * 1024;
/** In clusters. */
export const MIN_TABLE_SIZE = 1;
export const MAX_TABLE_SIZE = 16;

export const F_BACKING_FILE = 0x1n;
export const F_NEED_CHECK = 0x2n;
/** The backing file is raw: never probe it. */
export const F_BACKING_FORMAT_NO_PROBE = 0x4n;
export const FEATURE_MASK = F_BACKING_FILE | F_NEED_CHECK | F_BACKING_FORMAT_NO_PROBE;

/** Table entries are u64 byte offsets. */
export const ENTRY_BYTES = 8;
export const ENTRY_UNALLOCATED = 0;
/** A data cluster that reads as zero and hides the backing file. */
export const ENTRY_ZERO = 1;

/** image_size granularity, and the unit the host file length is counted in. */
export const SECTOR_SIZE = 512;

/**
 * QEMU reads the backing name into a PATH_MAX buffer with room for a NUL,
 * so a name of this many bytes or more fails to open.
 */
export const MAX_BACKING_NAME_BYTES = 4096;

/** L2 tables are read and cached in pieces of at most this many bytes. */
export const TABLE_CHUNK_BYTES = 64 * 1024;
/** Cached table pieces: bounds cache memory to 8 MiB. */
export const TABLE_CACHE_CHUNKS = 128;
