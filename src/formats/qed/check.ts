/**
 * QED consistency scan (QEMU's qed_check): every L1 and L2 entry must be
 * unallocated, zero (L2 only) or a valid offset, and no cluster may be
 * referenced twice. With `fix`, invalid entries are set to unallocated on
 * the storage (references twice over are counted, not fixed). Clusters past
 * the header that nothing references are leaks: harmless, never fixed.
 */
import type { Storage } from '../../io/storage.js';
import { ENTRY_BYTES, TABLE_CHUNK_BYTES } from './constants.js';
import type { QedHeader } from './header.js';
import { entryAt, isUnallocated, isValidClusterOffset, isValidTableOffset, isZeroCluster, type QedGeometry } from './table.js';

export interface QedCheckReport {
  /** Corruptions left in the image. */
  corruptions: number;
  /** Invalid entries set to unallocated (fix only). */
  corruptionsFixed: number;
  /** Clusters nothing references. */
  leaks: number;
  /** Tables that could not be read. */
  checkErrors: number;
  /** Data clusters referenced by L2 tables. */
  allocatedClusters: number;
  /** Data clusters not right after the previous one of the same table. */
  fragmentedClusters: number;
  /** Guest clusters of the virtual size. */
  totalClusters: number;
  /** Invalid table entries found, as [host offset of the entry, value]: for messages. */
  invalid: Array<[number, number]>;
}

/** Marks clusters referenced; answers whether any was already marked. */
class ClusterBitmap {
  private readonly bits: Uint8Array;
  constructor(readonly clusters: number) {
    this.bits = new Uint8Array(Math.ceil(clusters / 8));
  }
  /** Mark `n` clusters from `first`; returns how many were already marked. */
  mark(first: number, n: number): number {
    let again = 0;
    for (let c = first; c < first + n; c++) {
      if (c >= this.clusters) continue;
      const m = 1 << (c & 7);
      if (this.bits[c >> 3]! & m) again++;
      this.bits[c >> 3]! |= m;
    }
    return again;
  }
  isMarked(c: number): boolean {
    return (this.bits[c >> 3]! & (1 << (c & 7))) !== 0;
  }
}

/**
 * Scan the image. `geometry.fileSize` must be the current file length (in
 * QEMU's terms). Reads tables a piece at a time, so memory is bounded by
 * one bit per cluster of the file.
 */
export async function checkQedImage(
  storage: Storage,
  header: QedHeader,
  geometry: QedGeometry,
  opts: { fix: boolean },
): Promise<QedCheckReport> {
  const g = geometry;
  const cs = g.clusterSize;
  const report: QedCheckReport = {
    corruptions: 0,
    corruptionsFixed: 0,
    leaks: 0,
    checkErrors: 0,
    allocatedClusters: 0,
    fragmentedClusters: 0,
    totalClusters: Math.ceil(header.imageSize / cs),
    invalid: [],
  };
  const used = new ClusterBitmap(g.fileSize / cs);
  report.corruptions += used.mark(header.l1TableOffset / cs, g.tableSize);

  const invalidEntry = async (entryOffset: number, value: number): Promise<void> => {
    report.invalid.push([entryOffset, value]);
    if (opts.fix) {
      await storage.write(new Uint8Array(ENTRY_BYTES), entryOffset);
      report.corruptionsFixed++;
    } else {
      report.corruptions++;
    }
  };

  let l2Failed = false;
  await forEachEntry(storage, header.l1TableOffset, g.tableEntries, async (l1Pos, l2Offset) => {
    if (isUnallocated(l2Offset)) return;
    if (!isValidTableOffset(g, l2Offset)) return invalidEntry(l1Pos, l2Offset);
    const again = used.mark(l2Offset / cs, g.tableSize);
    if (again > 0) {
      report.corruptions += again;
      return;
    }
    let last = 0;
    try {
      await forEachEntry(storage, l2Offset, g.tableEntries, async (l2Pos, offset) => {
        if (isUnallocated(offset) || isZeroCluster(offset)) return;
        report.allocatedClusters++;
        if (last !== 0 && last + cs !== offset) report.fragmentedClusters++;
        last = offset;
        if (!isValidClusterOffset(g, offset)) return invalidEntry(l2Pos, offset);
        report.corruptions += used.mark(offset / cs, 1);
      });
    } catch {
      report.checkErrors++;
      l2Failed = true;
    }
  });

  // Leaks only mean something once every table was read.
  if (!l2Failed) {
    for (let c = header.headerSize; c < used.clusters; c++) if (!used.isMarked(c)) report.leaks++;
  }
  return report;
}

/** Call `fn(hostOffsetOfEntry, value)` for each of `count` entries of the table at `offset`. */
async function forEachEntry(
  storage: Storage,
  offset: number,
  count: number,
  fn: (entryOffset: number, value: number) => Promise<void> | void,
): Promise<void> {
  const perChunk = TABLE_CHUNK_BYTES / ENTRY_BYTES;
  const buf = new Uint8Array(Math.min(count, perChunk) * ENTRY_BYTES);
  const view = new DataView(buf.buffer);
  for (let first = 0; first < count; first += perChunk) {
    const n = Math.min(perChunk, count - first);
    await storage.read(buf.subarray(0, n * ENTRY_BYTES), offset + first * ENTRY_BYTES);
    for (let i = 0; i < n; i++) {
      const v = entryAt(view, i);
      if (v !== 0) await fn(offset + (first + i) * ENTRY_BYTES, v);
    }
  }
}
