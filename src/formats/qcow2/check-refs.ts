/**
 * The reference-counting half of the qcow2 consistency check (QEMU's
 * calculate_refcounts and its helpers in qcow2-refcount.c): an in-memory
 * refcount array built from everything that references a host cluster,
 * and the on-disk refcounts it is compared against.
 *
 * Works on the raw file: every table offset is checked against the file
 * before it is read, arrays are sized by the file, not by header claims,
 * and the number of table entries visited is capped.
 */
import { emptyCounts, type CheckCounts, type RepairMode } from '../../block/check.js';
import { ImageError } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import { readBitmapDirectory } from './bitmap.js';
import * as C from './constants.js';
import type { Qcow2Header } from './header.js';
import { clusterType, Cluster } from './l2.js';
import { entryAt } from './refcount.js';
import { setEntryAt } from './refcounts.js';
import { cString, hexAlt } from './text.js';
import { CheckFailure } from './check-failure.js';
import { DEFAULT_REFCOUNT_MEMORY, RefcountArray } from './refcount-array.js';

export { CheckFailure, RefcountArray };

const TWO_32 = 0x1_0000_0000;
const MAX_MESSAGES = 100_000;

/** QEMU's BdrvCheckResult with its fragmentation info flattened. */
export type FixMode = RepairMode;

/** Lower-case hex of a u64 given as two 32-bit words, as printf("%" PRIx64). */
export function hex64(hi: number, lo: number): string {
  if (hi === 0) return (lo >>> 0).toString(16);
  return (hi >>> 0).toString(16) + (lo >>> 0).toString(16).padStart(8, '0');
}

/** printf("%" PRIx64) of a number (offsets the check computed). */
export const hexN = (v: number): string => v.toString(16);

/** The refcount table and blocks as stored in the image (qcow2_get_refcount). */
export class DiskRefcounts {
  /** Raw reftable entries, high and low words. */
  readonly hi: Uint32Array;
  readonly lo: Uint32Array;
  private readonly blocks = new Map<number, Uint8Array>();
  private readonly dirty = new Set<number>();

  constructor(
    private readonly st: CheckState,
    table: Uint8Array,
  ) {
    const n = table.length >>> 3;
    this.hi = new Uint32Array(n);
    this.lo = new Uint32Array(n);
    const v = new DataView(table.buffer, table.byteOffset, table.byteLength);
    for (let i = 0; i < n; i++) {
      this.hi[i] = v.getUint32(8 * i, false);
      this.lo[i] = v.getUint32(8 * i + 4, false);
    }
  }

  static async load(st: CheckState, offset: number, clusters: number): Promise<DiskRefcounts> {
    const want = clusters * st.clusterSize; // <= 8 MiB, validated with the header
    const avail = Math.max(0, Math.min(want, st.fileSize - offset));
    const buf = new Uint8Array(want);
    if (avail > 0) await st.storage.read(buf.subarray(0, avail), offset);
    return new DiskRefcounts(st, buf);
  }

  get entries(): number {
    return this.hi.length;
  }

  /** Offset of refcount block `i` (REFT_OFFSET_MASK), 0 if none. */
  blockOffset(i: number): number {
    if (i >= this.hi.length) return 0;
    return this.hi[i]! * TWO_32 + ((this.lo[i]! & C.REFT_OFFSET_MASK_LO) >>> 0);
  }

  private async block(bi: number, off: number): Promise<Uint8Array> {
    let b = this.blocks.get(bi);
    if (!b) {
      b = new Uint8Array(this.st.clusterSize);
      if (off < this.st.fileSize) await this.st.storage.read(b, off);
      // Sequential callers: a small cache is enough.
      if (this.blocks.size >= 64) {
        const old = this.blocks.keys().next().value as number;
        await this.writeBack(old);
        this.blocks.delete(old);
      }
      this.blocks.set(bi, b);
    }
    return b;
  }

