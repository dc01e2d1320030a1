/**
 * The qcow2 write path (docs/qcow2-writes.md): allocating writes with
 * copy-on-write, compressed writes, write-zeroes and discard with qemu's
 * semantics, and the flush sequence that orders refcounts, data, L2 and L1
 * so that a crash can leak clusters but never corrupt the image.
 */
import type { Codecs } from '../../block/codecs.js';
import { Mutex, RangeLock } from '../../block/locks.js';
import { ImageError } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import { alignDown, alignUp } from '../../units.js';
import * as C from './constants.js';
import type { Decompressor } from './compress.js';
import { Cluster, Sub, clusterType, decodeCompressed, entryOffset } from './l2.js';
import type { L2Mapper } from './mapping.js';
import type { RefcountStore } from './refcounts.js';

const TWO_32 = 0x1_0000_0000;
const ALL_SUBCLUSTERS = 0xffffffff;

export interface WriterConfig {
  storage: Storage;
  /** Where guest data lives: the image file or the external data file (through the cipher when encrypted). */
  data: Storage;
  /**
   * The data storage for a cluster whose guest offset minus host offset is
   * given, where that matters (legacy AES counts IVs by guest sector).
   * Absent: `data` for every cluster.
   */
  dataAt?(guestMinusHost: number): Storage;
  /** Encrypted guest data: compressed writes are refused (they would be stored in the clear). */
  encrypted?: boolean;
  clusterBits: number;
  version: 2 | 3;
  extL2: boolean;
  hasDataFile: boolean;
  dataFileRaw: boolean;
  lazyRefcounts: boolean;
  compressionType: number;
  /** Virtual size in bytes. */
  size: number;
  l1Offset: number;
  hasBacking: () => boolean;
  mapper: L2Mapper;
  refcounts: RefcountStore;
  decompressor: Decompressor;
  codecs: Codecs;
  /** Guest bytes as they read now (through the backing file where unallocated). */
  readGuest(offset: number, into: Uint8Array): Promise<void>;
  /** Set or clear incompatible feature bits in the header, durably. */
  setIncompatible(bits: number, on: boolean): Promise<void>;
  /** The metadata structure a write to [start, end) of the image file would hit, if any. */
  overlap(start: number, end: number): string | undefined;
}

/** One L2 entry with its extended-L2 bitmap words. */
interface Entry {
  hi: number;
  lo: number;
  zeroBits: number;
  allocBits: number;
}

/** What a write does to one cluster. */
interface ClusterPlan {
  /** Guest offset of the cluster. */
  guest: number;
  /** Host offset of the cluster after the write. */
  host: number;
  /** Guest range written on the host (with copy-on-write around the caller's data). */
  spanStart: number;
  spanEnd: number;
  /** A new host cluster replaces the old entry. */
  fresh: boolean;
  old: Entry;
}

export class Qcow2Writer {
  private readonly cfg: WriterConfig;
  readonly clusterSize: number;
  private readonly subSize: number;
  private readonly entrySize: number;
  private readonly meta = new Mutex();
  private readonly ranges = new RangeLock();
  private dirtyBitSet = false;

  constructor(cfg: WriterConfig) {
    this.cfg = cfg;
    this.clusterSize = 2 ** cfg.clusterBits;
    this.subSize = cfg.extL2 ? this.clusterSize / C.SUBCLUSTERS_PER_CLUSTER : this.clusterSize;
    this.entrySize = cfg.extL2 ? C.L2_ENTRY_SIZE_EXTENDED : C.L2_ENTRY_SIZE;
  }

  // ---------------------------------------------------------------- writes

  async write(offset: number, data: Uint8Array): Promise<void> {
    const cs = this.clusterSize;
    const end = offset + data.length;
    await this.ranges.run(alignDown(offset, cs), alignUp(end, cs), async () => {
      // A shrink may have run while this request waited for its range.
      if (end > this.cfg.size) throw new ImageError('bad-argument', `Request out of range: offset ${offset}, length ${data.length}, image size ${this.cfg.size}`);
      const plans = await this.meta.run(() => this.plan(offset, end));
      try {
        await this.writeSpans(plans, offset, data);
      } catch (e) {
        await this.meta.run(() => this.abortAllocations(plans)).catch(() => {});
        throw e;
      }
      await this.meta.run(() => this.commit(plans));
    });
  }

