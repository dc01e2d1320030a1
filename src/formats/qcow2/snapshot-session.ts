/**
 * One snapshot operation on a qcow2 file: the header, the active L1 table,
 * the snapshot table and a writable refcount store, with the table walks
 * that snapshots need (reference counting through L1 and L2 tables, and
 * the OFLAG_COPIED flags that say a cluster may be written in place).
 */
import { ImageError } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import { repairDirty } from './check.js';
import * as C from './constants.js';
import { readHeader, type Qcow2Header } from './header.js';
import { loadRefcountStore } from './refcount-open.js';
import type { RefcountStore } from './refcounts.js';
import { readSnapshots, type Snapshot } from './snapshot.js';
import { serializeSnapshots } from './snapshot-table.js';

const OFFSET_MASK = 0x00ff_ffff_ffff_fe00n;
const COPIED = 1n << 63n;
const COMPRESSED = 1n << 62n;

/** A host range one table entry holds a reference to. */
interface HostRef {
  offset: number;
  length: number;
  compressed: boolean;
}

export class SnapshotSession {
  readonly clusterSize: number;
  private readonly l2EntryBytes: number;

  private constructor(
    readonly storage: Storage,
    readonly header: Qcow2Header,
    readonly refs: RefcountStore,
    /** The active L1 table's entries. */
    public l1: bigint[],
    readonly snapshots: Snapshot[],
  ) {
    this.clusterSize = header.clusterSize;
    this.l2EntryBytes = Number(header.incompatibleFeatures) & C.INCOMPAT_EXTL2 ? C.L2_ENTRY_SIZE_EXTENDED : C.L2_ENTRY_SIZE;
  }

  static async open(storage: Storage): Promise<SnapshotSession> {
    let header = await readHeader(storage, { writable: true });
    if (Number(header.incompatibleFeatures) & C.INCOMPAT_DIRTY) {
      // Lazy refcounts left dirty: repaired first, as any writable open does.
      await repairDirty(storage);
      header = await readHeader(storage, { writable: true });
    }
    const virtualSize = header.size - (header.size % C.SECTOR_SIZE);
    const snapshots = await readSnapshots(storage, header.snapshotsOffset, header.nbSnapshots, virtualSize);
    const refs = await loadRefcountStore(storage, header);
    const session = new SnapshotSession(storage, header, refs, [], snapshots);
    session.l1 = await session.readL1(header.l1TableOffset, header.l1Size);
    return session;
  }

  get hasDataFile(): boolean {
    return (Number(this.header.incompatibleFeatures) & C.INCOMPAT_DATA_FILE) !== 0;
  }

  async readL1(offset: number, entries: number): Promise<bigint[]> {
    const b = new Uint8Array(entries * C.L1_ENTRY_SIZE);
    if (b.length > 0) await this.storage.read(b, offset);
    const v = new DataView(b.buffer);
    return Array.from({ length: entries }, (_, i) => v.getBigUint64(8 * i, false));
  }

  static l1Bytes(entries: readonly bigint[]): Uint8Array {
    const b = new Uint8Array(entries.length * C.L1_ENTRY_SIZE);
    const v = new DataView(b.buffer);
    entries.forEach((e, i) => v.setBigUint64(8 * i, e, false));
    return b;
  }

  /** The L2 tables an L1 table references (host offsets). */
  l2Tables(l1: readonly bigint[]): number[] {
    const out: number[] = [];
    for (const e of l1) {
      const off = Number(e & OFFSET_MASK);
      if (off !== 0) out.push(off);
    }
    return out;
  }

  private async readL2(offset: number): Promise<{ bytes: Uint8Array; view: DataView }> {
    const bytes = new Uint8Array(this.clusterSize);
    await this.storage.read(bytes, offset);
    return { bytes, view: new DataView(bytes.buffer) };
  }

  /** The host range an L2 entry references, if any (refcounted as qemu counts it). */
  private hostRef(e: bigint): HostRef | undefined {
    if (e & COMPRESSED) {
      const shift = BigInt(62 - (this.header.clusterBits - 8));
      const offset = e & ((1n << shift) - 1n);
      const sectors = ((e >> shift) & ((1n << BigInt(this.header.clusterBits - 8)) - 1n)) + 1n;
      return { offset: Number(offset), length: Number(sectors * 512n - (offset & 511n)), compressed: true };
    }
    const offset = Number(e & OFFSET_MASK);
    return offset === 0 ? undefined : { offset, length: this.clusterSize, compressed: false };
  }

  /**
   * Add `delta` to the refcount of every cluster an L1 table reaches: its
   * L2 tables and, through each of them, the data (qemu's
   * update_snapshot_refcount). In memory until the next sync().
   */
  async addReferences(l1: readonly bigint[], delta: number): Promise<void> {
    for (const l2 of this.l2Tables(l1)) {
      await this.refs.update(l2, this.clusterSize, delta);
      const { view } = await this.readL2(l2);
      for (let p = 0; p < this.clusterSize; p += this.l2EntryBytes) {
        const ref = this.hostRef(view.getBigUint64(p, false));
        if (ref) await this.refs.update(ref.offset, ref.length, delta);
      }
    }
  }