  private async writeBack(bi: number): Promise<void> {
    if (!this.dirty.delete(bi)) return;
    const off = this.blockOffset(bi);
    await this.st.storage.write(this.blocks.get(bi)!, off);
    if (off + this.st.clusterSize > this.st.fileSize) this.st.fileSize = off + this.st.clusterSize;
  }

  /**
   * Write changed blocks. Like QEMU's refcount cache, changes stay in memory
   * until then, and are lost if the image is marked corrupt first.
   */
  async flush(): Promise<void> {
    for (const bi of [...this.dirty]) await this.writeBack(bi);
  }

  /** Refcount block `bi`, null if none; throws CheckFailure (EIO) for an unaligned one. */
  async blockAt(bi: number): Promise<Uint8Array | null> {
    const off = this.blockOffset(bi);
    if (off === 0) return null;
    if (off % this.st.clusterSize !== 0) {
      await this.st.signalCorruption(`Refblock offset ${hexAlt(off)} unaligned (reftable index: ${hexAlt(bi)})`);
      throw new CheckFailure('Input/output error');
    }
    return this.block(bi, off);
  }

  /** Refcount of a host cluster; throws CheckFailure (EIO) for an unaligned refblock. */
  async get(cluster: number): Promise<number> {
    const b = await this.blockAt(Math.floor(cluster / this.st.perBlock));
    return b ? entryAt(b, cluster % this.st.perBlock, this.st.header.refcountOrder) : 0;
  }

  /** update_refcount for a cluster whose refblock exists: written through. */
  async set(cluster: number, value: number): Promise<void> {
    const bi = Math.floor(cluster / this.st.perBlock);
    const off = this.blockOffset(bi);
    if (off === 0 || off % this.st.clusterSize !== 0) throw new CheckFailure('Input/output error');
    const b = await this.block(bi, off);
    setEntryAt(b, cluster % this.st.perBlock, this.st.header.refcountOrder, value);
    this.dirty.add(bi);
  }
}

export interface SnapshotRef {
  l1Hi: number;
  l1Lo: number;
  l1Size: number;
  id: string;
  name: string;
}

/** Everything one check pass works with. */
export class CheckState {
  readonly clusterSize: number;
  readonly clusterBits: number;
  /** Refcount entries per refcount block. */
  readonly perBlock: number;
  readonly extL2: boolean;
  readonly hasDataFile: boolean;
  readonly l2Entries: number;
  readonly l2EntryBytes: number;
  res: CheckCounts = emptyCounts();
  readonly messages: string[];
  fileSize = 0;
  refs!: RefcountArray;
  /** Cap on the computed refcounts' memory (CheckOptions.refcountMemoryLimit). */
  memoryLimit = DEFAULT_REFCOUNT_MEMORY;
  disk!: DiskRefcounts;
  snapshots: SnapshotRef[] = [];
  snapshotsSize = 0;
  /** The active L1 table as loaded (s->l1_table), fixed in place by the COPIED repair. */
  l1: Uint8Array = new Uint8Array(0);
  /** Table entries the check may still visit before giving up. */
  private budget = 0;

  constructor(
    readonly storage: Storage,
    readonly header: Qcow2Header,
    messages: string[],
  ) {
    this.messages = messages;
    this.clusterSize = header.clusterSize;
    this.clusterBits = header.clusterBits;
    this.perBlock = 2 ** (header.clusterBits + 3 - header.refcountOrder);
    const inc = Number(header.incompatibleFeatures);
    this.extL2 = (inc & C.INCOMPAT_EXTL2) !== 0;
    this.hasDataFile = (inc & C.INCOMPAT_DATA_FILE) !== 0;
    this.l2EntryBytes = this.extL2 ? C.L2_ENTRY_SIZE_EXTENDED : C.L2_ENTRY_SIZE;
    this.l2Entries = this.clusterSize / this.l2EntryBytes;
  }

