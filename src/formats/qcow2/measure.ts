/**
 * qcow2 size arithmetic, as QEMU computes it for `measure` and for
 * preallocation: the metadata a fully allocated image of a given virtual
 * size needs (header, L2 tables, L1 table, refcount structures).
 */
import { alignUp, divCeil } from '../../units.js';

const L1E_SIZE = 8;
const REFTABLE_ENTRY_SIZE = 8;
export const QCOW_MAX_L1_SIZE = 32 * 1024 * 1024;

/**
 * Bytes of refcount table and blocks needed to count `clusters` clusters,
 * including the refcount structures themselves: the fixed point where no
 * further block or table cluster is needed.
 */
export function refcountMetadataSize(clusters: number, clusterSize: number, refcountOrder: number): number {
  const blocksPerTableCluster = clusterSize / REFTABLE_ENTRY_SIZE;
  const refcountsPerBlock = (clusterSize * 8) / 2 ** refcountOrder;
  let table = 0;
  let blocks = 0;
  let n = 0;
  let last: number;
  do {
    last = n;
    blocks = divCeil(clusters + table + blocks, refcountsPerBlock);
    table = divCeil(blocks, blocksPerTableCluster);
    n = clusters + blocks + table;
  } while (n !== last);
  return (blocks + table) * clusterSize;
}

/** File size of a fully allocated image: all metadata plus every data cluster. */
export function preallocSize(virtualSize: number, clusterSize: number, refcountOrder: number, extendedL2: boolean): number {
  const total = alignUp(virtualSize, clusterSize);
  const l2eSize = extendedL2 ? 16 : 8;
  let meta = clusterSize; // header
  const nl2e = alignUp(total / clusterSize, clusterSize / l2eSize);
  meta += nl2e * l2eSize;
  const nl1e = alignUp((nl2e * l2eSize) / clusterSize, clusterSize / L1E_SIZE);
  meta += nl1e * L1E_SIZE;
  meta += refcountMetadataSize((meta + total) / clusterSize, clusterSize, refcountOrder);
  return meta + total;
}

/** Whether an image of this size needs an L1 table above QEMU's 32 MiB limit. */
export function l1TooLarge(virtualSize: number, clusterSize: number, extendedL2: boolean): boolean {
  const l2eSize = extendedL2 ? 16 : 8;
  const l2Tables = divCeil(alignUp(virtualSize, clusterSize) / clusterSize, clusterSize / l2eSize);
  return l2Tables * L1E_SIZE > QCOW_MAX_L1_SIZE;
}

/** Size of one bitmap directory entry with a name of `nameLength` bytes. */
export function bitmapDirEntrySize(nameLength: number): number {
  return alignUp(24 + nameLength, 8);
}

/** Room the persistent bitmaps of a source need in a qcow2 image with this cluster size. */
export function bitmapsSize(bitmaps: { name: string; granularity: number }[], virtualSize: number, clusterSize: number): number {
  let size = 0;
  let dir = 0;
  for (const b of bitmaps) {
    const bytes = divCeil(divCeil(virtualSize, b.granularity), 8);
    const clusters = divCeil(bytes, clusterSize);
    size += clusters * clusterSize;
    size += alignUp(clusters * 8, clusterSize);
    dir += bitmapDirEntrySize(new TextEncoder().encode(b.name).length);
  }
  return size + alignUp(dir, clusterSize);
}
