/**
 * Emptying a qcow2 image after a commit (qemu's qcow2_make_empty): a v3
 * image without snapshots, bitmaps, LUKS header or data file is reset to
 * header, refcount table, one refcount block and a zeroed L1 table, and the
 * file cut after them; the dirty bit covers the steps in between, so a crash
 * leaves an image that the next writable open repairs.
 */
import type { Storage } from '../../io/storage.js';
import * as C from './constants.js';
import type { Qcow2Header } from './header.js';
import { setEntryAt } from './refcounts.js';

/** Whether the image can be reset in place (else every cluster is discarded). */
export function canResetCompletely(h: Qcow2Header, snapshots: number): boolean {
  const cs = h.clusterSize;
  const l1Clusters = Math.ceil((h.l1Size * C.L1_ENTRY_SIZE) / cs);
  const refblockEntries = (cs * 8) / 2 ** h.refcountOrder;
  const inc = Number(h.incompatibleFeatures);
  return (
    h.version >= 3 &&
    snapshots === 0 &&
    h.extensions.bitmaps === undefined &&
    3 + l1Clusters <= refblockEntries &&
    h.cryptMethod !== C.CRYPT_LUKS &&
    (inc & C.INCOMPAT_DATA_FILE) === 0
  );
}

/**
 * Reset the image to an empty one with the same header (qemu's
 * make_completely_empty). `setDirty` sets or clears the dirty bit, synced.
 * The header object is updated to the new table offsets.
 */
export async function resetCompletely(storage: Storage, h: Qcow2Header, setDirty: (on: boolean) => Promise<void>): Promise<void> {
  const cs = h.clusterSize;
  const l1Clusters = Math.ceil((h.l1Size * C.L1_ENTRY_SIZE) / cs);
  // The old L1 table first: losing what it maps is the point.
  await writeZeros(storage, h.l1TableOffset, l1Clusters * cs);
  await setDirty(true);
  // Clusters 1 .. 2 + l1Clusters: refcount table, refcount block, L1 table, all zero first.
  await writeZeros(storage, cs, (2 + l1Clusters) * cs);
  const fields = new Uint8Array(20);
  const v = new DataView(fields.buffer);
  v.setBigUint64(0, BigInt(3 * cs), false);
  v.setBigUint64(8, BigInt(cs), false);
  v.setUint32(16, 1, false);
  await storage.write(fields, 40);
  await storage.flush();
  h.l1TableOffset = 3 * cs;
  h.refcountTableOffset = cs;
  h.refcountTableClusters = 1;
  const entry = new Uint8Array(8);
  new DataView(entry.buffer).setBigUint64(0, BigInt(2 * cs), false);
  await storage.write(entry, cs);
  await storage.flush();
  const block = new Uint8Array(cs);
  for (let c = 0; c < 3 + l1Clusters; c++) setEntryAt(block, c, h.refcountOrder, 1);
  await storage.write(block, 2 * cs);
  await storage.flush();
  await setDirty(false);
  await storage.truncate((3 + l1Clusters) * cs);
}

async function writeZeros(storage: Storage, offset: number, length: number): Promise<void> {
  if (storage.writeZeroes) return storage.writeZeroes(offset, length);
  const chunk = new Uint8Array(Math.min(length, 1 << 20));
  for (let pos = 0; pos < length; pos += chunk.length) await storage.write(chunk.subarray(0, Math.min(chunk.length, length - pos)), offset + pos);
}