  /** The pass may write (a repair mode). */
  fix: FixMode = 'none';
  /**
   * A fatal corruption was signalled while repairing: QEMU marks the image
   * corrupt and stops all I/O to it, so the repair cannot go on.
   */
  fatal = false;
  private signaled = false;

  /** qcow2_signal_corruption, fatal when writable; printed once. */
  async signalCorruption(what: string): Promise<void> {
    const fatal = this.fix !== 'none';
    if (this.signaled && (!fatal || this.fatal)) return;
    this.signaled = true;
    if (!fatal) {
      this.msg(`qcow2: Image is corrupt: ${what}; further non-fatal corruption events will be suppressed`);
      return;
    }
    this.msg(`qcow2: Marking image as corrupt: ${what}; further corruption events will be suppressed`);
    this.fatal = true;
    const h = this.header;
    if (h.version === 3) {
      h.incompatibleFeatures |= BigInt(C.INCOMPAT_CORRUPT);
      const b = new Uint8Array(8);
      new DataView(b.buffer).setBigUint64(0, h.incompatibleFeatures, false);
      await this.storage.write(b, 72);
      await this.storage.flush();
    }
  }

  /** Lines not kept once MAX_MESSAGES were collected (hostile images repeat errors without end). */
  dropped = 0;

  msg(line: string): void {
    if (this.messages.length < MAX_MESSAGES) this.messages.push(line);
    else this.dropped++;
  }

  /** Lines QEMU prints with error_report (the program name in front); they end the pass. */
  readonly errors: string[] = [];

  /** qcow2_pre_write_overlap_check with QEMU's default ("cached") checks, minus `ignore`. */
  async overlapCheck(offset: number, size: number, ignore: string[] = []): Promise<void> {
    const cs = this.clusterSize;
    const start = offset - (offset % cs);
    const end = start + Math.ceil((offset - start + size) / cs) * cs;
    const hits = (o: number, len: number): boolean => len > 0 && o < end && start < o + len;
    const h = this.header;
    const at = (v: DataView, i: number): number => (v.getUint32(8 * i, false) & C.OFFSET_MASK_HI) * TWO_32 + ((v.getUint32(8 * i + 4, false) & C.OFFSET_MASK_LO) >>> 0);
    const on = (name: string): boolean => !ignore.includes(name);
    let what: string | undefined;
    if (on('qcow2_header') && hits(0, cs)) what = 'qcow2_header';
    else if (on('active L1 table') && hits(h.l1TableOffset, h.l1Size * C.L1_ENTRY_SIZE)) what = 'active L1 table';
    else if (on('active L2 table')) {
      const l1 = new DataView(this.l1.buffer, this.l1.byteOffset, this.l1.byteLength);
      for (let i = 0; i < this.l1.length >>> 3 && !what; i++) {
        const o = at(l1, i);
        if (o !== 0 && hits(o, cs)) what = 'active L2 table';
      }
    }
    if (!what && hits(h.refcountTableOffset, this.disk.entries * C.REFTABLE_ENTRY_SIZE)) what = 'refcount table';
    for (let i = 0; i < this.disk.entries && !what; i++) {
      const o = this.disk.blockOffset(i);
      if (o !== 0 && hits(o, cs)) what = 'refcount block';
    }
    if (!what && hits(h.snapshotsOffset, this.snapshotsSize)) what = 'snapshot table';
    for (const sn of this.snapshots) {
      if (what) break;
      if (hits(sn.l1Hi * TWO_32 + (sn.l1Lo >>> 0), sn.l1Size * C.L1_ENTRY_SIZE)) what = 'inactive L1 table';
    }
    const bm = h.extensions.bitmaps;
    if (!what && bm && !h.extensions.bitmapsInconsistent && hits(bm.directoryOffset, bm.directorySize)) what = 'bitmap directory';
    if (!what) return;
    await this.signalCorruption(`Preventing invalid write on metadata (overlaps with ${what})`);
    throw new CheckFailure('Input/output error');
  }