  /** Decide, per cluster, where the data goes; allocate what must be new. */
  private async plan(offset: number, end: number): Promise<ClusterPlan[]> {
    const cs = this.clusterSize;
    const plans: ClusterPlan[] = [];
    const needNew: ClusterPlan[] = [];
    for (let g = alignDown(offset, cs); g < end; g += cs) {
      const old = await this.entry(g);
      const type = clusterType(old.hi, old.lo, this.cfg.extL2, this.cfg.hasDataFile);
      const copied = (old.hi & C.OFLAG_COPIED_HI) !== 0;
      const ownHost = (type === Cluster.NORMAL || type === Cluster.ZERO_ALLOC) && copied;
      const wStart = Math.max(g, offset);
      const wEnd = Math.min(g + cs, end);
      let spanStart = g;
      let spanEnd = g + cs;
      if (this.cfg.extL2 && (ownHost || type === Cluster.UNALLOCATED || type === Cluster.ZERO_PLAIN)) {
        // Subclusters: only the touched ones are written; the others keep their state.
        spanStart = alignDown(wStart, this.subSize);
        spanEnd = alignUp(wEnd, this.subSize);
      } else if (ownHost && type === Cluster.NORMAL) {
        spanStart = wStart;
        spanEnd = wEnd;
      }
      if (this.cfg.hasDataFile) {
        // Data clusters live at their guest offset and are not refcounted.
        plans.push({ guest: g, host: g, spanStart, spanEnd, fresh: !ownHost, old });
        continue;
      }
      const p: ClusterPlan = { guest: g, host: ownHost ? entryOffset(old.hi, old.lo) : 0, spanStart, spanEnd, fresh: !ownHost, old };
      plans.push(p);
      if (!ownHost) needNew.push(p);
    }
    if (needNew.length > 0) {
      await this.markDirtyForLazyRefcounts();
      // The L2 tables first, then the data clusters: qemu's order, so images
      // written the same way get the same layout (qemu-img map offsets).
      if (!this.cfg.hasDataFile) {
        const span = this.cfg.mapper.tableSpan;
        for (let i = Math.floor(needNew[0]!.guest / span); i <= Math.floor(needNew[needNew.length - 1]!.guest / span); i++) await this.ownTable(i);
      }
      // One contiguous allocation per run of guest-adjacent clusters, so the data goes out in one I/O.
      for (let i = 0; i < needNew.length; ) {
        let j = i;
        while (j + 1 < needNew.length && needNew[j + 1]!.guest === needNew[j]!.guest + cs) j++;
        const host = await this.cfg.refcounts.allocate(j - i + 1);
        for (let k = i; k <= j; k++) needNew[k]!.host = host + (k - i) * cs;
        i = j + 1;
      }
    }
    return plans;
  }

  /** Build each span (caller data plus copy-on-write) and write contiguous spans with one I/O each. */
  private async writeSpans(plans: ClusterPlan[], offset: number, data: Uint8Array): Promise<void> {
    const end = offset + data.length;
    for (let i = 0; i < plans.length; ) {
      let j = i;
      // Merge while host and guest stay contiguous and spans touch.
      while (
        j + 1 < plans.length &&
        plans[j]!.spanEnd === plans[j]!.guest + this.clusterSize &&
        plans[j + 1]!.spanStart === plans[j + 1]!.guest &&
        plans[j + 1]!.host === plans[j]!.host + this.clusterSize
      ) {
        j++;
      }
      const first = plans[i]!;
      const last = plans[j]!;
      const gStart = first.spanStart;
      const gEnd = last.spanEnd;
      const hostStart = first.host + (gStart - first.guest);
      let buf: Uint8Array;
      if (gStart >= offset && gEnd <= end) {
        buf = data.subarray(gStart - offset, gEnd - offset);
      } else {
        buf = new Uint8Array(gEnd - gStart);
        const dStart = Math.max(gStart, offset);
        const dEnd = Math.min(gEnd, end);
        if (gStart < dStart) await this.cfg.readGuest(gStart, buf.subarray(0, dStart - gStart));
        if (dEnd < gEnd) await this.cfg.readGuest(dEnd, buf.subarray(dEnd - gStart));
        buf.set(data.subarray(dStart - offset, dEnd - offset), dStart - gStart);
      }
      await this.guard(hostStart, buf.length);
      await this.dataFor(gStart, hostStart).write(buf, hostStart);
      i = j + 1;
    }
  }

