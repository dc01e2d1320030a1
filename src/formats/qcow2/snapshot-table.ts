/** Writing the snapshot table (spec: Snapshots) and finding entries in it as QEMU does. */
import * as C from './constants.js';
import type { Snapshot } from './snapshot.js';

const enc = new TextEncoder();

/**
 * The table bytes: each entry 8-byte aligned, with the 24 bytes of extra
 * data QEMU writes (large VM state size, disk size, icount) followed by any
 * extra data a newer writer left. Unpadded at the end, as QEMU sizes it.
 */
export function serializeSnapshots(list: readonly Snapshot[]): Uint8Array {
  const parts = list.map((sn) => ({ sn, id: enc.encode(sn.id), name: enc.encode(sn.name) }));
  let size = 0;
  for (const p of parts) size = align8(size) + C.SNAPSHOT_HEADER_SIZE + C.SNAPSHOT_EXTRA_KNOWN + p.sn.unknownExtra.length + p.id.length + p.name.length;
  const out = new Uint8Array(size);
  const v = new DataView(out.buffer);
  let pos = 0;
  for (const { sn, id, name } of parts) {
    pos = align8(pos);
    const extra = C.SNAPSHOT_EXTRA_KNOWN + sn.unknownExtra.length;
    v.setBigUint64(pos, sn.l1TableOffset, false);
    v.setUint32(pos + 8, sn.l1Size, false);
    v.setUint16(pos + 12, id.length, false);
    v.setUint16(pos + 14, name.length, false);
    v.setUint32(pos + 16, sn.dateSec, false);
    v.setUint32(pos + 20, sn.dateNsec, false);
    v.setBigUint64(pos + 24, sn.vmClockNsec, false);
    // The 32-bit field keeps the low bits; the extra data has the whole size.
    v.setUint32(pos + 32, Number(sn.vmStateSize & 0xffff_ffffn), false);
    v.setUint32(pos + 36, extra, false);
    pos += C.SNAPSHOT_HEADER_SIZE;
    v.setBigUint64(pos, sn.vmStateSize, false);
    v.setBigUint64(pos + 8, sn.diskSize, false);
    v.setBigUint64(pos + 16, BigInt.asUintN(64, sn.icount), false);
    pos += C.SNAPSHOT_EXTRA_KNOWN;
    out.set(sn.unknownExtra, pos);
    pos += sn.unknownExtra.length;
    out.set(id, pos);
    pos += id.length;
    out.set(name, pos);
    pos += name.length;
  }
  return out;
}

const align8 = (n: number): number => Math.ceil(n / 8) * 8;

/** Bytes the table of these snapshots occupies on disk (QEMU's snapshots_size). */
export const snapshotTableSize = (list: readonly Snapshot[]): number => serializeSnapshots(list).length;

/** find_new_snapshot_id: one more than the largest id read as a number (strtoul: non-numbers count 0). */
export function nextSnapshotId(list: readonly Snapshot[]): string {
  let max = 0;
  for (const sn of list) {
    const m = /^\s*\+?(\d+)/.exec(sn.id);
    const n = m ? Number(m[1]) : 0;
    if (n > max) max = n;
  }
  return String(max + 1);
}

/** find_snapshot_by_id_and_name: both given must match; either alone matches its field. */
export function findSnapshot(list: readonly Snapshot[], id: string | undefined, name: string | undefined): number {
  if (id === undefined && name === undefined) return -1;
  return list.findIndex((sn) => (id === undefined || sn.id === id) && (name === undefined || sn.name === name));
}

/** find_snapshot_by_id_or_name: an id match anywhere first, then a name match. */
export function findSnapshotByIdOrName(list: readonly Snapshot[], idOrName: string): number {
  const byId = findSnapshot(list, idOrName, undefined);
  return byId >= 0 ? byId : findSnapshot(list, undefined, idOrName);
}
