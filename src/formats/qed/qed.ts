/**
 * QED (qed-spec.rst): a header, an L1 table, L2 tables and data clusters,
 * all cluster-aligned; no refcounts. Reads answer where a guest range lives
 * and leave the I/O to the block layer. Writes allocate append-only at the
 * end of the file, as QEMU does, in this order:
 *
 * - without a backing file, NEED_CHECK is set (header written and flushed)
 *   before the first allocating write, as QEMU does;
 * - new data is flushed before the L2 entry points at it, with or without
 *   a backing file. QEMU skips this flush without a backing file and lets
 *   the NEED_CHECK repair fix an entry that points past the end of the file
 *   after a crash; qimg keeps every crash image free of such corruption
 *   (`check` finds none), at the cost of one flush per allocating write;
 * - a new L2 table is written whole and flushed before the L1 entry points
 *   at it.
 *
 * NEED_CHECK is cleared by flush() when no allocation is in flight, and on
 * close.
 */
import type { BackingReader, BackingRef, DriverContext, FormatDriver, Mapping, ResizeRequest } from '../../block/driver.js';
import type { DriverInfo } from '../../block/info.js';
import { Mutex, RangeLock } from '../../block/locks.js';
import { ImageError, corrupt } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import { alignDown, alignUp, writeU64 } from '../../units.js';
import { checkQedImage, type QedCheckReport } from './check.js';
import { ENTRY_BYTES, ENTRY_ZERO, F_BACKING_FILE, F_BACKING_FORMAT_NO_PROBE, F_NEED_CHECK, HEADER_BYTES } from './constants.js';
import { maxImageSize, needsCheck, parseHeader, readBacking, serializeHeader, type QedHeader } from './header.js';
import { QedMapper } from './mapping.js';
import { isUnallocated, isValidTableOffset, type QedGeometry } from './table.js';

/** Largest allocation (and so copy buffer) one step of a write makes. */
const MAX_ALLOC_BYTES = 16 * 1024 * 1024;
/** Largest buffer of zeros written at once. */
const ZERO_CHUNK = 1024 * 1024;

type AllocKind = 'zero' | 'unallocated';

export class QedDriver implements FormatDriver {
  readonly format = 'qed' as const;
  size: number;
  readonly storage: Storage;
  readonly writable: boolean;
  backing?: BackingRef;
  readonly header: QedHeader;
  readonly geometry: QedGeometry;
  private mapper: QedMapper;
  private backingFile: BackingReader | null = null;
  /** L1/L2 updates, the header and the end-of-file allocator. */
  private readonly meta = new Mutex();
  /** Whole clusters touched by a write: one allocation per cluster. */
  private readonly ranges = new RangeLock();
  /** Allocations between choosing clusters and updating L2: NEED_CHECK must stay. */
  private allocationsInFlight = 0;
  /** The open-time check left corruptions: NEED_CHECK must stay set. */
  private keepNeedCheck = false;

  constructor(storage: Storage, header: QedHeader, geometry: QedGeometry, backing: BackingRef | undefined, writable = false) {
    this.storage = storage;
    this.header = header;
    this.geometry = geometry;
    this.size = header.imageSize;
    this.writable = writable;
    if (backing) this.backing = backing;
    this.mapper = new QedMapper(storage, geometry, header.l1TableOffset, header.imageSize);
  }

  /**
   * The image was not closed cleanly. A read-only open proceeds as it is
   * (QEMU checks and repairs only on a read-write open).
   */
  get needsCheck(): boolean {
    return needsCheck(this.header);
  }

  /** Read the L1 table now, so that an unreadable one fails the open. */
  async load(): Promise<void> {
    await this.mapper.loadL1();
  }

  attachBacking(backing: BackingReader | null): void {
    this.backingFile = backing;
  }

  getMapping(offset: number, maxLength: number): Promise<Mapping> {
    return this.mapper.getMapping(offset, maxLength);
  }

  async info(): Promise<DriverInfo> {
    // QEMU 7.2's QED driver does not report NEED_CHECK: qemu-img info prints
    // dirty-flag false for QED whatever the header says.
    return { clusterSize: this.geometry.clusterSize, dirty: false };
  }

  /** The consistency scan; `fix` zeroes invalid entries (read-write only). */
  async check(opts: { fix: boolean }): Promise<QedCheckReport> {
    if (opts.fix && !this.writable) throw new ImageError('read-only', `Image '${this.storage.name}' is read-only`);
    const run = async (): Promise<QedCheckReport> => {
      const report = await checkQedImage(this.storage, this.header, this.geometry, opts);
      if (report.corruptionsFixed > 0) this.mapper.clear();
      if (opts.fix) await this.markClean(report);
      return report;
    };
    return opts.fix ? this.meta.run(run) : run();
  }