  clustersOf(bytes: number): number {
    return Math.ceil(bytes / this.clusterSize);
  }

  /** The work cap: generous for real images, finite for ones whose tables all point at each other. */
  resetBudget(): void {
    this.budget = 2 ** 24 + 4 * Math.ceil(this.fileSize / 8);
  }

  spend(entries: number): void {
    this.budget -= entries;
    if (this.budget < 0) {
      this.res.checkErrors++;
      this.errors.push('ERROR: the image references its metadata tables too often to be checked');
      throw new CheckFailure('File too large');
    }
  }

  /** Read `len` bytes at `offset`; the part past the end of the file reads as zero. */
  async readTable(offset: number, len: number): Promise<Uint8Array> {
    this.spend(len >>> 3);
    const buf = new Uint8Array(len);
    const avail = Math.max(0, Math.min(len, this.fileSize - offset));
    if (avail > 0) await this.storage.read(buf.subarray(0, avail), offset);
    return buf;
  }

  /** qcow2_inc_refcounts_imrt */
  inc(offset: number, size: number): void {
    if (size <= 0) return;
    // The last cluster may be partly past the end of the file, but no more.
    if (offset + size - this.fileSize >= this.clusterSize) {
      this.msg(`ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x${hexN(offset)} size 0x${hexN(size)}`);
      this.res.corruptions++;
      return;
    }
    const cs = this.clusterSize;
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + size - 1) / cs);
    for (let k = first; k <= last; k++) {
      const r = this.refs.get(k);
      if (r === this.refs.max) {
        this.msg(`ERROR: overflow cluster offset=0x${hexN(k * cs)}`);
        this.msg('Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing');
        this.res.corruptions++;
        continue;
      }
      try {
        this.refs.set(k, r + 1);
      } catch (e) {
        // Out of memory for the refcounts: QEMU counts a check error and stops.
        if (e instanceof CheckFailure) this.res.checkErrors++;
        throw e;
      }
    }
  }
}

const CHECK_FRAG_INFO = 2;