  /**
   * The refcount changes `delta` references through an L1 table make, per
   * host cluster, added into `into` (nothing is changed).
   */
  async collectReferences(l1: readonly bigint[], delta: number, into: Map<number, number>): Promise<void> {
    const add = (offset: number, length: number) => {
      const first = Math.floor(offset / this.clusterSize);
      const last = Math.floor((offset + length - 1) / this.clusterSize);
      for (let c = first; c <= last; c++) into.set(c, (into.get(c) ?? 0) + delta);
    };
    for (const l2 of this.l2Tables(l1)) {
      add(l2, this.clusterSize);
      const { view } = await this.readL2(l2);
      for (let p = 0; p < this.clusterSize; p += this.l2EntryBytes) {
        const ref = this.hostRef(view.getBigUint64(p, false));
        if (ref) add(ref.offset, ref.length);
      }
    }
  }

  /** Apply the increases (`sign` 1) or the decreases (`sign` -1) of a change set, in memory. */
  async applyChanges(changes: ReadonlyMap<number, number>, sign: 1 | -1): Promise<void> {
    for (const [cluster, d] of changes) {
      if (d * sign > 0) await this.refs.update(cluster * this.clusterSize, 1, d);
    }
  }

  /**
   * Rewrite the COPIED flags of the L2 tables an L1 table reaches: set
   * where `copied` says so for the data's refcount, clear elsewhere.
   * Only changed tables are written; no sync.
   */
  private async setL2Flags(l1: readonly bigint[], copied: (refcount: number) => boolean): Promise<void> {
    for (const l2 of new Set(this.l2Tables(l1))) {
      const { bytes, view } = await this.readL2(l2);
      let changed = false;
      for (let p = 0; p < this.clusterSize; p += this.l2EntryBytes) {
        const e = view.getBigUint64(p, false);
        const ref = this.hostRef(e);
        const want = ref !== undefined && !ref.compressed && copied(await this.refs.get(ref.offset / this.clusterSize));
        const next = want ? e | COPIED : e & ~COPIED;
        if (next !== e) {
          view.setBigUint64(p, next, false);
          changed = true;
        }
      }
      if (changed) await this.storage.write(bytes, l2);
    }
  }

  /**
   * Clear every COPIED flag in the L2 tables of `l1`: the safe direction
   * (a cluster that could be written in place is copied instead), so it may
   * precede the refcount increase that makes the clusters shared.
   */
  clearL2Flags(l1: readonly bigint[]): Promise<void> {
    return this.setL2Flags(l1, () => false);
  }

  /** L1 entries with COPIED cleared (the safe direction). */
  static withoutCopied(l1: readonly bigint[]): bigint[] {
    return l1.map((e) => e & ~COPIED);
  }

  /** Write the active L1 table in place (no sync). */
  writeActiveL1(): Promise<void> {
    return this.storage.write(SnapshotSession.l1Bytes(this.l1), this.header.l1TableOffset);
  }

  /**
   * Set COPIED exactly where the active tables' clusters have refcount 1
   * (qemu's update_snapshot_refcount with addend 0), once the refcounts are
   * durable: clearing it was the safe direction, setting it must follow.
   */
  async restoreCopiedFlags(): Promise<void> {
    await this.setL2Flags(this.l1, (rc) => rc === 1);
    let changed = false;
    const next: bigint[] = [];
    for (const e of this.l1) {
      const off = Number(e & OFFSET_MASK);
      const want = off !== 0 && (await this.refs.get(off / this.clusterSize)) === 1;
      const n = want ? e | COPIED : e & ~COPIED;
      if (n !== e) changed = true;
      next.push(n);
    }
    this.l1 = next;
    if (changed) await this.writeActiveL1();
    await this.storage.flush();
  }

  /** Refcount blocks out, then the file synced. */
  async sync(): Promise<void> {
    await this.refs.flushBlocks();
    await this.storage.flush();
  }

  /** Clusters for `bytes` bytes (refcount 1, in memory); 0 for none. */
  async allocate(bytes: number): Promise<number> {
    return bytes === 0 ? 0 : this.refs.allocate(Math.ceil(bytes / this.clusterSize));
  }

  /** Where the current snapshot table lives and how long it is. */
  get tableExtent(): { offset: number; length: number } {
    return { offset: this.header.snapshotsOffset, length: this.header.nbSnapshots === 0 ? 0 : serializeSnapshots(this.snapshots).length };
  }

  /**
   * qcow2_write_snapshots: the new table in new clusters, durable with its
   * refcounts, then the header switched to it in one write, then the old
   * table freed. A crash leaves the old table or the new one, and at worst
   * leaked clusters.
   */
  async replaceTable(list: readonly Snapshot[], beforeSwitch?: () => Promise<void>): Promise<void> {
    const old = this.tableExtent;
    const bytes = serializeSnapshots(list);
    const offset = list.length === 0 ? 0 : await this.allocate(bytes.length);
    if (offset !== 0) await this.storage.write(bytes, offset);
    await this.sync();
    await beforeSwitch?.();
    const h = new Uint8Array(12);
    const v = new DataView(h.buffer);
    v.setUint32(0, list.length, false);
    v.setBigUint64(4, BigInt(offset), false);
    await this.storage.write(h, 60);
    await this.storage.flush();
    this.header.nbSnapshots = list.length;
    this.header.snapshotsOffset = offset;
    this.snapshots.splice(0, this.snapshots.length, ...list);
    if (old.length > 0) {
      await this.refs.update(old.offset, old.length, -1);
      await this.sync();
    }
  }
}