  /**
   * The data write failed, so no L2 entry will point at the clusters
   * allocated for it: their refcounts drop back at once (QEMU's
   * qcow2_alloc_cluster_abort), instead of leaking, for a full disk, the
   * very space the user needs back. Nothing on disk references them, so
   * they need no deferred free.
   */
  private async abortAllocations(plans: ClusterPlan[]): Promise<void> {
    if (this.cfg.hasDataFile) return;
    for (const p of plans) if (p.fresh) await this.cfg.refcounts.update(p.host, this.clusterSize, -1);
  }

  /** Point the L2 entries at the written clusters; release what they replaced. */
  private async commit(plans: ClusterPlan[]): Promise<void> {
    for (const p of plans) {
      const e: Entry = { ...p.old };
      if (p.fresh) {
        this.setNormal(e, p.host);
        if (this.cfg.extL2) {
          const wholeCopy = p.spanStart === p.guest && p.spanEnd === p.guest + this.clusterSize;
          const oldType = clusterType(p.old.hi, p.old.lo, true, this.cfg.hasDataFile);
          if (wholeCopy || oldType === Cluster.COMPRESSED || oldType === Cluster.NORMAL) {
            e.allocBits = ALL_SUBCLUSTERS;
            e.zeroBits = 0;
          } else {
            const bits = this.subBits(p);
            e.allocBits = (p.old.allocBits | bits) >>> 0;
            e.zeroBits = (p.old.zeroBits & ~bits) >>> 0;
          }
        }
        this.releaseOld(p.old);
      } else if (this.cfg.extL2) {
        const bits = this.subBits(p);
        e.allocBits = (e.allocBits | bits) >>> 0;
        e.zeroBits = (e.zeroBits & ~bits) >>> 0;
      } else {
        e.lo = (e.lo & ~C.OFLAG_ZERO_LO) >>> 0; // a preallocated zero cluster now holds data
      }
      if (!sameEntry(p.old, e)) await this.setEntry(p.guest, e);
    }
    await this.relieveCachePressure();
  }

  /** Dirty tables are pinned; when too many pile up, run the flush sequence. */
  private async relieveCachePressure(): Promise<void> {
    if (this.cfg.mapper.overCapacity) await this.flushLocked();
  }

  /** Subcluster bits covered by a plan's span. */
  private subBits(p: ClusterPlan): number {
    const a = (p.spanStart - p.guest) / this.subSize;
    const b = Math.ceil((p.spanEnd - p.guest) / this.subSize);
    return rangeBits(a, b);
  }

  private setNormal(e: Entry, host: number): void {
    e.hi = (Math.floor(host / TWO_32) | C.OFLAG_COPIED_HI) >>> 0;
    e.lo = host >>> 0;
  }

  /** The old cluster's reference goes once the new entry is durable. */
  private releaseOld(old: Entry): void {
    const type = clusterType(old.hi, old.lo, this.cfg.extL2, this.cfg.hasDataFile);
    if (type === Cluster.COMPRESSED) {
      const d = decodeCompressed(old.hi, old.lo, this.cfg.clusterBits);
      const start = alignDown(d.hostOffset, 512);
      this.cfg.refcounts.queueFree(start, d.hostOffset + d.csize - start);
      this.cfg.decompressor.invalidate();
    } else if ((type === Cluster.NORMAL || type === Cluster.ZERO_ALLOC) && !this.cfg.hasDataFile) {
      this.cfg.refcounts.queueFree(entryOffset(old.hi, old.lo), this.clusterSize);
    }
  }

  // ------------------------------------------------------ compressed writes

