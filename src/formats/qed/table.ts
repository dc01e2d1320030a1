/**
 * QED table geometry and entry decoding. L1 and L2 tables are arrays of
 * little-endian u64 byte offsets: 0 is unallocated, 1 (L2 only) a zero
 * cluster, anything else must be a cluster-aligned offset past the header
 * area and inside the file.
 */
import { ENTRY_BYTES, ENTRY_UNALLOCATED, ENTRY_ZERO, SECTOR_SIZE } from './constants.js';
import { alignDown, alignUp } from '../../units.js';

const TWO_32 = 0x1_0000_0000;

export interface QedGeometry {
  clusterSize: number;
  /** Table size in clusters. */
  tableSize: number;
  /** header_size * cluster_size: no table or data cluster may start below it. */
  headerBytes: number;
  /** Entries per table (L1 and L2 alike). */
  tableEntries: number;
  /** Guest bytes behind one L1 entry. */
  l2Coverage: number;
  /** The file length as QEMU judges offsets: whole sectors, rounded down to a cluster. */
  fileSize: number;
}

export function makeGeometry(clusterSize: number, tableSize: number, headerSize: number, storageSize: number): QedGeometry {
  const tableEntries = (tableSize * clusterSize) / ENTRY_BYTES;
  return {
    clusterSize,
    tableSize,
    // Power-of-two multiples are exact in doubles, even past 2^53.
    headerBytes: headerSize * clusterSize,
    tableEntries,
    l2Coverage: tableEntries * clusterSize,
    fileSize: alignDown(alignUp(storageSize, SECTOR_SIZE), clusterSize),
  };
}

/**
 * Entry `index` of a table held in `view`. Values of 2^53 and above come
 * back rounded, which is harmless: they lie past any file and so are invalid
 * whatever their exact value.
 */
export function entryAt(view: DataView, index: number): number {
  const pos = index * ENTRY_BYTES;
  return view.getUint32(pos + 4, true) * TWO_32 + view.getUint32(pos, true);
}

export const isUnallocated = (entry: number): boolean => entry === ENTRY_UNALLOCATED;
export const isZeroCluster = (entry: number): boolean => entry === ENTRY_ZERO;

/** A data cluster (or the first cluster of a table) may start at `offset`. */
export function isValidClusterOffset(g: QedGeometry, offset: number): boolean {
  return offset % g.clusterSize === 0 && offset >= g.headerBytes && offset < g.fileSize;
}

/**
 * A whole table fits at `offset`. QEMU 7.2 also refuses every table when
 * table_size is 1 (its overflow test compares end <= start); the spec allows
 * that size, so only a real overflow is refused here, and doubles cannot
 * overflow at these magnitudes.
 */
export function isValidTableOffset(g: QedGeometry, offset: number): boolean {
  return isValidClusterOffset(g, offset) && isValidClusterOffset(g, offset + (g.tableSize - 1) * g.clusterSize);
}