/** check_refcounts_l2 */
async function checkL2(st: CheckState, l2Offset: number, flags: number, fix: FixMode, active: boolean): Promise<void> {
  const cs = st.clusterSize;
  const table = await st.readTable(l2Offset, cs);
  const v = new DataView(table.buffer);
  const res = st.res;
  let nextContiguous = 0;
  const shiftHi = 38 - st.clusterBits;
  const csizeMask = (1 << (st.clusterBits - 8)) - 1;
  for (let i = 0; i < st.l2Entries; i++) {
    const p = i * st.l2EntryBytes;
    let hi = v.getUint32(p, false);
    const lo = v.getUint32(p + 4, false);
    const bmHi = st.extL2 ? v.getUint32(p + 8, false) : 0;
    const bmLo = st.extL2 ? v.getUint32(p + 12, false) : 0;
    const type = clusterType(hi, lo, st.extL2, st.hasDataFile);

    if (type !== Cluster.COMPRESSED && ((hi & 0x3f000000) !== 0 || (lo & 0x1fe) !== 0)) {
      st.msg(`ERROR found l2 entry with reserved bits set: ${hex64(hi, lo)}`);
      res.corruptions++;
    }

    switch (type) {
      case Cluster.COMPRESSED: {
        const offHi = hi & ((1 << shiftHi) - 1);
        const coffset = offHi * TWO_32 + (lo >>> 0);
        if (hi & C.OFLAG_COPIED_HI) {
          st.msg(`ERROR: coffset=0x${hex64(offHi, lo)}: copied flag must never be set for compressed clusters`);
          hi &= ~C.OFLAG_COPIED_HI;
          res.corruptions++;
        }
        if (st.hasDataFile) {
          st.msg(`ERROR compressed cluster ${i} with data file, entry=0x${hex64(hi, lo)}`);
          res.corruptions++;
          break;
        }
        if (bmHi !== 0 || bmLo !== 0) {
          st.msg(`ERROR compressed cluster ${i} with non-zero subcluster allocation bitmap, entry=0x${hex64(hi, lo)}`);
          res.corruptions++;
          break;
        }
        const sectors = ((hi >>> shiftHi) & csizeMask) + 1;
        st.inc(coffset, sectors * C.SECTOR_SIZE - (coffset % C.SECTOR_SIZE));
        if (flags & CHECK_FRAG_INFO) {
          res.allocatedClusters++;
          res.compressedClusters++;
          // Compressed clusters count as fragmented: neighbours share sectors.
          res.fragmentedClusters++;
        }
        break;
      }
      case Cluster.ZERO_ALLOC:
      case Cluster.NORMAL: {
        const offHi = hi & C.OFFSET_MASK_HI;
        const offLo = (lo & C.OFFSET_MASK_LO) >>> 0;
        const offset = offHi * TWO_32 + offLo;
        if ((bmHi & bmLo) !== 0) {
          res.corruptions++;
          st.msg(`ERROR offset=${hex64(offHi, offLo)}: Allocated cluster has corrupted subcluster allocation bitmap`);
        }
        if (offset % cs !== 0) {
          res.corruptions++;
          const containsData = st.extL2 ? bmLo !== 0 : (lo & C.OFLAG_ZERO_LO) === 0;
          if (!containsData) {
            st.msg(`${fix === 'all' ? 'Repairing' : 'ERROR'} offset=${hex64(offHi, offLo)}: Preallocated cluster is not properly aligned; L2 entry corrupted.`);
            if (fix === 'all') {
              // The entry becomes a plain zero cluster (all-unallocated with extended L2).
              const e = new Uint8Array(st.l2EntryBytes);
              if (!st.extL2) e[7] = C.OFLAG_ZERO_LO;
              try {
                await st.overlapCheck(l2Offset + p, st.l2EntryBytes, [active ? 'active L2 table' : 'inactive L2 table']);
              } catch (err) {
                if (!(err instanceof CheckFailure)) throw err;
                st.msg('ERROR: Overlap check failed');
                res.checkErrors++;
                throw err;
              }
              await st.storage.write(e, l2Offset + p);
              await st.storage.flush();
              res.corruptions--;
              res.corruptionsFixed++;
              continue;
            }
          } else {
            st.msg(`ERROR offset=${hex64(offHi, offLo)}: Data cluster is not properly aligned; L2 entry corrupted.`);
          }
        }
        if (flags & CHECK_FRAG_INFO) {
          res.allocatedClusters++;
          if (nextContiguous !== 0 && offset !== nextContiguous) res.fragmentedClusters++;
          nextContiguous = offset + cs;
        }
        if (!st.hasDataFile) st.inc(offset, cs);
        break;
      }
      case Cluster.ZERO_PLAIN:
        break;
      case Cluster.UNALLOCATED:
        if (bmLo !== 0) {
          res.corruptions++;
          st.msg('ERROR: Unallocated cluster has non-zero subcluster allocation map');
        }
        break;
    }
  }
}

/** check_refcounts_l1 */
async function checkL1(st: CheckState, l1Offset: number, l1Size: number, flags: number, fix: FixMode, active: boolean): Promise<void> {
  if (l1Size === 0) return;
  const bytes = l1Size * C.L1_ENTRY_SIZE;
  st.inc(l1Offset, bytes);
  const l1 = await st.readTable(l1Offset, bytes);
  const v = new DataView(l1.buffer);
  for (let i = 0; i < l1Size; i++) {
    const hi = v.getUint32(8 * i, false);
    const lo = v.getUint32(8 * i + 4, false);
    if (hi === 0 && lo === 0) continue;
    if ((hi & 0x7f000000) !== 0 || (lo & 0x1ff) !== 0) {
      st.msg(`ERROR found L1 entry with reserved bits set: ${hex64(hi, lo)}`);
      st.res.corruptions++;
    }
    const offHi = hi & C.OFFSET_MASK_HI;
    const offLo = (lo & C.OFFSET_MASK_LO) >>> 0;
    const l2Offset = offHi * TWO_32 + offLo;
    st.inc(l2Offset, st.clusterSize);
    if (l2Offset % st.clusterSize !== 0) {
      st.msg(`ERROR l2_offset=${hex64(offHi, offLo)}: Table is not cluster aligned; L1 entry corrupted`);
      st.res.corruptions++;
    }
    await checkL2(st, l2Offset, flags, fix, active);
  }
}

