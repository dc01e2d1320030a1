/**
 * qcow2 on-disk constants. Section names refer to docs/interop/qcow2.rst
 * ("the spec"); limits that are QEMU's own choices say so.
 */

/** Header magic "QFI\xfb" (spec: Header, bytes 0-3). */
export const QCOW2_MAGIC = 0x514649fb;

/** cluster_bits range (spec: Header, bytes 20-23: "must not be less than 9"; QEMU caps at 21 = 2 MiB). */
export const MIN_CLUSTER_BITS = 9;
export const MAX_CLUSTER_BITS = 21;

/** Fixed header lengths: v2 has no header_length field; v3 needs at least up to refcount_order/header_length. */
export const HEADER_V2_LENGTH = 72;
export const HEADER_V3_MIN_LENGTH = 104;
/** QEMU's in-memory header struct (v3 with compression_type and padding). */
export const HEADER_V3_LENGTH = 112;
/** Offset of the compression_type byte (spec: Additional fields, byte 104). */
export const HEADER_COMPRESSION_TYPE_OFFSET = 104;

/** Incompatible feature bits (spec: Header, bytes 72-79). */
export const INCOMPAT_DIRTY = 1 << 0;
export const INCOMPAT_CORRUPT = 1 << 1;
export const INCOMPAT_DATA_FILE = 1 << 2;
export const INCOMPAT_COMPRESSION = 1 << 3;
export const INCOMPAT_EXTL2 = 1 << 4;
/** Every incompatible bit this reader understands. */
export const INCOMPAT_KNOWN_MASK = 0x1fn;

/** Compatible feature bits (spec: bytes 80-87). */
export const COMPAT_LAZY_REFCOUNTS = 1 << 0;

/** Autoclear feature bits (spec: bytes 88-95). */
export const AUTOCLEAR_BITMAPS = 1 << 0;
export const AUTOCLEAR_DATA_FILE_RAW = 1 << 1;

/** crypt_method values (spec: Header, bytes 32-35). */
export const CRYPT_NONE = 0;
export const CRYPT_AES = 1;
export const CRYPT_LUKS = 2;

/** compression_type values (spec: Additional fields, byte 104). */
export const COMPRESSION_ZLIB = 0;
export const COMPRESSION_ZSTD = 1;
export const COMPRESSION_NAMES = ['zlib', 'zstd'] as const;

/** Header extension magics (spec: Header extensions). */
export const EXT_END = 0x00000000;
export const EXT_BACKING_FORMAT = 0xe2792aca;
export const EXT_FEATURE_TABLE = 0x6803f857;
export const EXT_BITMAPS = 0x23852875;
export const EXT_CRYPTO_HEADER = 0x0537be77;
export const EXT_DATA_FILE = 0x44415441;

/** Feature name table entry: type u8, bit u8, name[46] (spec: Feature name table). */
export const FEATURE_ENTRY_SIZE = 48;
export const FEATURE_NAME_LENGTH = 46;
export const FEATURE_TYPE_INCOMPATIBLE = 0;

/** The backing file format extension must fit QEMU's 16-byte buffer with its NUL. */
export const MAX_BACKING_FORMAT_LENGTH = 16;
/** QEMU: backing file names are at most 1023 bytes. */
export const MAX_BACKING_FILE_NAME = 1023;

/**
 * Table entry bits, split into the high and low 32-bit words of the
 * big-endian u64 (spec: Cluster mapping).
 * Offset mask 0x00fffffffffffe00 = bits 9..55.
 */
export const OFFSET_MASK_HI = 0x00ffffff;
export const OFFSET_MASK_LO = 0xfffffe00;
/** Bit 63: refcount is exactly one (L1 and standard L2 entries). */
export const OFLAG_COPIED_HI = 0x80000000;
/** Bit 62: compressed cluster (L2). */
export const OFLAG_COMPRESSED_HI = 0x40000000;
/** Bit 0: reads as zero (standard L2, v3 only; ignored with extended L2). */
export const OFLAG_ZERO_LO = 0x1;

/** Refcount table entries: offset in bits 9..63 (spec: Host cluster management). */
export const REFT_OFFSET_MASK_LO = 0xfffffe00;

/** Sizes of table entries in bytes. */
export const L1_ENTRY_SIZE = 8;
export const L2_ENTRY_SIZE = 8;
export const L2_ENTRY_SIZE_EXTENDED = 16;
export const REFTABLE_ENTRY_SIZE = 8;

/** Extended L2: 32 subclusters per cluster (spec: Extended L2 Entries). */
export const SUBCLUSTERS_PER_CLUSTER = 32;

/** QEMU limits (qcow2.h). */
export const MAX_L1_SIZE = 0x2000000; // 32 MiB of L1 entries
export const MAX_REFTABLE_SIZE = 0x800000; // 8 MiB
export const MAX_SNAPSHOTS = 65536;
export const SNAPSHOT_HEADER_SIZE = 40;
export const MAX_SNAPSHOT_EXTRA_DATA = 1024;
/** Whole snapshot table, as QEMU measures it while reading. */
export const MAX_SNAPSHOTS_SIZE = 1024 * MAX_SNAPSHOTS;
/** Known snapshot extra data: vm_state_size_large, disk_size, icount. */
export const SNAPSHOT_EXTRA_KNOWN = 24;

export const MAX_BITMAPS = 65535;
export const MAX_BITMAP_DIRECTORY_SIZE = 64 * 1024 * 1024;
export const BITMAPS_EXT_SIZE = 24;
export const BITMAP_DIR_ENTRY_SIZE = 24;
export const BME_FLAG_IN_USE = 1 << 0;
export const BME_FLAG_AUTO = 1 << 1;
export const BME_RESERVED_FLAGS = ~(BME_FLAG_IN_USE | BME_FLAG_AUTO) >>> 0;
export const BME_MIN_GRANULARITY_BITS = 9;
export const BME_MAX_GRANULARITY_BITS = 31;
export const BME_MAX_NAME_SIZE = 1023;
export const BME_MAX_PHYS_SIZE = 0x20000000; // 512 MiB of bitmap data
export const BITMAP_TYPE_DIRTY_TRACKING = 1;

/** Full disk encryption header pointer extension: offset u64, length u64. */
export const CRYPTO_HEADER_EXT_SIZE = 16;

/** QEMU's default L2 cache ceiling on Linux (docs/qcow2-cache.txt). */
export const L2_CACHE_MAX_BYTES = 32 * 1024 * 1024;

export const SECTOR_SIZE = 512;