  /**
   * Runs on a read-write open: unknown autoclear bits go, and an image not
   * closed cleanly is checked and repaired (QEMU's bdrv_qed_do_open).
   */
  async openWritable(): Promise<void> {
    if (this.header.autoclearFeatures !== 0n) {
      this.header.autoclearFeatures = 0n;
      await this.writeHeader();
      await this.storage.flush();
    }
    if (needsCheck(this.header)) {
      const report = await checkQedImage(this.storage, this.header, this.geometry, { fix: true });
      if (report.checkErrors > 0) throw corrupt('Image corrupted');
      if (report.corruptionsFixed > 0) this.mapper.clear();
      await this.markClean(report);
    }
  }

  /**
   * qemu's bdrv_qed_change_backing_file: the name goes right after the
   * fixed header, the backing-file bit says whether there is one, and only
   * a raw backing file sets the no-probe bit (other formats are probed).
   */
  async setBacking(name: string | undefined, format: string | undefined): Promise<void> {
    if (!this.writable) throw new ImageError('read-only', `Image '${this.storage.name}' is read-only`);
    const bytes = name === undefined ? new Uint8Array(0) : new TextEncoder().encode(name);
    if (HEADER_BYTES + bytes.length > this.geometry.headerBytes) throw new ImageError('unsupported', 'No space left in the file header', { errno: 'ENOSPC' });
    await this.meta.run(async () => {
      await this.storage.flush();
      const h = this.header;
      let features = h.features & ~(F_BACKING_FILE | F_BACKING_FORMAT_NO_PROBE);
      if (name !== undefined) features |= F_BACKING_FILE | (format === 'raw' ? F_BACKING_FORMAT_NO_PROBE : 0n);
      const next: QedHeader = { ...h, features, backingFilenameOffset: name === undefined ? 0 : HEADER_BYTES, backingFilenameSize: bytes.length };
      const buf = new Uint8Array(HEADER_BYTES + bytes.length);
      buf.set(serializeHeader(next), 0);
      buf.set(bytes, HEADER_BYTES);
      await this.storage.write(buf, 0);
      await this.storage.flush();
      Object.assign(h, next);
    });
    this.backing = name === undefined ? undefined : format === 'raw' ? { name, format: 'raw' } : { name };
  }

  /** QEMU's qed_check_mark_clean: only when nothing is left to repair. */
  private async markClean(report: QedCheckReport): Promise<void> {
    if (report.corruptions > 0 || report.checkErrors > 0) {
      this.keepNeedCheck = true;
      return;
    }
    this.keepNeedCheck = false;
    if (!needsCheck(this.header)) return;
    // The repairs must be on disk before the bit that asks for them goes.
    await this.storage.flush();
    this.header.features &= ~F_NEED_CHECK;
    await this.writeHeader();
    await this.storage.flush();
  }

  /**
   * qemu's QED truncate: grow only, no preallocation, within what the fixed
   * L1 table can address; only the header's image size changes. A backing
   * file longer than the image would show through the new area, and QED
   * cannot zero it, so that is refused as qemu's block layer refuses it.
   */
  async resize(newSize: number, req: ResizeRequest): Promise<void> {
    if (this.backingFile && this.backingFile.size > this.size && newSize > this.size) {
      throw new ImageError('unsupported', 'Block driver does not support requested flags');
    }
    if (req.preallocation !== 'off') throw new ImageError('unsupported', `Unsupported preallocation mode '${req.preallocation}'`);
    if (newSize % 512 !== 0 || BigInt(newSize) > maxImageSize(this.geometry.clusterSize, this.geometry.tableSize)) {
      throw new ImageError('bad-argument', 'Invalid image size specified');
    }
    if (newSize < this.size) throw new ImageError('unsupported', 'Shrinking images is currently not supported');
    await this.meta.run(async () => {
      const old = this.header.imageSize;
      this.header.imageSize = newSize;
      try {
        await this.writeHeader();
        await this.storage.flush();
      } catch (e) {
        this.header.imageSize = old;
        throw e;
      }
      // The L1 table is fixed; the mapper reads as many of its entries as the size reaches.
      this.mapper.clear();
      this.mapper = new QedMapper(this.storage, this.geometry, this.header.l1TableOffset, newSize);
      await this.mapper.loadL1();
      this.size = newSize;
    });
  }