/**
 * The snapshot table as qcow2_read_snapshots walks it: each entry starts
 * 8-aligned; the table size is where the last entry ends.
 */
export async function readSnapshotRefs(st: CheckState, offset: number, count: number): Promise<void> {
  const out: SnapshotRef[] = [];
  let pos = offset;
  for (let i = 0; i < count; i++) {
    pos += (8 - (pos % 8)) % 8;
    const h = await st.readTable(pos, C.SNAPSHOT_HEADER_SIZE);
    const v = new DataView(h.buffer);
    const idSize = v.getUint16(12, false);
    const nameSize = v.getUint16(14, false);
    const extra = v.getUint32(36, false);
    if (extra > C.MAX_SNAPSHOT_EXTRA_DATA) {
      throw new ImageError('invalid', `Too much extra metadata in snapshot table entry ${i}`);
    }
    pos += C.SNAPSHOT_HEADER_SIZE + extra;
    const strings = await st.readTable(pos, idSize + nameSize);
    pos += idSize + nameSize;
    if (pos - offset > C.MAX_SNAPSHOTS_SIZE) throw new ImageError('invalid', 'Snapshot table is too big');
    out.push({
      l1Hi: v.getUint32(0, false),
      l1Lo: v.getUint32(4, false),
      l1Size: v.getUint32(8, false),
      id: cString(strings.subarray(0, idSize)),
      name: cString(strings.subarray(idSize)),
    });
  }
  st.snapshots = out;
  st.snapshotsSize = pos - offset;
}

/** qcow2_check_bitmaps_refcounts */
async function checkBitmaps(st: CheckState): Promise<void> {
  const ext = st.header.extensions.bitmaps;
  if (!ext || st.header.extensions.bitmapsInconsistent) return;
  st.inc(ext.directoryOffset, ext.directorySize);
  let list;
  try {
    const virtualSize = st.header.size - (st.header.size % C.SECTOR_SIZE);
    st.spend(ext.directorySize >>> 3);
    list = await readBitmapDirectory(st.storage, ext, st.clusterSize, virtualSize);
  } catch (e) {
    if (!(e instanceof ImageError)) throw e;
    st.msg(e.message);
    st.res.corruptions++;
    throw new CheckFailure('Invalid argument');
  }
  for (const bm of list) {
    st.inc(bm.tableOffset, bm.tableSize * 8);
    const t = await st.readTable(bm.tableOffset, bm.tableSize * 8);
    const v = new DataView(t.buffer);
    for (let i = 0; i < bm.tableSize; i++) {
      const hi = v.getUint32(8 * i, false);
      const lo = v.getUint32(8 * i + 4, false);
      // check_table_entry: reserved bits, and bit 0 only without an offset.
      if ((hi & 0xff000000) !== 0 || (lo & 0x1fe) !== 0) {
        st.res.corruptions++;
        continue;
      }
      const offset = (hi & C.OFFSET_MASK_HI) * TWO_32 + ((lo & C.OFFSET_MASK_LO) >>> 0);
      if (offset !== 0 && ((lo & 1) !== 0 || offset % st.clusterSize !== 0)) {
        st.res.corruptions++;
        continue;
      }
      if (offset === 0) continue;
      st.inc(offset, st.clusterSize);
    }
  }
}

