/**
 * The internal snapshot table (spec: Snapshots), read as QEMU's
 * qcow2_read_snapshots does at open, with its limits and messages.
 */
import type { SnapshotInfo } from '../../block/info.js';
import { ImageError } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import * as C from './constants.js';
import { cString } from './text.js';

export interface Snapshot {
  l1TableOffset: bigint;
  l1Size: number;
  id: string;
  name: string;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: bigint;
  vmStateSize: bigint;
  diskSize: bigint;
  /** -1n when the snapshot records no icount. */
  icount: bigint;
  extraDataSize: number;
  /** Extra data past the known 24 bytes, kept verbatim. */
  unknownExtra: Uint8Array;
}

/** Sequential reads through a window, so a table of many small entries costs few I/Os. */
class Cursor {
  private window = new Uint8Array(0);
  private windowStart = 0;
  constructor(
    private readonly storage: Storage,
    public pos: number,
  ) {}

  async take(len: number): Promise<Uint8Array> {
    const rel = this.pos - this.windowStart;
    if (rel < 0 || rel + len > this.window.length) {
      this.window = new Uint8Array(Math.max(len, 64 * 1024));
      this.windowStart = this.pos;
      await this.storage.read(this.window, this.pos);
    }
    const at = this.pos - this.windowStart;
    this.pos += len;
    return this.window.subarray(at, at + len);
  }
}

export async function readSnapshots(storage: Storage, offset: number, count: number, imageSize: number): Promise<Snapshot[]> {
  const out: Snapshot[] = [];
  const cur = new Cursor(storage, offset);
  for (let i = 0; i < count; i++) {
    cur.pos = cur.pos + ((8 - (cur.pos % 8)) % 8);
    const h = await cur.take(C.SNAPSHOT_HEADER_SIZE);
    const v = new DataView(h.buffer, h.byteOffset, h.byteLength);
    const idSize = v.getUint16(12, false);
    const nameSize = v.getUint16(14, false);
    const extraDataSize = v.getUint32(36, false);
    if (extraDataSize > C.MAX_SNAPSHOT_EXTRA_DATA) {
      throw new ImageError('invalid', `Too much extra metadata in snapshot table entry ${i}`);
    }
    const sn: Snapshot = {
      l1TableOffset: v.getBigUint64(0, false),
      l1Size: v.getUint32(8, false),
      id: '',
      name: '',
      dateSec: v.getUint32(16, false),
      dateNsec: v.getUint32(20, false),
      vmClockNsec: v.getBigUint64(24, false),
      vmStateSize: BigInt(v.getUint32(32, false)),
      diskSize: BigInt(imageSize),
      icount: -1n,
      extraDataSize,
      unknownExtra: new Uint8Array(0),
    };
    const known = Math.min(C.SNAPSHOT_EXTRA_KNOWN, extraDataSize);
    const extra = await cur.take(known);
    const ev = new DataView(extra.buffer, extra.byteOffset, extra.byteLength);
    if (known >= 8) sn.vmStateSize = ev.getBigUint64(0, false);
    if (known >= 16) sn.diskSize = ev.getBigUint64(8, false);
    if (known >= 24) sn.icount = ev.getBigUint64(16, false);
    if (sn.icount === 0xffff_ffff_ffff_ffffn) sn.icount = -1n;
    if (extraDataSize > known) sn.unknownExtra = (await cur.take(extraDataSize - known)).slice();
    sn.id = cString(await cur.take(idSize));
    sn.name = cString(await cur.take(nameSize));
    if (cur.pos - offset > C.MAX_SNAPSHOTS_SIZE) throw new ImageError('invalid', 'Snapshot table is too big');
    out.push(sn);
  }
  return out;
}

const toInt64 = (v: bigint): number => Number(BigInt.asIntN(64, v));

/** What qemu-img info prints for one snapshot. */
export function snapshotInfo(sn: Snapshot): SnapshotInfo {
  const info: SnapshotInfo = {
    id: sn.id,
    name: sn.name,
    'vm-state-size': toInt64(sn.vmStateSize),
    'date-sec': sn.dateSec,
    'date-nsec': sn.dateNsec,
    'vm-clock-sec': Number(sn.vmClockNsec / 1_000_000_000n),
    'vm-clock-nsec': Number(sn.vmClockNsec % 1_000_000_000n),
  };
  if (sn.icount !== -1n) info.icount = toInt64(sn.icount);
  return info;
}