  private async writeHeader(): Promise<void> {
    await this.storage.write(serializeHeader(this.header), 0);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    const cs = this.geometry.clusterSize;
    const end = offset + data.length;
    await this.ranges.run(alignDown(offset, cs), alignUp(end, cs), async () => {
      let pos = offset;
      while (pos < end) {
        const m = await this.mapper.getMapping(pos, this.stepEnd(pos, end) - pos);
        let stop = pos + m.length;
        if (m.kind === 'data') {
          await this.storage.write(data.subarray(pos - offset, stop - offset), m.hostOffset);
        } else if (m.kind === 'zero' || m.kind === 'unallocated') {
          stop = Math.min(stop, alignDown(pos, cs) + Math.max(cs, alignDown(MAX_ALLOC_BYTES, cs)));
          await this.allocateAndWrite(pos, data.subarray(pos - offset, stop - offset), m.kind);
        } else {
          throw corrupt('QED has no compressed clusters');
        }
        pos = stop;
      }
    });
  }

  /** A step of a request never crosses an L2 table's range. */
  private stepEnd(pos: number, end: number): number {
    const l2 = this.geometry.l2Coverage;
    return Math.min(end, (Math.floor(pos / l2) + 1) * l2);
  }

  /**
   * New clusters for `bytes` at guest `pos`: the untouched head and tail of
   * the first and last cluster come from what they read as before (the
   * backing file for unallocated clusters, zeros for zero clusters), and
   * the whole run goes out in one write.
   */
  private async allocateAndWrite(pos: number, bytes: Uint8Array, kind: AllocKind): Promise<void> {
    const cs = this.geometry.clusterSize;
    const first = alignDown(pos, cs);
    const last = alignUp(pos + bytes.length, cs);
    const n = (last - first) / cs;
    this.allocationsInFlight++;
    try {
      const host = await this.meta.run(async () => {
        await this.setNeedCheck();
        return this.allocClusters(n);
      });
      let buf = bytes;
      if (first !== pos || last !== pos + bytes.length) {
        buf = new Uint8Array(last - first);
        await this.readBefore(kind, first, buf.subarray(0, pos - first));
        buf.set(bytes, pos - first);
        const tail = pos + bytes.length;
        await this.readBefore(kind, tail, buf.subarray(tail - first));
      }
      await this.storage.write(buf, host);
      await this.storage.flush();
      await this.meta.run(() => this.setEntries(first, n, (i) => host + i * cs));
    } finally {
      this.allocationsInFlight--;
    }
  }

  /**
   * What [pos, pos + into.length) read as before allocation. A zero cluster
   * reads as zeros even over a backing file: copying backing data into its
   * untouched part (as QEMU 7.2 does) would change bytes nobody wrote.
   */
  private async readBefore(kind: AllocKind, pos: number, into: Uint8Array): Promise<void> {
    if (into.length === 0) return;
    const b = this.backingFile;
    const n = kind === 'unallocated' && b ? Math.max(0, Math.min(into.length, b.size - pos)) : 0;
    if (n > 0) await b!.read(pos, into.subarray(0, n));
    into.fill(0, n);
  }

  /** Under meta: QEMU's qed_should_set_need_check. */
  private async setNeedCheck(): Promise<void> {
    if (this.backingFile || needsCheck(this.header)) return;
    this.header.features |= F_NEED_CHECK;
    await this.writeHeader();
    await this.storage.flush();
  }

  /** Under meta: `n` clusters at the end of the file (QEMU's file_size lives in geometry.fileSize). */
  private allocClusters(n: number): number {
    const g = this.geometry;
    const offset = g.fileSize;
    g.fileSize += n * g.clusterSize;
    return offset;
  }

  /**
   * Under meta: point the L2 entries of `n` clusters from guest `first`
   * (inside one L2 range) at `valueOf(i)`, creating the L2 table if needed.
   */
  private async setEntries(first: number, n: number, valueOf: (i: number) => number): Promise<void> {
    const g = this.geometry;
    const l1Index = Math.floor(first / g.l2Coverage);
    const index = (first - l1Index * g.l2Coverage) / g.clusterSize;
    const values = Array.from({ length: n }, (_, i) => valueOf(i));
    const l2Offset = await this.mapper.l1Entry(l1Index);
    if (!isUnallocated(l2Offset)) {
      if (!isValidTableOffset(g, l2Offset)) throw corrupt(`QED L2 table offset 0x${l2Offset.toString(16)} in L1 entry ${l1Index} is invalid`);
      await this.storage.write(encodeEntries(values), l2Offset + index * ENTRY_BYTES);
      await this.mapper.setL2Entries(l2Offset, index, values);
      return;
    }
    const tableBytes = g.tableSize * g.clusterSize;
    const table = this.allocClusters(g.tableSize);
    this.mapper.forgetRange(table, table + tableBytes);
    const entriesFrom = index * ENTRY_BYTES;
    const entries = encodeEntries(values);
    for (let at = 0; at < tableBytes; at += ZERO_CHUNK) {
      const piece = new Uint8Array(Math.min(ZERO_CHUNK, tableBytes - at));
      const lo = Math.max(at, entriesFrom);
      const hi = Math.min(at + piece.length, entriesFrom + entries.length);
      if (lo < hi) piece.set(entries.subarray(lo - entriesFrom, hi - entriesFrom), lo - at);
      await this.storage.write(piece, table + at);
    }
    await this.storage.flush();
    await this.storage.write(encodeEntries([table]), this.header.l1TableOffset + l1Index * ENTRY_BYTES);
    await this.mapper.setL1Entry(l1Index, table);
  }