  /**
   * Compressed writes, as qemu: whole clusters (or the last, partial one)
   * into clusters that hold no host data; a cluster that does not shrink is
   * written normally.
   */
  async writeCompressed(offset: number, data: Uint8Array): Promise<void> {
    const cs = this.clusterSize;
    if (this.cfg.hasDataFile) throw new ImageError('unsupported', 'Operation not supported');
    if (offset % cs !== 0) throw new ImageError('bad-argument', 'Invalid argument');
    if (this.cfg.encrypted) await this.refuseEncryptedCompression(offset, data.length);
    const jobs: Promise<void>[] = [];
    for (let pos = 0; pos < data.length; pos += cs) {
      const n = Math.min(cs, data.length - pos);
      if (n < cs && offset + pos + n < this.cfg.size) throw new ImageError('bad-argument', 'Invalid argument');
      jobs.push(this.writeCompressedCluster(offset + pos, data.subarray(pos, pos + n)));
    }
    await Promise.all(jobs);
  }

  /**
   * qemu stores compressed clusters of an encrypted image unencrypted: qimg
   * never writes one. Where qemu fails anyway (a cluster that already holds
   * data: compression cannot overwrite) it fails with qemu's error; elsewhere
   * with the reason.
   */
  private async refuseEncryptedCompression(offset: number, length: number): Promise<never> {
    for (let guest = offset; guest < offset + length; guest += this.clusterSize) {
      const old = await this.meta.run(() => this.entry(guest));
      if (entryOffset(old.hi, old.lo) !== 0 || clusterType(old.hi, old.lo, this.cfg.extL2, false) === Cluster.COMPRESSED) {
        throw new ImageError('io', 'Input/output error');
      }
    }
    throw new ImageError('unsupported', 'Compression and encryption not supported at the same time');
  }

  private dataFor(guest: number, host: number): Storage {
    return this.cfg.dataAt ? this.cfg.dataAt(guest - host) : this.cfg.data;
  }

  private async writeCompressedCluster(guest: number, chunk: Uint8Array): Promise<void> {
    const cs = this.clusterSize;
    const full = chunk.length === cs ? chunk : padTo(chunk, cs);
    const compress = this.cfg.compressionType === C.COMPRESSION_ZSTD ? this.cfg.codecs.zstdCompress : this.cfg.codecs.deflateRaw;
    if (!compress) throw new ImageError('unsupported', 'No compressor is available');
    const packed = await compress(full, cs - 1);
    if (!packed) return this.write(guest, chunk); // does not shrink: stored plain, as qemu does
    await this.ranges.run(guest, guest + cs, async () => {
      const old = await this.meta.run(() => this.entry(guest));
      if (entryOffset(old.hi, old.lo) !== 0 || clusterType(old.hi, old.lo, this.cfg.extL2, false) === Cluster.COMPRESSED) {
        throw new ImageError('io', 'Input/output error'); // qemu: compression cannot overwrite anything
      }
      const host = await this.meta.run(async () => {
        await this.markDirtyForLazyRefcounts();
        return this.cfg.refcounts.allocateBytes(packed.length);
      });
      if (host >= 2 ** (70 - this.cfg.clusterBits)) throw new ImageError('invalid', 'Compressed cluster offset is too large');
      await this.guard(host, packed.length);
      await this.cfg.storage.write(packed, host);
      await this.meta.run(async () => {
        const field = Math.floor((host + packed.length - 1) / 512) - Math.floor(host / 512);
        const shift = 70 - this.cfg.clusterBits - 32; // csize_shift within the high word
        const e: Entry = {
          hi: (C.OFLAG_COMPRESSED_HI | (field << shift) | Math.floor(host / TWO_32)) >>> 0,
          lo: host >>> 0,
          zeroBits: 0,
          allocBits: 0,
        };
        this.cfg.decompressor.invalidate();
        await this.setEntry(guest, e);
      });
    });
  }

  // ------------------------------------------------- write-zeroes, discard

