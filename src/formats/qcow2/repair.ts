/**
 * Rebuilding the refcount structure from the computed refcounts (QEMU
 * 7.2's rebuild_refcount_structure): refblocks are slices of the
 * in-memory array, allocated first-fit in clusters nothing references,
 * then a new refcount table; the header is switched last, so a crash
 * leaves the old structure in place.
 */
import { isImageError } from '../../errors.js';
import * as C from './constants.js';
import { CheckFailure, DiskRefcounts, type CheckState } from './check-refs.js';

/** alloc_clusters_imrt: first fit from `from.v`, growing the array past its end if needed. */
function allocClusters(st: CheckState, count: number, from: { v: number }): number {
  const refs = st.refs;
  let cluster = from.v;
  let free = 0;
  let firstGap = true;
  for (; cluster < refs.size && free < count; cluster++) {
    if (refs.get(cluster) === 0) {
      free++;
      if (firstGap) {
        from.v = cluster;
        firstGap = false;
      }
    } else {
      free = 0;
    }
  }
  if (free < count) refs.resize(cluster + count - free);
  cluster -= free;
  for (let i = 0; i < count; i++) refs.set(cluster + i, 1);
  return cluster * st.clusterSize;
}

/**
 * A failed overlap check or write ends the rebuild with QEMU's error line;
 * a storage failure (a full disk) becomes the check's failure with its
 * strerror text, as QEMU's -errno does.
 */
async function guarded(st: CheckState, what: string, f: () => Promise<void>): Promise<void> {
  try {
    await f();
  } catch (e) {
    const failure = e instanceof CheckFailure ? e : isImageError(e, 'io') ? new CheckFailure(e.message) : undefined;
    if (!failure) throw e;
    st.errors.push(`${what}: ${failure.strerror}`);
    throw failure;
  }
}

export async function rebuildRefcountStructure(st: CheckState): Promise<void> {
  const cs = st.clusterSize;
  const per = st.perBlock;
  const table: number[] = [];
  await st.disk.flush();

  /**
   * rebuild_refcounts_write_refblocks: give every refblock covering a used
   * cluster in [first, end) a home and write it. Returns whether the
   * table had to grow.
   */
  const writeRefblocks = async (first: number, end: number): Promise<boolean> => {
    const from = { v: 0 };
    let grown = false;
    for (let cluster = first; cluster < end; cluster++) {
      // Holes of a sparse file are skipped a page at a time, not walked.
      cluster = st.refs.nextPossiblyUsed(cluster);
      if (cluster >= end) break;
      if (st.refs.get(cluster) === 0) continue;
      const bi = Math.floor(cluster / per);
      const start = bi * per;
      let offset = table[bi] ?? 0;
      if (offset === 0) {
        // Never inside a refblock that is already written.
        if (from.v < start) from.v = start;
        offset = allocClusters(st, 1, from);
        const idx = offset / cs;
        if (idx >= end) end = idx + 1;
        if (table.length <= bi) {
          const entries = Math.ceil(((bi + 1) * C.REFTABLE_ENTRY_SIZE) / cs) * (cs / C.REFTABLE_ENTRY_SIZE);
          while (table.length < entries) table.push(0);
          grown = true;
        }
        table[bi] = offset;
      }
      await guarded(st, 'ERROR writing refblock', async () => {
        await st.overlapCheck(offset, cs);
        await st.storage.write(st.refs.encodeBlock(bi, cs, per), offset);
      });
      cluster = start + per - 1;
    }
    return grown;
  };

  await writeRefblocks(0, st.refs.size);
  let tableOffset = 0;
  let tableClusters = 0;
  for (;;) {
    tableClusters = Math.ceil((table.length * C.REFTABLE_ENTRY_SIZE) / cs);
    tableOffset = allocClusters(st, tableClusters, { v: 0 });
    const start = tableOffset / cs;
    const end = start + tableClusters;
    const changed = await writeRefblocks(start, end);
    if (!changed) break;
    for (let i = start; i < end; i++) st.refs.set(i, 0);
  }
  if (tableClusters * cs > C.MAX_REFTABLE_SIZE) {
    st.errors.push('ERROR allocating reftable: File too large');
    st.res.checkErrors++;
    throw new CheckFailure('File too large');
  }

  const bytes = new Uint8Array(table.length * C.REFTABLE_ENTRY_SIZE);
  const v = new DataView(bytes.buffer);
  table.forEach((off, i) => {
    v.setUint32(8 * i, Math.floor(off / 0x1_0000_0000), false);
    v.setUint32(8 * i + 4, off >>> 0, false);
  });
  await guarded(st, 'ERROR writing reftable', async () => {
    await st.overlapCheck(tableOffset, bytes.length);
    await st.storage.write(bytes, tableOffset);
    await st.storage.flush();
  });
  // Switch the header to the new table: offset (u64) and clusters (u32) at byte 48.
  const ptr = new Uint8Array(12);
  const pv = new DataView(ptr.buffer);
  pv.setUint32(0, Math.floor(tableOffset / 0x1_0000_0000), false);
  pv.setUint32(4, tableOffset >>> 0, false);
  pv.setUint32(8, tableClusters, false);
  await guarded(st, 'ERROR setting reftable', async () => {
    await st.storage.write(ptr, 48);
    await st.storage.flush();
  });

  st.header.refcountTableOffset = tableOffset;
  st.header.refcountTableClusters = tableClusters;
  st.fileSize = await st.storage.size();
  st.disk = new DiskRefcounts(st, bytes);
}
