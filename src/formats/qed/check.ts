/**
 * QED consistency scan (QEMU's qed_check): every L1 and L2 entry must be
 * unallocated, zero (L2 only) or a valid offset, and no cluster may be
 * referenced twice. With `fix`, invalid entries are set to unallocated on
 * the storage (references twice over are counted, not fixed). Clusters past
 * the header that nothing references are leaks: harmless, never fixed.
 */
import { ImageError } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import { ENTRY_BYTES, TABLE_CHUNK_BYTES } from './constants.js';
import { parseHeader, type QedHeader } from './header.js';
import { checkExitCode, emptyCounts, type CheckCounts, type CheckResult, type RepairMode } from '../../block/check.js';
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

/** Bits per page of the bitmap: small, so scattered references cannot amplify memory much. */
const PAGE_BITS = 4096;

/** Default cap on the bitmap's memory (1 GiB marks 2^33 clusters). */
export const DEFAULT_QED_CHECK_MEMORY = 1 << 30;

/** The bitmap would pass its memory cap (QEMU: allocating used_clusters failed, ENOMEM). */
export class QedCheckMemoryError extends ImageError {
  constructor() {
    super('io', 'Cannot allocate memory', { errno: 'ENOMEM' });
  }
}

/**
 * Marks clusters referenced; answers whether any was already marked.
 * Pages are allocated on first mark, so a file sparse-extended to tens of
 * TiB costs memory only for the clusters its tables really reference.
 */
class ClusterBitmap {
  private readonly pages: (Uint8Array | undefined)[] = [];
  private used = 0;
  /** Distinct clusters marked. */
  marked = 0;
  constructor(
    readonly clusters: number,
    private readonly memoryLimit: number,
  ) {}
  /** Mark `n` clusters from `first`; returns how many were already marked. */
  mark(first: number, n: number): number {
    let again = 0;
    for (let c = first; c < Math.min(first + n, this.clusters); c++) {
      const p = Math.floor(c / PAGE_BITS);
      let page = this.pages[p];
      if (!page) {
        this.used += PAGE_BITS / 8;
        if (this.used > this.memoryLimit) throw new QedCheckMemoryError();
        page = this.pages[p] = new Uint8Array(PAGE_BITS / 8);
      }
      const bit = c - p * PAGE_BITS;
      const m = 1 << (bit & 7);
      if (page[bit >> 3]! & m) again++;
      else this.marked++;
      page[bit >> 3]! |= m;
    }
    return again;
  }
  isMarked(c: number): boolean {
    const p = Math.floor(c / PAGE_BITS);
    const page = this.pages[p];
    const bit = c - p * PAGE_BITS;
    return page !== undefined && (page[bit >> 3]! & (1 << (bit & 7))) !== 0;
  }
}

/**
 * Scan the image. `geometry.fileSize` must be the current file length (in
 * QEMU's terms). Reads tables a piece at a time; memory is one bit per
 * referenced cluster (in pages), capped by `memoryLimit`: past it the scan
 * throws QedCheckMemoryError.
 */
export async function checkQedImage(
  storage: Storage,
  header: QedHeader,
  geometry: QedGeometry,
  opts: { fix: boolean; memoryLimit?: number },
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
  const used = new ClusterBitmap(g.fileSize / cs, opts.memoryLimit ?? DEFAULT_QED_CHECK_MEMORY);
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
    } catch (e) {
      if (e instanceof QedCheckMemoryError) throw e;
      report.checkErrors++;
      l2Failed = true;
    }
  });

  // Leaks only mean something once every table was read.
  // Counted, not walked: a sparse file's holes are billions of clusters.
  if (!l2Failed) {
    let below = 0;
    for (let c = 0; c < Math.min(header.headerSize, used.clusters); c++) if (used.isMarked(c)) below++;
    report.leaks = Math.max(0, Math.ceil(used.clusters) - header.headerSize) - (used.marked - below);
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

/**
 * qemu-img check [-r] on a QED image file: any repair mode fixes invalid
 * entries (qemu's bdrv_qed_co_check); a repair is followed by a plain second
 * pass, whose counts are reported.
 */
export async function checkQedFile(storage: Storage, repair: RepairMode): Promise<CheckResult> {
  const scan = async (doFix: boolean): Promise<CheckCounts> => {
    const bytes = new Uint8Array(4096);
    await storage.read(bytes, 0);
    const { header, geometry } = parseHeader(bytes, await storage.size());
    const q = await checkQedImage(storage, header, geometry, { fix: doFix });
    return {
      ...emptyCounts(),
      corruptions: q.corruptions,
      leaks: q.leaks,
      checkErrors: q.checkErrors,
      corruptionsFixed: q.corruptionsFixed,
      totalClusters: q.totalClusters,
      allocatedClusters: q.allocatedClusters,
      fragmentedClusters: q.fragmentedClusters,
    };
  };
  const first = await scan(repair !== 'none');
  if (first.corruptionsFixed === 0) return { counts: first, messages: [], errors: [], exitCode: checkExitCode(first) };
  const second = await scan(false);
  second.corruptionsFixed = first.corruptionsFixed;
  return { counts: second, repaired: { leaksFixed: 0, corruptionsFixed: first.corruptionsFixed }, messages: [], errors: [], exitCode: checkExitCode(second) };
}