  /**
   * qemu's write-zeroes: whole (sub)clusters get the zero flag (v3); the
   * unaligned head and tail are written as zeros unless they already read
   * as zero; v2 writes zeros.
   */
  async writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    const end = offset + length;
    const unit = this.subSize;
    const aStart = Math.min(alignUp(offset, unit), end);
    // The partial last (sub)cluster of an image whose size is not aligned counts as whole.
    const aEnd = end === this.cfg.size ? end : Math.max(aStart, alignDown(end, unit));
    if (this.cfg.version < 3) return this.writeZeroBuffers(offset, length);
    if (aStart > offset) await this.zeroPartial(offset, aStart);
    if (aEnd > aStart) await this.zeroAligned(aStart, aEnd, mayUnmap);
    if (end > aEnd && aEnd >= aStart) await this.zeroPartial(Math.max(aEnd, offset), end);
  }

  /**
   * An unaligned piece of one (sub)cluster: if the rest of that unit already
   * reads as zero and holds no data, the whole unit gets the zero flag
   * (qemu's fast path); otherwise zeros are written.
   */
  private async zeroPartial(start: number, end: number): Promise<void> {
    if (end <= start) return;
    const unit = this.subSize;
    const cs = this.clusterSize;
    const uStart = alignDown(start, unit);
    const uEnd = Math.min(uStart + unit, this.cfg.size);
    // The check and the zero flag go under one hold of the cluster's range:
    // a write elsewhere in the unit landing between them would be wiped out.
    const fallback = await this.ranges.run(alignDown(uStart, cs), alignUp(uEnd, cs), async () => {
      const run = await this.cfg.mapper.lookup(uStart, uEnd - uStart);
      const zeroable = run.length === uEnd - uStart && (run.type === Sub.UNALLOCATED_PLAIN || run.type === Sub.UNALLOCATED_ALLOC || run.type === Sub.ZERO_PLAIN || run.type === Sub.ZERO_ALLOC);
      if (zeroable && (await this.readsZero(uStart, start)) && (await this.readsZero(end, uEnd))) return this.zeroAlignedHeld(uStart, uEnd, false);
      return null;
    });
    if (fallback === null) return this.writeZeroBuffers(start, end - start);
    for (const [a, b] of fallback) await this.writeZeroBuffers(a, b - a);
  }

  private async readsZero(start: number, end: number): Promise<boolean> {
    if (end <= start) return true;
    const b = new Uint8Array(end - start);
    await this.cfg.readGuest(start, b);
    return b.every((x) => x === 0);
  }

  private async writeZeroBuffers(offset: number, length: number): Promise<void> {
    const chunk = new Uint8Array(Math.min(length, 1 << 20));
    for (let pos = 0; pos < length; pos += chunk.length) {
      await this.write(offset + pos, chunk.subarray(0, Math.min(chunk.length, length - pos)));
    }
  }

  private async zeroAligned(start: number, end: number, mayUnmap: boolean): Promise<void> {
    const cs = this.clusterSize;
    const fallback = await this.ranges.run(alignDown(start, cs), alignUp(end, cs), () => this.zeroAlignedHeld(start, end, mayUnmap));
    for (const [a, b] of fallback) await this.writeZeroBuffers(a, b - a);
  }

  /**
   * zeroAligned's work, with the range of [start, end)'s clusters held.
   * Returns the pieces to write as zero bytes instead (subclusters of a
   * compressed cluster), which the caller writes once the range is free.
   */
  private async zeroAlignedHeld(start: number, end: number, mayUnmap: boolean): Promise<Array<[number, number]>> {
    const cs = this.clusterSize;
    if (this.cfg.dataFileRaw) await this.zeroDataFile(start, end);
    const fallback: Array<[number, number]> = [];
    await this.meta.run(async () => {
      for (let g = alignDown(start, cs); g < end; g += cs) {
        const old = await this.entry(g);
        const e: Entry = { ...old };
        const type = clusterType(old.hi, old.lo, this.cfg.extL2, this.cfg.hasDataFile);
        const whole = g >= start && (g + cs <= end || end === this.cfg.size);
        if (this.cfg.extL2 && !whole) {
          if (type === Cluster.COMPRESSED) {
            // Subclusters of a compressed cluster cannot be zeroed alone: write zeros.
            fallback.push([Math.max(start, g), Math.min(end, g + cs)]);
            continue;
          }
          const a = (Math.max(start, g) - g) / this.subSize;
          const b = Math.ceil((Math.min(end, g + cs) - g) / this.subSize);
          const bits = rangeBits(a, b);
          e.zeroBits = (e.zeroBits | bits) >>> 0;
          e.allocBits = (e.allocBits & ~bits) >>> 0;
        } else {
          const allocated = type === Cluster.NORMAL || type === Cluster.ZERO_ALLOC || type === Cluster.COMPRESSED;
          const unmap = type === Cluster.COMPRESSED || (mayUnmap && allocated);
          if (unmap) {
            e.hi = 0;
            e.lo = 0;
          }
          if (this.cfg.extL2) {
            e.zeroBits = ALL_SUBCLUSTERS;
            e.allocBits = 0;
          } else {
            e.lo = (e.lo | C.OFLAG_ZERO_LO) >>> 0;
          }
          if (sameEntry(old, e)) continue;
          if (unmap) this.releaseOld(old);
        }
        if (!sameEntry(old, e)) await this.setEntry(g, e);
      }
      await this.relieveCachePressure();
    });
    return fallback;
  }

  /** A raw external data file must read as the guest does: zero it there too. */
  private async zeroDataFile(start: number, end: number): Promise<void> {
    const d = this.cfg.data;
    if (d.writeZeroes) return d.writeZeroes(start, end - start);
    const chunk = new Uint8Array(Math.min(end - start, 1 << 20));
    for (let pos = start; pos < end; pos += chunk.length) await d.write(chunk.subarray(0, Math.min(chunk.length, end - pos)), pos);
  }

  /**
   * qemu's guest discard: whole clusters only (and the partial last cluster
   * of an unaligned image). On v3, or with a backing file, the cluster then
   * reads as zero; otherwise it becomes unallocated.
   */
  async discard(offset: number, length: number, full = false): Promise<void> {
    const cs = this.clusterSize;
    const end = offset + length;
    const start = alignUp(offset, cs);
    const stop = end === this.cfg.size ? end : alignDown(end, cs);
    if (stop <= start) return;
    if (!full && this.cfg.version < 3 && this.cfg.hasBacking()) return; // qemu: not supported, ignored
    await this.ranges.run(start, alignUp(stop, cs), () =>
      this.meta.run(async () => {
        for (let g = start; g < stop; g += cs) {
          const old = await this.entry(g);
          const type = clusterType(old.hi, old.lo, this.cfg.extL2, this.cfg.hasDataFile);
          const allocated = type === Cluster.NORMAL || type === Cluster.ZERO_ALLOC || type === Cluster.COMPRESSED;
          const e: Entry = { ...old };
          if (full) {
            // qemu's full discard (emptying an image): the cluster is unallocated, the backing file shows through.
            e.hi = 0;
            e.lo = 0;
            e.zeroBits = 0;
            e.allocBits = 0;
          } else if (this.cfg.hasBacking() || allocated) {
            if (this.cfg.extL2) {
              e.hi = 0;
              e.lo = 0;
              e.zeroBits = ALL_SUBCLUSTERS;
              e.allocBits = 0;
            } else {
              e.hi = 0;
              e.lo = this.cfg.version >= 3 ? C.OFLAG_ZERO_LO : 0;
            }
          }
          if (sameEntry(old, e)) continue;
          await this.setEntry(g, e);
          this.releaseOld(old);
        }
        await this.relieveCachePressure();
      }),
    );
  }

  /**
   * qemu's overlap check: guest data must never land on metadata. A hit means
   * the tables are corrupt; the image is marked so, and refuses all further
   * writes, rather than being damaged more.
   */
  private async guard(host: number, length: number): Promise<void> {
    if (this.corrupt) throw new ImageError('corrupt', 'No medium found');
    if (this.cfg.hasDataFile) return;
    const name = this.cfg.overlap(host, host + length);
    if (name === undefined) return;
    this.corrupt = true;
    await this.cfg.setIncompatible(C.INCOMPAT_CORRUPT, true);
    throw new ImageError(
      'corrupt',
      `Marking image as corrupt: Preventing invalid write on metadata (overlaps with ${name}); further corruption events will be suppressed`,
    );
  }
  private corrupt = false;

  // ------------------------------------------------------- preallocation

  /**
   * Give every unallocated guest cluster a host cluster (qemu's
   * preallocation): one contiguous run per L2 table, entries with COPIED
   * set; with extended L2 the subclusters stay unallocated. `writeZeros`
   * also writes the data clusters. Returns the end of the last host cluster.
   */
  async preallocate(writeZeros: boolean, from = 0): Promise<number> {
    const cs = this.clusterSize;
    let hostEnd = 0;
    await this.meta.run(async () => {
      const span = this.cfg.mapper.tableSpan;
      const first = alignUp(from, cs);
      for (let t = alignDown(first, span); t < this.cfg.size; t += span) {
        const stop = Math.min(this.cfg.size, t + span);
        const todo: number[] = [];
        for (let g = Math.max(t, first); g < stop; g += cs) {
          const e = await this.entry(g);
          if (clusterType(e.hi, e.lo, this.cfg.extL2, this.cfg.hasDataFile) === Cluster.UNALLOCATED) todo.push(g);
        }
        if (todo.length === 0) continue;
        const host = this.cfg.hasDataFile ? -1 : await this.cfg.refcounts.allocate(todo.length);
        for (let k = 0; k < todo.length; k++) {
          const g = todo[k]!;
          const h = host < 0 ? g : host + k * cs;
          const e: Entry = { hi: 0, lo: 0, zeroBits: 0, allocBits: 0 };
          this.setNormal(e, h);
          await this.setEntry(g, e);
          hostEnd = Math.max(hostEnd, h + cs);
        }
        if (writeZeros && (this.cfg.dataAt || (host < 0 && this.cfg.encrypted))) {
          // Cluster by cluster: legacy AES takes IVs by guest sector, and a data file's clusters sit at their
          // guest offsets. Encrypted zeros even in a data file, whose holes would decrypt to noise.
          const zeros = new Uint8Array(cs);
          for (let k = 0; k < todo.length; k++) {
            const h = host < 0 ? todo[k]! : host + k * cs;
            await this.dataFor(todo[k]!, h).write(zeros, h);
          }
        } else if (writeZeros && host >= 0) {
          const zeros = new Uint8Array(Math.min(todo.length * cs, 1 << 20));
          for (let off = 0; off < todo.length * cs; off += zeros.length) {
            await this.cfg.data.write(zeros.subarray(0, Math.min(zeros.length, todo.length * cs - off)), host + off);
          }
        }
        await this.relieveCachePressure();
      }
      await this.flushLocked();
    });
    return hostEnd;
  }

  // ---------------------------------------------------------------- resize

  /**
   * Run `f` with every request excluded and the metadata flushed before and
   * after (a resize changes the tables' geometry under the write path).
   */
  async exclusive<T>(f: () => Promise<T>): Promise<T> {
    return this.ranges.run(0, Number.MAX_SAFE_INTEGER, () =>
      this.meta.run(async () => {
        await this.flushLocked();
        const r = await f();
        await this.flushLocked();
        return r;
      }),
    );
  }

  /** The virtual size and L1 location the write path works with (changed by a resize). */
  setGeometry(g: { size?: number; l1Offset?: number }): void {
    if (g.size !== undefined) this.cfg.size = g.size;
    if (g.l1Offset !== undefined) this.cfg.l1Offset = g.l1Offset;
  }

  /**
   * Unmap every cluster of L2 table `i` from `fromIndex` on (shrinking;
   * inside exclusive()): the entries become unallocated and their clusters'
   * references are released once the tables are durable.
   */
  async unmapTableTail(i: number, fromIndex: number): Promise<void> {
    const { mapper } = this.cfg;
    const entries = mapper.tableSpan / this.clusterSize;
    for (let k = fromIndex; k < entries; k++) {
      const g = i * mapper.tableSpan + k * this.clusterSize;
      const old = await this.entry(g);
      if (old.hi === 0 && old.lo === 0 && old.zeroBits === 0 && old.allocBits === 0) continue;
      await this.setEntry(g, { hi: 0, lo: 0, zeroBits: 0, allocBits: 0 });
      this.releaseOld(old);
    }
  }

  /** Release every cluster table `i` maps, and the table itself (inside exclusive()). */
  async dropTable(i: number): Promise<void> {
    const { mapper } = this.cfg;
    const l1 = mapper.l1Entry(i);
    const table = entryOffset(l1.hi, l1.lo);
    if (table === 0) return;
    const entries = mapper.tableSpan / this.clusterSize;
    for (let k = 0; k < entries; k++) {
      const old = await this.entry(i * mapper.tableSpan + k * this.clusterSize);
      this.releaseOld(old);
    }
    mapper.setL1(i, 0, false);
    this.cfg.refcounts.queueFree(table, this.clusterSize);
  }

  // ------------------------------------------------------------ metadata

  private async entry(guest: number): Promise<Entry> {
    const { mapper } = this.cfg;
    const e = await mapper.entry(guest);
    return { hi: e.hi, lo: e.lo, zeroBits: e.zeroBits, allocBits: e.allocBits };
  }

  /** Store an entry, allocating (or copying, if shared) its L2 table first. */
  private async setEntry(guest: number, e: Entry): Promise<void> {
    const { mapper } = this.cfg;
    const t = await this.ownTable(Math.floor(guest / mapper.tableSpan));
    const p = Math.floor((guest % mapper.tableSpan) / this.clusterSize) * this.entrySize;
    t.setUint32(p, e.hi, false);
    t.setUint32(p + 4, e.lo, false);
    if (this.cfg.extL2) {
      t.setUint32(p + 8, e.zeroBits, false);
      t.setUint32(p + 12, e.allocBits, false);
    }
  }

  /** L2 table `i`, this image's own: allocated (or copied, if shared with a snapshot) when it is not. */
  private async ownTable(i: number): Promise<DataView> {
    const { mapper } = this.cfg;
    const l1 = mapper.l1Entry(i);
    let t = await mapper.tableForWrite(i);
    if (!t || !(l1.hi & C.OFLAG_COPIED_HI)) {
      // No table yet, or one shared with a snapshot: this image gets its own.
      await this.markDirtyForLazyRefcounts();
      const host = await this.cfg.refcounts.allocate(1);
      const fresh = new Uint8Array(this.clusterSize);
      if (t) fresh.set(new Uint8Array(t.buffer, t.byteOffset, this.clusterSize));
      // Written now, though nothing points at it yet: the space is taken
      // while the data is, so on a filling disk the flush that hooks the
      // table in overwrites it in place instead of failing and leaving all
      // the data behind it unreachable (QEMU writes new tables at once too).
      try {
        await this.cfg.storage.write(fresh, host);
      } catch (e) {
        await this.cfg.refcounts.update(host, this.clusterSize, -1);
        throw e;
      }
      const oldTable = entryOffset(l1.hi, l1.lo);
      const view = new DataView(fresh.buffer);
      mapper.installTable(i, view);
      mapper.setL1(i, host, true);
      if (oldTable !== 0) this.cfg.refcounts.queueFree(oldTable, this.clusterSize);
      t = view;
    }
    return t;
  }

  private async markDirtyForLazyRefcounts(): Promise<void> {
    if (!this.cfg.lazyRefcounts || this.dirtyBitSet) return;
    await this.cfg.setIncompatible(C.INCOMPAT_DIRTY, true);
    this.dirtyBitSet = true;
  }

  // ----------------------------------------------------------------- flush

  /** The flush sequence: refcounts, sync, L2 tables, sync, L1, sync, then deferred frees. */
  async flush(): Promise<void> {
    await this.meta.run(() => this.flushLocked());
  }

  private async flushLocked(): Promise<void> {
    const { storage, data, mapper, refcounts } = this.cfg;
    await refcounts.flushBlocks();
    await storage.flush();
    if (data !== storage) await data.flush();
    if (mapper.hasDirty) {
      await mapper.writeDirtyTables();
      await storage.flush();
      await mapper.writeDirtyL1(this.cfg.l1Offset);
      await storage.flush();
    }
    if (refcounts.hasPendingFrees) {
      await refcounts.applyPendingFrees();
      // Written now too, so a clean close leaves no leaks behind.
      await refcounts.flushBlocks();
      await storage.flush();
    }
  }

  /** Flush, then mark the image clean (lazy refcounts). */
  async close(): Promise<void> {
    await this.meta.run(async () => {
      await this.flushLocked();
      if (this.dirtyBitSet) {
        await this.cfg.setIncompatible(C.INCOMPAT_DIRTY, false);
        this.dirtyBitSet = false;
      }
    });
  }
}

/** Bits a..b-1 of a 32-bit word. */
function rangeBits(a: number, b: number): number {
  if (b - a >= 32) return ALL_SUBCLUSTERS;
  return (((2 ** (b - a) - 1) * 2 ** a) >>> 0) as number;
}

function sameEntry(a: Entry, b: Entry): boolean {
  return a.hi === b.hi && a.lo === b.lo && a.zeroBits === b.zeroBits && a.allocBits === b.allocBits;
}

function padTo(chunk: Uint8Array, size: number): Uint8Array {
  const b = new Uint8Array(size);
  b.set(chunk);
  return b;
}