/** Largest file size a refblock repair may grow the image to. */
const MAX_GROW = 2 ** 44;

/** check_refblocks; returns whether the refcount structure must be rebuilt. */
async function checkRefblocks(st: CheckState, fix: FixMode): Promise<boolean> {
  let rebuild = false;
  const d = st.disk;
  const cs = st.clusterSize;
  for (let i = 0; i < d.entries; i++) {
    if (d.hi[i] === 0 && d.lo[i] === 0) continue;
    const offset = d.blockOffset(i);
    const cluster = Math.floor(offset / cs);
    if ((d.lo[i]! & 0x1ff) !== 0) {
      st.msg(`ERROR refcount table entry ${i} has reserved bits set`);
      st.res.corruptions++;
      rebuild = true;
      continue;
    }
    if (offset % cs !== 0) {
      st.msg(`ERROR refcount block ${i} is not cluster aligned; refcount table entry corrupted`);
      st.res.corruptions++;
      rebuild = true;
      continue;
    }
    if (cluster >= st.refs.size) {
      st.res.corruptions++;
      st.msg(`${fix === 'all' ? 'Repairing' : 'ERROR'} refcount block ${i} is outside image`);
      if (fix === 'all') {
        if (offset + cs > MAX_GROW) {
          rebuild = true;
          st.msg('ERROR could not resize image: File too large');
          continue;
        }
        await st.storage.truncate(offset + cs);
        st.fileSize = await st.storage.size();
        st.refs.resize(Math.max(st.refs.size, st.clustersOf(st.fileSize)));
        st.res.corruptions--;
        st.res.corruptionsFixed++;
        st.inc(offset, cs);
      }
      continue;
    }
    st.inc(offset, cs);
    const r = st.refs.get(cluster);
    if (r !== 1) {
      st.msg(`ERROR refcount block ${i} refcount=${r}`);
      st.res.corruptions++;
      rebuild = true;
    }
  }
  return rebuild;
}

/** calculate_refcounts; returns whether a rebuild is needed. */
export async function calculateRefcounts(st: CheckState, fix: FixMode): Promise<boolean> {
  const h = st.header;
  st.inc(0, st.clusterSize);
  await checkL1(st, h.l1TableOffset, h.l1Size, CHECK_FRAG_INFO, fix, true);

  if (st.hasDataFile && st.snapshots.length > 0) {
    st.msg(`ERROR ${st.snapshots.length} snapshots in image with data file`);
    st.res.corruptions++;
  }
  for (const sn of st.snapshots) {
    const l1Offset = sn.l1Hi * TWO_32 + (sn.l1Lo >>> 0);
    if ((sn.l1Lo & (st.clusterSize - 1)) !== 0) {
      st.msg(`ERROR snapshot ${sn.id} (${sn.name}) l1_offset=0x${hex64(sn.l1Hi, sn.l1Lo)}: L1 table is not cluster aligned; snapshot table entry corrupted`);
      st.res.corruptions++;
      continue;
    }
    if (sn.l1Size > C.MAX_L1_SIZE / C.L1_ENTRY_SIZE) {
      st.msg(`ERROR snapshot ${sn.id} (${sn.name}) l1_size=0x${hexN(sn.l1Size)}: L1 table is too large; snapshot table entry corrupted`);
      st.res.corruptions++;
      continue;
    }
    await checkL1(st, l1Offset, sn.l1Size, 0, fix, false);
  }
  st.inc(h.snapshotsOffset, st.snapshotsSize);
  st.inc(h.refcountTableOffset, h.refcountTableClusters * st.clusterSize);
  const crypto = h.extensions.cryptoHeader;
  if (crypto && crypto.length > 0) st.inc(crypto.offset, crypto.length);
  await checkBitmaps(st);
  return checkRefblocks(st, fix);
}
