/**
 * qcow2 internal snapshots: create, delete and apply (qcow2_snapshot_*),
 * each ordered so that a crash at any point loses no data and leaves no
 * cluster shared that a table still marks as writable in place: at worst
 * clusters leak, or a COPIED flag is clear where it could be set.
 */
import { SnapshotError, type SnapshotOps } from '../../block/snapshot.js';
import { isImageError } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import * as C from './constants.js';
import { readHeader } from './header.js';
import { readSnapshots, snapshotInfo, type Snapshot } from './snapshot.js';
import { SnapshotSession } from './snapshot-session.js';
import { findSnapshot, findSnapshotByIdOrName, nextSnapshotId } from './snapshot-table.js';

async function list(storage: Storage) {
  const h = await readHeader(storage);
  const size = h.size - (h.size % C.SECTOR_SIZE);
  return (await readSnapshots(storage, h.snapshotsOffset, h.nbSnapshots, size)).map(snapshotInfo);
}

async function create(storage: Storage, name: string, now: { sec: number; nsec: number }) {
  const s = await SnapshotSession.open(storage);
  const h = s.header;
  // qemu refuses internal snapshots of images with an external data file.
  if (s.hasDataFile) throw new SnapshotError('unsupported', '-95 (Operation not supported)');
  if (s.snapshots.length >= C.MAX_SNAPSHOTS) throw new SnapshotError('invalid', '-27 (File too large)');
  const sn: Snapshot = {
    l1TableOffset: 0n,
    l1Size: h.l1Size,
    id: nextSnapshotId(s.snapshots),
    name,
    dateSec: now.sec,
    dateNsec: now.nsec,
    vmClockNsec: 0n,
    vmStateSize: 0n,
    diskSize: BigInt(h.size - (h.size % C.SECTOR_SIZE)),
    // What qemu-img records: no replay, so an instruction count of 0.
    icount: 0n,
    extraDataSize: C.SNAPSHOT_EXTRA_KNOWN,
    unknownExtra: new Uint8Array(0),
  };
  // Everything that can fail (a refcount that would overflow) happens in memory first.
  try {
    sn.l1TableOffset = BigInt(await s.allocate(h.l1Size * C.L1_ENTRY_SIZE));
    await s.addReferences(s.l1, 1);
  } catch (e) {
    if (isImageError(e, 'invalid') && /Refcount overflow/.test(e.message)) throw new SnapshotError('invalid', '-22 (Invalid argument)', { cause: e });
    throw e;
  }
  // The snapshot's L1 table is the active one as it stands.
  if (h.l1Size > 0) await storage.write(SnapshotSession.l1Bytes(s.l1), Number(sn.l1TableOffset));
  // The active tables stop claiming sole ownership before the clusters become shared.
  await s.clearL2Flags(s.l1);
  s.l1 = SnapshotSession.withoutCopied(s.l1);
  await s.writeActiveL1();
  await storage.flush();
  // Refcounts up and durable before any table refers to the snapshot.
  await s.sync();
  await s.replaceTable([...s.snapshots, sn]);
  return snapshotInfo(sn);
}

async function remove(storage: Storage, name: string) {
  const s = await SnapshotSession.open(storage);
  // qemu-img snapshot -d looks the snapshot up by name only.
  const i = findSnapshot(s.snapshots, undefined, name);
  if (i < 0) throw new SnapshotError('not-found', 'snapshot not found');
  const sn = s.snapshots[i]!;
  const snL1 = await s.readL1(Number(sn.l1TableOffset), sn.l1Size);
  // Out of the table first: from then on a crash only leaks its clusters.
  await s.replaceTable(s.snapshots.filter((_, j) => j !== i));
  await s.addReferences(snL1, -1);
  if (sn.l1Size > 0) await s.refs.update(Number(sn.l1TableOffset), sn.l1Size * C.L1_ENTRY_SIZE, -1);
  await s.sync();
  await s.restoreCopiedFlags();
}

async function apply(storage: Storage, idOrName: string) {
  const s = await SnapshotSession.open(storage);
  const h = s.header;
  const i = findSnapshotByIdOrName(s.snapshots, idOrName);
  if (i < 0) throw new SnapshotError('not-found', 'Failed to load snapshot: No such file or directory');
  const sn = s.snapshots[i]!;
  const snL1 = await s.readL1(Number(sn.l1TableOffset), sn.l1Size);
  const oldL1 = s.l1;
  const oldL1Offset = h.l1TableOffset;
  const grow = sn.l1Size > h.l1Size;
  const newL1Offset = grow ? await s.allocate(sn.l1Size * C.L1_ENTRY_SIZE) : h.l1TableOffset;
  // Net changes per cluster: increases before the switch, decreases after it. A
  // cluster both tables use keeps its count, so none passes the refcount maximum.
  const changes = new Map<number, number>();
  await s.collectReferences(snL1, 1, changes);
  // qemu takes the snapshot's references before dropping the old ones, and
  // refuses when that passes the refcount maximum; nothing is written then.
  const max = h.refcountOrder >= 6 ? Number.MAX_SAFE_INTEGER : 2 ** 2 ** h.refcountOrder - 1;
  for (const [c, d] of changes) {
    if ((await s.refs.get(c)) + d > max) throw new SnapshotError('invalid', 'Failed to load snapshot: Invalid argument');
  }
  await s.collectReferences(oldL1, -1, changes);
  if (grow && oldL1.length > 0) for (let c = oldL1Offset / s.clusterSize, n = Math.ceil((oldL1.length * C.L1_ENTRY_SIZE) / s.clusterSize); n > 0; n--, c++) changes.set(c, (changes.get(c) ?? 0) - 1);
  await s.applyChanges(changes, 1);
  // The snapshot's clusters become shared with the active image: no table may mark them writable in place.
  await s.clearL2Flags(snL1);
  await storage.flush();
  await s.sync();

  const next = SnapshotSession.withoutCopied(snL1);
  while (next.length < Math.max(h.l1Size, sn.l1Size)) next.push(0n);
  s.l1 = next;
  const size = Number(sn.diskSize);
  if (grow) {
    await storage.write(SnapshotSession.l1Bytes(next), newL1Offset);
    await storage.flush();
    await writeL1Location(storage, next.length, newL1Offset, size);
    h.l1Size = next.length;
    h.l1TableOffset = newL1Offset;
  } else {
    await s.writeActiveL1();
    await storage.flush();
    if (size !== h.size) await writeSize(storage, size);
  }
  h.size = size;
  // The old active tables' references go once nothing refers to them.
  await s.applyChanges(changes, -1);
  await s.sync();
  await s.restoreCopiedFlags();
}

/** Header: the virtual size (qemu resizes the image to the snapshot's). */
async function writeSize(storage: Storage, size: number): Promise<void> {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(size), false);
  await storage.write(b, 24);
  await storage.flush();
}

/** Header: size, L1 size and L1 offset in one write (bytes 24..47). */
async function writeL1Location(storage: Storage, l1Size: number, l1Offset: number, size: number): Promise<void> {
  const b = new Uint8Array(24);
  await storage.read(b, 24);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, BigInt(size), false);
  v.setUint32(12, l1Size, false);
  v.setBigUint64(16, BigInt(l1Offset), false);
  await storage.write(b, 24);
  await storage.flush();
}

export const qcow2SnapshotOps: SnapshotOps = { list, create, delete: remove, apply };
