/**
 * compat=0.10 for a v3 image (qemu's qcow2_downgrade): v2 has no zero flag,
 * so every zero cluster of every L1 table (active and snapshots) is
 * expanded first. Without a backing file a plain zero cluster can simply be
 * unallocated; otherwise it gets a zeroed cluster. New clusters are counted
 * and zeroed before an L2 table names them, so a crash only leaks.
 */
import { ImageError } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import * as C from './constants.js';
import { serializeHeader, type Qcow2Header } from './header.js';
import { clusterType, Cluster, entryOffset } from './l2.js';
import { RefcountStore } from './refcounts.js';
import { readSnapshots } from './snapshot.js';

const TWO_32 = 0x1_0000_0000;

/** qemu's refusals for a downgrade of `h`, before anything is written. */
export async function checkDowngrade(storage: Storage, h: Qcow2Header): Promise<void> {
  if (h.refcountOrder !== 4) throw new ImageError('bad-argument', 'compat=0.10 requires refcount_bits=16');
  if (h.incompatibleFeatures & BigInt(C.INCOMPAT_DATA_FILE)) throw new ImageError('bad-argument', 'Cannot downgrade an image with a data file');
  const other = h.incompatibleFeatures & ~BigInt(C.INCOMPAT_DIRTY | C.INCOMPAT_DATA_FILE);
  if (other & ~BigInt(C.INCOMPAT_COMPRESSION)) {
    throw new ImageError('bad-argument', `Cannot downgrade an image with incompatible features 0x${other.toString(16)} set`);
  }
  // v2 knows only zlib: an image whose guest data holds no compressed cluster simply becomes zlib (as qemu does).
  if (h.compressionType !== C.COMPRESSION_ZLIB && (await hasCompressedClusters(storage, h))) {
    throw new ImageError('unsupported', 'Cannot downgrade an image with zstd compression type and existing compressed clusters');
  }
}

/** Whether the active L1 table maps any compressed cluster (qemu looks at the guest's block status only, not at snapshots). */
async function hasCompressedClusters(storage: Storage, h: Qcow2Header): Promise<boolean> {
  const cs = h.clusterSize;
  const l1 = new Uint8Array(h.l1Size * C.L1_ENTRY_SIZE);
  await storage.read(l1, h.l1TableOffset);
  const l1v = new DataView(l1.buffer);
  const l2 = new Uint8Array(cs);
  const v = new DataView(l2.buffer);
  for (let i = 0; i < h.l1Size; i++) {
    const l2Offset = entryOffset(l1v.getUint32(8 * i, false), l1v.getUint32(8 * i + 4, false));
    if (l2Offset === 0) continue;
    await storage.read(l2, l2Offset);
    for (let j = 0; j < cs / C.L2_ENTRY_SIZE; j++) {
      if (clusterType(v.getUint32(8 * j, false), v.getUint32(8 * j + 4, false), false, false) === Cluster.COMPRESSED) return true;
    }
  }
  return false;
}

/**
 * qemu's refusal of a downgrade when a snapshot's disk size is not the
 * image's (v2 readers assume they match) or its VM state needs more than
 * 32 bits: checked on the image as it is when the downgrade starts.
 */
export async function checkSnapshotsForDowngrade(storage: Storage, h: Qcow2Header): Promise<void> {
  if (h.nbSnapshots === 0) return;
  for (const sn of await readSnapshots(storage, h.snapshotsOffset, h.nbSnapshots, h.size)) {
    if (sn.vmStateSize > 0xffff_ffffn || sn.diskSize !== BigInt(h.size)) {
      throw new ImageError('unsupported', 'Internal snapshots prevent downgrade of image');
    }
  }
}

/** Expand the zero clusters of every L1 table, then rewrite the header as v2. */
export async function downgradeQcow2(storage: Storage, h: Qcow2Header, onProgress?: (done: number, total: number) => void): Promise<void> {
  const cs = h.clusterSize;
  let tableOffset = h.refcountTableOffset;
  let tableClusters = h.refcountTableClusters;
  const store = await RefcountStore.load({
    storage,
    clusterBits: h.clusterBits,
    refcountOrder: h.refcountOrder,
    tableOffset,
    tableClusters,
    async onTableMoved(offset, clusters) {
      tableOffset = offset;
      tableClusters = clusters;
      await storage.write(serializeHeader({ ...h, refcountTableOffset: offset, refcountTableClusters: clusters }), 0);
      await storage.flush();
    },
  });
  const l1s: Array<{ offset: number; size: number }> = [{ offset: h.l1TableOffset, size: h.l1Size }];
  for (const sn of await readSnapshots(storage, h.snapshotsOffset, h.nbSnapshots, h.size)) {
    l1s.push({ offset: Number(sn.l1TableOffset), size: sn.l1Size });
  }
  const backed = h.backingFile !== undefined;
  const entries = cs / C.L2_ENTRY_SIZE;
  const zeros = new Uint8Array(cs);
  const l1Total = l1s.reduce((n, l) => n + l.size, 0);
  let l1Done = 0;
  for (const l1 of l1s) {
    const l1Bytes = new Uint8Array(l1.size * C.L1_ENTRY_SIZE);
    await storage.read(l1Bytes, l1.offset);
    const l1v = new DataView(l1Bytes.buffer);
    for (let i = 0; i < l1.size; i++, l1Done++) {
      // Work done so far, never 0 (qemu's meter always prints 0 and 100, so those come from the caller).
      if (l1Done > 0) onProgress?.(l1Done, l1Total);
      const l2Offset = entryOffset(l1v.getUint32(8 * i, false), l1v.getUint32(8 * i + 4, false));
      if (l2Offset === 0) continue;
      const l2 = new Uint8Array(cs);
      await storage.read(l2, l2Offset);
      const v = new DataView(l2.buffer);
      const l2Refcount = await store.get(l2Offset / cs);
      let changed = false;
      for (let j = 0; j < entries; j++) {
        const hi = v.getUint32(8 * j, false);
        const lo = v.getUint32(8 * j + 4, false);
        const type = clusterType(hi, lo, false, false);
        if (type !== Cluster.ZERO_PLAIN && type !== Cluster.ZERO_ALLOC) continue;
        changed = true;
        let offset: number;
        if (type === Cluster.ZERO_PLAIN) {
          if (!backed) {
            v.setUint32(8 * j, 0, false);
            v.setUint32(8 * j + 4, 0, false);
            continue;
          }
          offset = await store.allocate(1);
          if (l2Refcount > 1) await store.update(offset, cs, l2Refcount - 1);
          await store.flushBlocks();
        } else {
          offset = entryOffset(hi, lo);
        }
        await storage.write(zeros, offset);
        const copied = l2Refcount === 1 ? C.OFLAG_COPIED_HI : 0;
        v.setUint32(8 * j, (Math.floor(offset / TWO_32) | copied) >>> 0, false);
        v.setUint32(8 * j + 4, offset % TWO_32, false);
      }
      if (!changed) continue;
      // The zeroed clusters and their refcounts are durable before the table names them.
      await storage.flush();
      await storage.write(l2, l2Offset);
      await storage.flush();
    }
  }
  onProgress?.(1, 1);
  const v2: Qcow2Header = {
    ...h,
    refcountTableOffset: tableOffset,
    refcountTableClusters: tableClusters,
    version: 2,
    compressionType: C.COMPRESSION_ZLIB,
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    headerLength: C.HEADER_V2_LENGTH,
    unknownFields: new Uint8Array(0),
    extensions: { ...h.extensions, featureTable: undefined },
  };
  await storage.write(serializeHeader(v2), 0);
  await storage.flush();
}
