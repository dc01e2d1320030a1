/**
 * Pure decoding of L1/L2 table entries (spec: Cluster mapping, Extended L2
 * Entries, Compressed Clusters Descriptor). Entries arrive as the high and
 * low 32-bit words of the big-endian u64, so hot paths need no BigInt.
 */
import { ImageError } from '../../errors.js';
import * as C from './constants.js';

/** QEMU's QCow2SubclusterType. Without extended L2 a cluster is one subcluster. */
export const Sub = {
  UNALLOCATED_PLAIN: 0,
  UNALLOCATED_ALLOC: 1,
  ZERO_PLAIN: 2,
  ZERO_ALLOC: 3,
  NORMAL: 4,
  COMPRESSED: 5,
  INVALID: 6,
} as const;
export type SubclusterType = (typeof Sub)[keyof typeof Sub];

/** QEMU's QCow2ClusterType (type of the whole L2 entry). */
export const Cluster = {
  UNALLOCATED: 0,
  ZERO_PLAIN: 1,
  ZERO_ALLOC: 2,
  NORMAL: 3,
  COMPRESSED: 4,
} as const;
export type ClusterType = (typeof Cluster)[keyof typeof Cluster];

const TWO_32 = 0x1_0000_0000;

/** Bits 9..55 of an L1/L2 entry as a byte offset; refuses offsets above 2^53. */
export function entryOffset(hi: number, lo: number): number {
  const h = hi & C.OFFSET_MASK_HI;
  if (h > 0x1f_ffff) {
    throw new ImageError('unsupported', `Host offset 0x${h.toString(16)}${((lo & C.OFFSET_MASK_LO) >>> 0).toString(16).padStart(8, '0')} is too large: offsets above 2^53 are not supported`);
  }
  return h * TWO_32 + ((lo & C.OFFSET_MASK_LO) >>> 0);
}

/**
 * qcow2_get_cluster_type: the compressed flag is tested before the zero
 * flag (they overlap in meaning: a compressed descriptor may have bit 0 set
 * as part of its offset). Offset 0 with COPIED means guest offset 0 in an
 * external data file.
 */
export function clusterType(hi: number, lo: number, extL2: boolean, hasDataFile: boolean): ClusterType {
  if (hi & C.OFLAG_COMPRESSED_HI) return Cluster.COMPRESSED;
  const hasOffset = (hi & C.OFFSET_MASK_HI) !== 0 || (lo & C.OFFSET_MASK_LO) !== 0;
  if (lo & C.OFLAG_ZERO_LO && !extL2) return hasOffset ? Cluster.ZERO_ALLOC : Cluster.ZERO_PLAIN;
  if (!hasOffset) return hasDataFile && hi & C.OFLAG_COPIED_HI ? Cluster.NORMAL : Cluster.UNALLOCATED;
  return Cluster.NORMAL;
}

/**
 * qcow2_get_subcluster_type. `zeroBits`/`allocBits` are the high and low
 * words of the extended L2 bitmap (bit x of each refers to subcluster x);
 * ignored without extended L2.
 */
export function subclusterType(
  ctype: ClusterType,
  extL2: boolean,
  allocBits: number,
  zeroBits: number,
  sc: number,
): SubclusterType {
  if (!extL2) {
    switch (ctype) {
      case Cluster.COMPRESSED:
        return Sub.COMPRESSED;
      case Cluster.ZERO_PLAIN:
        return Sub.ZERO_PLAIN;
      case Cluster.ZERO_ALLOC:
        return Sub.ZERO_ALLOC;
      case Cluster.NORMAL:
        return Sub.NORMAL;
      case Cluster.UNALLOCATED:
        return Sub.UNALLOCATED_PLAIN;
    }
  }
  switch (ctype) {
    case Cluster.COMPRESSED:
      return Sub.COMPRESSED;
    case Cluster.NORMAL:
      if ((zeroBits & allocBits) !== 0) return Sub.INVALID;
      if ((zeroBits >>> sc) & 1) return Sub.ZERO_ALLOC;
      if ((allocBits >>> sc) & 1) return Sub.NORMAL;
      return Sub.UNALLOCATED_ALLOC;
    case Cluster.UNALLOCATED:
      if (allocBits !== 0) return Sub.INVALID;
      if ((zeroBits >>> sc) & 1) return Sub.ZERO_PLAIN;
      return Sub.UNALLOCATED_PLAIN;
    default:
      // The zero flag does not exist with extended L2: clusterType never says ZERO_*.
      return Sub.INVALID;
  }
}

/** Whether a subcluster of this type has a meaningful host offset. */
export function hasHostOffset(t: SubclusterType): boolean {
  return t === Sub.NORMAL || t === Sub.ZERO_ALLOC || t === Sub.UNALLOCATED_ALLOC;
}

export interface CompressedDescriptor {
  /** Byte offset of the payload in the image file (not aligned). */
  hostOffset: number;
  /** 512-byte sectors the payload touches. */
  sectors: number;
  /** Bytes QEMU reads from hostOffset: up to the end of the last sector. */
  csize: number;
}

/**
 * Decode a compressed cluster descriptor (qemu-behaviour §5):
 * x = 62 - (cluster_bits - 8); offset = bits 0..x-1; bits x..61 = additional sectors.
 */
export function decodeCompressed(hi: number, lo: number, clusterBits: number): CompressedDescriptor {
  const shiftHi = 70 - clusterBits - 32; // csize_shift - 32, 17..29
  const offHi = hi & ((1 << shiftHi) - 1);
  if (offHi > 0x1f_ffff) {
    throw new ImageError('unsupported', 'Compressed cluster offset is too large: offsets above 2^53 are not supported');
  }
  const hostOffset = offHi * TWO_32 + (lo >>> 0);
  const sectors = ((hi >>> shiftHi) & ((1 << (clusterBits - 8)) - 1)) + 1;
  return { hostOffset, sectors, csize: sectors * C.SECTOR_SIZE - (hostOffset % C.SECTOR_SIZE) };
}

/** The descriptor QEMU writes for a payload of `length` bytes at `hostOffset`. */
export function encodeCompressed(hostOffset: number, length: number, clusterBits: number): bigint {
  const shift = BigInt(70 - clusterBits);
  const field = BigInt(Math.floor((hostOffset + length - 1) / C.SECTOR_SIZE) - Math.floor(hostOffset / C.SECTOR_SIZE));
  return BigInt(hostOffset) | (1n << 62n) | (field << shift);
}

/** Split a u64 entry into words (for tests and writers). */
export function words(entry: bigint): [hi: number, lo: number] {
  return [Number((entry >> 32n) & 0xffffffffn), Number(entry & 0xffffffffn)];
}
