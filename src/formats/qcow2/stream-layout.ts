/**
 * Where everything goes in a qcow2 written front to back (see
 * stream-writer.ts): header, refcount table, refcount blocks, L1 table, the
 * L2 tables in use, then data clusters in guest order. Compressed payloads
 * are packed byte-tight as qemu packs them; a plain cluster starts on a
 * cluster boundary. Everything here is computed, nothing is read or written.
 */
import { ImageError } from '../../errors.js';
import { divCeil } from '../../units.js';
import * as C from './constants.js';

/**
 * The guest clusters that get host space, in guest order, with each one's
 * compressed payload size (0: stored plain). Flat typed arrays: 4 bytes per
 * allocated cluster, 8 with compression.
 */
export class AllocationList {
  private index: Uint32Array = new Uint32Array(1024);
  private sizes: Uint32Array | undefined;
  length = 0;

  constructor(withSizes: boolean) {
    if (withSizes) this.sizes = new Uint32Array(1024);
  }

  /** Append guest cluster `cluster` (greater than any before) with its payload size. */
  push(cluster: number, compressedSize = 0): void {
    if (cluster > 0xffff_ffff) throw new ImageError('unsupported', 'Images with more than 2^32 clusters cannot be written as a stream');
    if (this.length === this.index.length) {
      this.index = grow(this.index);
      if (this.sizes) this.sizes = grow(this.sizes);
    }
    this.index[this.length] = cluster;
    if (this.sizes) this.sizes[this.length] = compressedSize;
    else if (compressedSize !== 0) throw new Error('AllocationList: sizes were not enabled');
    this.length++;
  }

  cluster(i: number): number {
    return this.index[i]!;
  }

  compressedSize(i: number): number {
    return this.sizes ? this.sizes[i]! : 0;
  }

  /** Bytes held (for the memory budget and tests). */
  get byteLength(): number {
    return this.index.byteLength + (this.sizes?.byteLength ?? 0);
  }
}

function grow(a: Uint32Array): Uint32Array {
  const b = new Uint32Array(a.length * 2);
  b.set(a);
  return b;
}

/** One allocated guest cluster's place in the data area (offsets relative to its start). */
export interface Placement {
  /** Index in the AllocationList. */
  index: number;
  guestCluster: number;
  /** Byte offset from the start of the data area. */
  offset: number;
  /** Bytes stored: the payload size, or the cluster size for a plain cluster. */
  length: number;
  compressed: boolean;
}

/**
 * Walks the data area in order, placing each allocated cluster. Compressed
 * payloads follow each other byte-tight, across cluster boundaries too, as
 * long as no host cluster gets more references than a refcount can hold;
 * a plain cluster starts on the next cluster boundary. Deterministic, so
 * it is run once to size the file and again for each part that needs it.
 */
export class PlacementWalker {
  private cursor = 0;
  /** References already taken in the host cluster holding `cursor` (0 when cursor is on a boundary). */
  private openRefs = 0;
  private i = 0;

  constructor(
    private readonly alloc: AllocationList,
    private readonly clusterSize: number,
    private readonly maxRefcount: number,
  ) {}

  /** The next placement, or undefined after the last. */
  next(): Placement | undefined {
    if (this.i >= this.alloc.length) return undefined;
    const cs = this.clusterSize;
    const index = this.i++;
    const size = this.alloc.compressedSize(index);
    const guestCluster = this.alloc.cluster(index);
    if (size === 0) {
      const offset = divCeil(this.cursor, cs) * cs;
      this.cursor = offset + cs;
      this.openRefs = 0;
      return { index, guestCluster, offset, length: cs, compressed: false };
    }
    if (this.cursor % cs !== 0 && this.openRefs + 1 > this.maxRefcount) {
      this.cursor = divCeil(this.cursor, cs) * cs;
      this.openRefs = 0;
    }
    const offset = this.cursor;
    const sameCluster = Math.floor(offset / cs) === Math.floor((offset + size - 1) / cs);
    const refsOfLast = sameCluster ? this.openRefs + 1 : 1;
    this.cursor = offset + size;
    this.openRefs = this.cursor % cs === 0 ? 0 : refsOfLast;
    return { index, guestCluster, offset, length: size, compressed: true };
  }

  /** Bytes of the data area used so far. */
  get end(): number {
    return this.cursor;
  }
}

export interface LayoutInput {
  clusterSize: number;
  /** Virtual size in bytes (a multiple of 512). */
  size: number;
  refcountBits: number;
  /** How many L2 tables hold at least one allocated cluster. */
  l2Tables: number;
  /** Host clusters the data area needs. */
  dataClusters: number;
}

export interface Layout extends LayoutInput {
  clusterBits: number;
  l1Entries: number;
  l1Clusters: number;
  refcountTableClusters: number;
  refcountBlocks: number;
  /** Entries in one refcount block. */
  refcountsPerBlock: number;
  /** Host cluster numbers of each area's start. */
  refcountTableCluster: number;
  refcountBlockCluster: number;
  l1Cluster: number;
  l2Cluster: number;
  dataCluster: number;
  /** Host clusters in the whole file. */
  totalClusters: number;
}

/** Guest clusters an L2 table maps. */
export const l2EntriesOf = (clusterSize: number): number => clusterSize / C.L2_ENTRY_SIZE;

/** The largest refcount a `bits`-wide entry holds. */
export const maxRefcountOf = (bits: number): number => (bits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** bits - 1);

/**
 * Sizes every area. The refcount blocks must count every host cluster of
 * the final file, themselves and the refcount table included, so their
 * number is the least fixed point of blocks = ceil(clusters / perBlock),
 * which growing from zero reaches in a few steps.
 */
export function computeLayout(input: LayoutInput): Layout {
  const cs = input.clusterSize;
  const clusterBits = Math.log2(cs);
  const refcountsPerBlock = (cs * 8) / input.refcountBits;
  const l1Entries = divCeil(divCeil(input.size, cs), l2EntriesOf(cs));
  if (l1Entries * C.L1_ENTRY_SIZE > C.MAX_L1_SIZE) throw new ImageError('unsupported', 'L1 table is too big');
  const l1Clusters = divCeil(l1Entries * C.L1_ENTRY_SIZE, cs);
  const fixed = 1 + l1Clusters + input.l2Tables + input.dataClusters;
  let blocks = 0;
  let table = 0;
  for (;;) {
    const total = fixed + table + blocks;
    const needBlocks = divCeil(total, refcountsPerBlock);
    const needTable = Math.max(1, divCeil(needBlocks * C.REFTABLE_ENTRY_SIZE, cs));
    if (needBlocks === blocks && needTable === table) break;
    blocks = Math.max(blocks, needBlocks);
    table = Math.max(table, needTable);
  }
  if (table * cs > C.MAX_REFTABLE_SIZE) throw new ImageError('unsupported', 'Refcount table is too big');
  const refcountTableCluster = 1;
  const refcountBlockCluster = refcountTableCluster + table;
  const l1Cluster = refcountBlockCluster + blocks;
  const l2Cluster = l1Cluster + l1Clusters;
  const dataCluster = l2Cluster + input.l2Tables;
  return {
    ...input,
    clusterBits,
    l1Entries,
    l1Clusters,
    refcountTableClusters: table,
    refcountBlocks: blocks,
    refcountsPerBlock,
    refcountTableCluster,
    refcountBlockCluster,
    l1Cluster,
    l2Cluster,
    dataCluster,
    totalClusters: dataCluster + input.dataClusters,
  };
}