  /**
   * Cluster-aligned parts become zero clusters (allocated clusters are
   * zeroed in place, as QEMU does); unaligned head and tail are written as
   * explicit zeros. mayUnmap changes nothing: QED never frees a cluster.
   */
  async writeZeroes(offset: number, length: number): Promise<void> {
    const cs = this.geometry.clusterSize;
    const end = offset + length;
    const a = alignUp(offset, cs);
    const b = alignDown(end, cs);
    if (a >= b) return this.writeExplicitZeros(offset, length);
    if (offset < a) await this.writeExplicitZeros(offset, a - offset);
    await this.ranges.run(a, b, async () => {
      let pos = a;
      while (pos < b) {
        const m = await this.mapper.getMapping(pos, this.stepEnd(pos, b) - pos);
        if (m.kind === 'data') {
          await this.zeroHost(m.hostOffset, m.length);
        } else if (m.kind === 'unallocated') {
          this.allocationsInFlight++;
          try {
            await this.meta.run(async () => {
              await this.setNeedCheck();
              await this.setEntries(pos, m.length / cs, () => ENTRY_ZERO);
            });
          } finally {
            this.allocationsInFlight--;
          }
        }
        pos += m.length;
      }
    });
    if (b < end) await this.writeExplicitZeros(b, end - b);
  }

  private async writeExplicitZeros(offset: number, length: number): Promise<void> {
    // Never more than two clusters: the aligned middle is handled separately.
    await this.write(offset, new Uint8Array(length));
  }

  private async zeroHost(offset: number, length: number): Promise<void> {
    if (this.storage.writeZeroes) return this.storage.writeZeroes(offset, length);
    const chunk = new Uint8Array(Math.min(length, ZERO_CHUNK));
    for (let pos = 0; pos < length; pos += chunk.length) {
      await this.storage.write(chunk.subarray(0, Math.min(chunk.length, length - pos)), offset + pos);
    }
  }

  /** QED has no discard (QEMU's driver has no bdrv_co_pdiscard): the data stays. */
  async discard(): Promise<void> {}

  /**
   * Everything written is already on the storage; make it durable, then
   * clear NEED_CHECK if no allocation is under way (QEMU's need-check timer,
   * run at every flush instead of 5 s later).
   */
  async flush(): Promise<void> {
    if (!this.writable) return;
    await this.storage.flush();
    if (!needsCheck(this.header) || this.keepNeedCheck) return;
    await this.meta.run(async () => {
      if (this.allocationsInFlight > 0 || !needsCheck(this.header) || this.keepNeedCheck) return;
      // Allocations that finished after the first flush must be durable too.
      await this.storage.flush();
      this.header.features &= ~F_NEED_CHECK;
      await this.writeHeader();
      await this.storage.flush();
    });
  }

  async close(): Promise<void> {
    try {
      if (this.writable) await this.flush();
    } finally {
      this.mapper.clear();
      await this.storage.close();
    }
  }
}

function encodeEntries(values: readonly number[]): Uint8Array {
  const out = new Uint8Array(values.length * ENTRY_BYTES);
  const v = new DataView(out.buffer);
  values.forEach((x, i) => writeU64(v, i * ENTRY_BYTES, x, true));
  return out;
}

export async function openQed(ctx: DriverContext): Promise<FormatDriver> {
  const { storage } = ctx;
  const head = new Uint8Array(HEADER_BYTES);
  await storage.read(head, 0);
  const { header, geometry } = parseHeader(head, await storage.size());
  const backing = await readBacking(storage, header);
  const driver = new QedDriver(storage, header, geometry, backing, ctx.writable);
  if (ctx.writable) await driver.openWritable();
  if (!ctx.metadataOnly) await driver.load();
  return driver;
}
