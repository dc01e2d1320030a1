/**
 * The qcow2 driver (read side): opening with QEMU's validation, mapping
 * guest ranges through L1/L2, compressed reads, and qemu-img info's
 * qcow2 fields.
 */
import type { PersistentBitmapSet } from '../../block/bitmaps.js';
import type { BackingReader, DriverContext, FormatDriver, Mapping, ResizeRequest } from '../../block/driver.js';
import type { DriverInfo, FormatSpecific } from '../../block/info.js';
import { ImageError, isImageError } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import { bitmapInfo, readBitmapDirectory } from './bitmap.js';
import * as C from './constants.js';
import { repairDirty } from './check.js';
import { Decompressor } from './compress.js';
import type { Codecs } from '../../block/codecs.js';
import { checkCompressionLevel, withCompressionLevel } from '../../block/compression-level.js';
import { readHeader, serializeHeader, sizeToL1, type Qcow2Header } from './header.js';
import { Sub } from './l2.js';
import type { LuksInfo } from '../../crypto/luks-info.js';
import { CipherStorage } from '../../block/cipher-storage.js';
import { L2Mapper } from './mapping.js';
import { RefcountReader } from './refcount.js';
import type { RefcountStore } from './refcounts.js';
import { loadRefcountStore } from './refcount-open.js';
import { readSnapshots, snapshotInfo, type Snapshot } from './snapshot.js';
import { Qcow2Writer } from './writer.js';
import { checkQcow2Resize, growQcow2, shrinkQcow2, type ResizeParts } from './resize.js';
import { SnapshotLoadError } from '../../block/snapshot.js';
import { findSnapshot, findSnapshotByIdOrName } from './snapshot-table.js';
import { canResetCompletely, resetCompletely } from './make-empty.js';
import { needsSecret, openEncryption } from './encryption.js';
import { PersistentBitmaps } from './persistent-bitmaps.js';
import { overlappingMetadata, snapshotEntrySize, type OverlapSources } from './overlap.js';

export interface Qcow2Parts {
  header: Qcow2Header;
  storage: Storage;
  /** Where guest data lives: the image file, or the external data file once opened. */
  dataStorage: Storage | undefined;
  /** Close dataStorage with the image (we opened it). */
  ownsDataStorage: boolean;
  l1: Uint8Array;
  snapshots: Snapshot[];
  /** qemu-img info's encrypt block of a LUKS image. */
  luks: LuksInfo | undefined;
  /**
   * The guest data seen through the image's cipher, when it is encrypted
   * and was opened with its key. `ivFromGuest`: the IV counts guest sectors
   * (legacy AES), not host sectors (LUKS).
   */
  cipher?: { storage: CipherStorage; ivFromGuest: boolean };
  ctx: DriverContext;
  /** Present when the image is open for writing. */
  refcountStore?: RefcountStore;
  /** Persistent dirty bitmaps, kept when the image is open for writing. */
  bitmaps?: PersistentBitmaps;
}

export class Qcow2Driver implements FormatDriver {
  readonly format = 'qcow2' as const;
  size: number;
  readonly storage: Storage;
  readonly writable: boolean;
  backing?: { name: string; format?: string };
  readonly header: Qcow2Header;
  readonly snapshots: readonly Snapshot[];

  private readonly parts: Qcow2Parts;
  private readonly clusterSize: number;
  private readonly mapper: L2Mapper;
  private readonly refcounts: RefcountReader;
  private readonly decompressor: Decompressor;
  private readonly hasDataFile: boolean;
  private preallocation: Promise<boolean> | undefined;
  private backingReader: BackingReader | null = null;
  private readonly writer: Qcow2Writer | undefined;
  private prepared: Promise<void> | undefined;
  /** Persistent bitmaps this writable open maintains. */
  readonly bitmaps: PersistentBitmaps | undefined;

  constructor(parts: Qcow2Parts) {
    const h = parts.header;
    this.parts = parts;
    this.header = h;
    this.storage = parts.storage;
    this.snapshots = parts.snapshots;
    this.clusterSize = h.clusterSize;
    // QEMU counts whole sectors: the size field rounds down to 512.
    this.size = h.size - (h.size % C.SECTOR_SIZE);
    if (h.backingFile !== undefined) {
      this.backing = h.extensions.backingFormat !== undefined ? { name: h.backingFile, format: h.extensions.backingFormat } : { name: h.backingFile };
    }
    const inc = Number(h.incompatibleFeatures);
    this.hasDataFile = (inc & C.INCOMPAT_DATA_FILE) !== 0;
    const extL2 = (inc & C.INCOMPAT_EXTL2) !== 0;
    const entrySize = extL2 ? C.L2_ENTRY_SIZE_EXTENDED : C.L2_ENTRY_SIZE;
    const tablesNeeded = Number(sizeToL1(BigInt(h.size), h.clusterBits, h.clusterBits - Math.log2(entrySize)));
    this.mapper = new L2Mapper({
      storage: parts.storage,
      clusterBits: h.clusterBits,
      extL2,
      hasDataFile: this.hasDataFile,
      version: h.version,
      l1: parts.l1,
      l1Size: h.l1Size,
      // QEMU's default: enough to cover the image, at most 32 MiB of tables.
      cacheTables: Math.max(2, Math.min(Math.floor(C.L2_CACHE_MAX_BYTES / h.clusterSize), tablesNeeded)),
    });
    this.refcounts = new RefcountReader({
      storage: parts.storage,
      clusterBits: h.clusterBits,
      refcountOrder: h.refcountOrder,
      tableOffset: h.refcountTableOffset,
      tableClusters: h.refcountTableClusters,
    });
    const writeCodecsAtLevel = writeCodecs(parts.ctx, h.compressionType);
    this.decompressor = new Decompressor(parts.storage, h.clusterBits, h.compressionType, parts.ctx.codecs);
    this.writable = parts.refcountStore !== undefined;
    this.bitmaps = parts.bitmaps;
    if (parts.refcountStore && this.encrypted && !parts.cipher) throw needsSecret();
    if (parts.refcountStore) {
      const autoclear = Number(h.autoclearFeatures & 0xffffffffn);
      const cipher = parts.cipher;
      this.writer = new Qcow2Writer({
        storage: parts.storage,
        data: cipher?.storage ?? parts.dataStorage ?? parts.storage,
        dataAt: cipher?.ivFromGuest ? (guestMinusHost) => cipher.storage.withIvOffset(guestMinusHost) : undefined,
        encrypted: cipher !== undefined,
        clusterBits: h.clusterBits,
        version: h.version,
        extL2,
        hasDataFile: this.hasDataFile,
        dataFileRaw: (autoclear & C.AUTOCLEAR_DATA_FILE_RAW) !== 0,
        lazyRefcounts: (Number(h.compatibleFeatures & 0xffffffffn) & C.COMPAT_LAZY_REFCOUNTS) !== 0,
        compressionType: h.compressionType,
        size: this.size,
        l1Offset: h.l1TableOffset,
        hasBacking: () => this.backingReader !== null,
        mapper: this.mapper,
        refcounts: parts.refcountStore,
        decompressor: this.decompressor,
        codecs: writeCodecsAtLevel,
        readGuest: (offset, into) => this.readGuest(offset, into),
        setIncompatible: (bits, on) => this.setIncompatible(bits, on),
        overlap: (start, end) => overlappingMetadata(this.overlapSources(parts.refcountStore!), start, end),
      });
    }
  }

  private overlapSourcesCache: OverlapSources | undefined;
  private overlapSources(refcounts: RefcountStore): OverlapSources {
    const h = this.header;
    const enc = new TextEncoder();
    let snapshotBytes = 0;
    for (const sn of this.snapshots) snapshotBytes += snapshotEntrySize(sn.extraDataSize, enc.encode(sn.id).length, enc.encode(sn.name).length);
    const bm = h.extensions.bitmaps;
    this.overlapSourcesCache ??= {
      clusterSize: this.clusterSize,
      l1: () => ({ start: h.l1TableOffset, end: h.l1TableOffset + h.l1Size * C.L1_ENTRY_SIZE }),
      isL2Table: (c) => this.mapper.isL2Table(c),
      refcountTable: () => {
        const t = refcounts.tableLocation;
        return { start: t.offset, end: t.offset + t.clusters * this.clusterSize };
      },
      isRefcountBlock: (c) => refcounts.isRefcountBlock(c),
      snapshotTable: this.snapshots.length > 0 ? { start: h.snapshotsOffset, end: h.snapshotsOffset + snapshotBytes } : undefined,
      inactiveL1: this.snapshots.map((sn) => ({ start: Number(sn.l1TableOffset), end: Number(sn.l1TableOffset) + sn.l1Size * C.L1_ENTRY_SIZE })),
      bitmapDirectory: bm ? { start: bm.directoryOffset, end: bm.directoryOffset + bm.directorySize } : undefined,
    };
    return this.overlapSourcesCache;
  }

  attachBacking(backing: BackingReader | null): void {
    this.backingReader = backing;
  }

  /**
   * Guest bytes as they read now, for copy-on-write. The caller holds the
   * range lock of these clusters, so their mappings cannot change under us.
   */
  private async readGuest(offset: number, into: Uint8Array): Promise<void> {
    const end = Math.min(offset + into.length, this.size);
    let pos = 0;
    while (offset + pos < end) {
      const m = await this.getMapping(offset + pos, end - offset - pos);
      const part = into.subarray(pos, pos + m.length);
      if (m.kind === 'data') await m.storage.read(part, m.hostOffset);
      else if (m.kind === 'compressed') await this.readCompressed(offset + pos, part);
      else if (m.kind === 'unallocated' && this.backingReader) {
        const b = this.backingReader;
        const n = Math.max(0, Math.min(part.length, b.size - (offset + pos)));
        if (n > 0) await b.read(offset + pos, part.subarray(0, n));
        part.fill(0, n);
      } else part.fill(0);
      pos += m.length;
    }
    into.fill(0, Math.max(0, end - offset));
  }

  /**
   * qemu's qcow2_change_backing_file: the name and the backing format
   * extension change and the whole first cluster is rewritten (the name
   * after the extensions), once everything written before is on disk.
   */
  async setBacking(name: string | undefined, format: string | undefined): Promise<void> {
    this.writerOrThrow();
    const h = this.header;
    if (name !== undefined && new TextEncoder().encode(name).length > C.MAX_BACKING_FILE_NAME) throw new ImageError('bad-argument', 'Invalid argument');
    // An image whose data file is the guest disk (data_file_raw) has no backing file.
    if (name !== undefined && Number(h.autoclearFeatures) & C.AUTOCLEAR_DATA_FILE_RAW) throw new ImageError('bad-argument', 'Invalid argument');
    const before = { backingFile: h.backingFile, backingFormat: h.extensions.backingFormat };
    h.backingFile = name;
    h.extensions.backingFormat = name === undefined ? undefined : format;
    let cluster: Uint8Array;
    try {
      cluster = serializeHeader(h);
    } catch (e) {
      h.backingFile = before.backingFile;
      h.extensions.backingFormat = before.backingFormat;
      throw isImageError(e, 'unsupported') ? new ImageError('unsupported', 'No space left in the file header', { errno: 'ENOSPC' }) : e;
    }
    await this.flush();
    await this.storage.write(cluster, 0);
    await this.storage.flush();
    h.backingFileSize = name === undefined ? 0 : new DataView(cluster.buffer).getUint32(16, false);
    h.backingFileOffset = name === undefined ? 0 : Number(new DataView(cluster.buffer).getBigUint64(8, false));
    this.backing = name === undefined ? undefined : format !== undefined ? { name, format } : { name };
  }

  /** The image was reset by makeEmpty: its in-memory tables are stale, so it takes no more writes. */
  private emptied = false;

  /**
   * qemu's qcow2_make_empty (after a commit): every cluster of the active
   * layer goes, so the backing file shows through everywhere. A v3 image
   * without snapshots, bitmaps or data file is reset in place and its file
   * cut short; any other image has every cluster discarded.
   */
  async makeEmpty(): Promise<void> {
    const w = this.writerOrThrow();
    await this.prepareForWrite();
    await w.flush();
    if (canResetCompletely(this.header, this.snapshots.length)) {
      this.emptied = true;
      await resetCompletely(this.storage, this.header, (on) => this.setIncompatible(C.INCOMPAT_DIRTY, on));
      return;
    }
    await this.markCorruptOnError(() => w.discard(0, this.size, true));
    await w.flush();
  }

  /** Set or clear incompatible feature bits: 8 bytes of the header, synced. */
  private async setIncompatible(bits: number, on: boolean): Promise<void> {
    const h = this.header;
    h.incompatibleFeatures = on ? h.incompatibleFeatures | BigInt(bits) : h.incompatibleFeatures & ~BigInt(bits);
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, h.incompatibleFeatures, false);
    await this.storage.write(b, 72);
    await this.storage.flush();
  }

  /**
   * Before the first change: autoclear features qimg does not maintain are
   * cleared, as the spec requires of a program that does not support them;
   * the bitmaps bit stays, and the bitmaps are flagged in-use on disk first.
   */
  private async prepareForWrite(): Promise<void> {
    // The key check comes first and is never cached: no write reaches an
    // encrypted image unless its cipher is unlocked, however often it is tried.
    if (this.encrypted && !this.parts.cipher) throw needsSecret();
    this.prepared ??= this.clearUnknownAutoclear().catch((e: unknown) => {
      this.prepared = undefined;
      throw e;
    });
    await this.prepared;
    // Again after a store (bitmap operations store at once); a no-op otherwise.
    if (this.bitmaps) await this.bitmaps.markInUse(this.storage);
  }

  private async clearUnknownAutoclear(): Promise<void> {
    const h = this.header;
    let keep = BigInt(C.AUTOCLEAR_DATA_FILE_RAW);
    if (this.bitmaps) keep |= BigInt(C.AUTOCLEAR_BITMAPS);
    if ((h.autoclearFeatures & ~keep) !== 0n) {
      h.autoclearFeatures &= keep;
      if (h.version === 3) {
        await this.storage.write(serializeHeader(h), 0);
        await this.storage.flush();
      }
    }
  }

  /** Store the bitmaps now (close does it too): after this they are consistent on disk. */
  async storeBitmaps(): Promise<void> {
    if (!this.bitmaps?.needsStore || !this.parts.refcountStore) return;
    await this.writer?.flush();
    const h = this.header;
    await this.bitmaps.store({
      storage: this.storage,
      refcounts: this.parts.refcountStore,
      writeExtension: async (ext) => {
        h.extensions.bitmaps = ext;
        if (ext) h.autoclearFeatures |= BigInt(C.AUTOCLEAR_BITMAPS);
        else h.autoclearFeatures &= ~BigInt(C.AUTOCLEAR_BITMAPS);
        await this.storage.write(serializeHeader(h), 0);
        await this.storage.flush();
      },
    });
  }

  private readOnlyBitmaps: Promise<PersistentBitmaps> | undefined;

  /** The bitmaps; for a change, prepared as for a guest write (flagged in-use on disk). */
  async persistentBitmaps(forChange: boolean): Promise<PersistentBitmapSet> {
    if (forChange) {
      this.writerOrThrow();
      await this.prepareForWrite();
    }
    if (this.bitmaps) return this.bitmaps;
    if (forChange) throw new ImageError('unsupported', 'Cannot store dirty bitmaps in qcow2 v2 files');
    const h = this.header;
    const ext = h.version === 3 && !h.extensions.bitmapsInconsistent ? h.extensions.bitmaps : undefined;
    this.readOnlyBitmaps ??= PersistentBitmaps.load(this.storage, ext, this.clusterSize, this.size, h.version);
    return this.readOnlyBitmaps;
  }

  private writerOrThrow(): Qcow2Writer {
    if (!this.writer) throw new ImageError('read-only', 'Image is read-only');
    if (this.emptied) throw new ImageError('bad-argument', 'The image was emptied; reopen it to write');
    return this.writer;
  }

  async write(offset: number, data: Uint8Array, opts?: { compressed?: boolean }): Promise<void> {
    const w = this.writerOrThrow();
    await this.prepareForWrite();
    this.bitmaps?.markDirty(offset, data.length);
    return this.markCorruptOnError(() => (opts?.compressed ? w.writeCompressed(offset, data) : w.write(offset, data)));
  }

  async writeZeroes(offset: number, length: number, opts: { mayUnmap: boolean }): Promise<void> {
    const w = this.writerOrThrow();
    await this.prepareForWrite();
    this.bitmaps?.markDirty(offset, length);
    return this.markCorruptOnError(() => w.writeZeroes(offset, length, opts.mayUnmap));
  }

  /**
   * Inconsistent tables found while writing are fatal, as in qemu: the
   * corrupt bit is set so no writer trusts the image until it is repaired.
   */
  private async markCorruptOnError<T>(f: () => Promise<T>): Promise<T> {
    try {
      return await f();
    } catch (e) {
      if (!isImageError(e, 'corrupt') || e.message.startsWith('Marking image as corrupt') || e.message === 'No medium found') throw e;
      if (Number(this.header.incompatibleFeatures) & C.INCOMPAT_CORRUPT) throw e;
      await this.setIncompatible(C.INCOMPAT_CORRUPT, true);
      throw new ImageError('corrupt', `Marking image as corrupt: ${e.message}; further corruption events will be suppressed`, { cause: e });
    }
  }

  /** Allocate every cluster (create-time preallocation); returns the end of the last host cluster. */
  async preallocate(writeZeros: boolean): Promise<number> {
    const w = this.writerOrThrow();
    await this.prepareForWrite();
    return w.preallocate(writeZeros);
  }

  /** qemu's qcow2 truncate: see resize.ts. The size changes once the header says so. */
  async resize(newSize: number, req: ResizeRequest): Promise<void> {
    const writer = this.writerOrThrow();
    await this.prepareForWrite();
    const parts: ResizeParts = {
      header: this.header,
      storage: this.storage,
      dataFile: this.hasDataFile ? this.dataStorage() : undefined,
      mapper: this.mapper,
      refcounts: this.parts.refcountStore!,
      writer,
      backing: this.backingReader,
      size: this.size,
    };
    checkQcow2Resize(parts, newSize, req.preallocation);
    this.bitmaps?.checkResize(newSize);
    if (newSize === this.size && req.preallocation === 'off') return;
    await this.markCorruptOnError(async () => {
      if (newSize >= this.size) {
        await growQcow2(parts, newSize, req.preallocation);
      } else {
        // Readers see the smaller size before clusters past it go away.
        this.size = newSize;
        await shrinkQcow2(parts, newSize);
      }
    });
    this.size = newSize;
    this.bitmaps?.resize(newSize);
  }

  async discard(offset: number, length: number): Promise<void> {
    const w = this.writerOrThrow();
    await this.prepareForWrite();
    this.bitmaps?.markDirty(offset, length);
    return this.markCorruptOnError(() => w.discard(offset, length));
  }

  get encrypted(): boolean {
    return this.header.cryptMethod !== C.CRYPT_NONE;
  }

  /** An encrypted image is read and written in whole cipher sectors. */
  get requestAlignment(): number | undefined {
    return this.parts.cipher ? this.parts.cipher.storage.sectorSize : undefined;
  }

  private checkReadable(): void {
    if (this.encrypted && !this.parts.cipher) throw needsSecret();
  }

  /** The storage a data mapping reads through: the cipher's view for an encrypted image (IVs from the guest offset for legacy AES). */
  private guestData(guestOffset: number, hostOffset: number): Storage {
    const c = this.parts.cipher;
    if (!c) return this.dataStorage();
    return c.ivFromGuest ? c.storage.withIvOffset(guestOffset - hostOffset) : c.storage;
  }

  /** Where a cluster without data lies; not told for an encrypted image, as qemu reports no offsets there. */
  private hostPlace(hostOffset: number): { storage?: Storage; hostOffset?: number } {
    return this.encrypted ? {} : { storage: this.dataStorage(), hostOffset };
  }

  private dataStorage(): Storage {
    const s = this.parts.dataStorage;
    if (s) return s;
    if (this.parts.ctx.metadataOnly) throw new ImageError('bad-argument', 'The external data file was not opened: the image was opened for metadata only');
    throw new ImageError('invalid', "'data-file' is required for this image");
  }

  async getMapping(offset: number, maxLength: number): Promise<Mapping> {
    this.checkReadable();
    const run = await this.mapper.lookup(offset, maxLength);
    const length = run.length;
    switch (run.type) {
      case Sub.NORMAL: {
        const storage = this.guestData(offset, run.hostOffset);
        const m: Mapping = { kind: 'data', length, storage, hostOffset: run.hostOffset };
        if (this.parts.cipher) m.opaque = true;
        else if (await this.metadataPreallocated()) m.recurse = true;
        return m;
      }
      case Sub.ZERO_ALLOC:
        return { kind: 'zero', length, ...this.hostPlace(run.hostOffset) };
      case Sub.ZERO_PLAIN:
        return { kind: 'zero', length };
      case Sub.UNALLOCATED_ALLOC:
        return { kind: 'unallocated', length, ...this.hostPlace(run.hostOffset) };
      case Sub.COMPRESSED:
        return { kind: 'compressed', length };
      default:
        return { kind: 'unallocated', length };
    }
  }

  async readCompressed(offset: number, into: Uint8Array): Promise<void> {
    this.checkReadable();
    const cs = this.clusterSize;
    let pos = 0;
    while (pos < into.length) {
      const g = offset + pos;
      const e = await this.mapper.entry(g);
      if (!(e.hi & C.OFLAG_COMPRESSED_HI)) {
        throw new ImageError('bad-argument', `Guest offset ${g} is not in a compressed cluster`);
      }
      const data = await this.decompressor.cluster(e.hi, e.lo);
      const inCluster = g % cs;
      const n = Math.min(cs - inCluster, into.length - pos);
      into.set(data.subarray(inCluster, inCluster + n), pos);
      pos += n;
    }
  }

  /**
   * qcow2_detect_metadata_preallocation, once: many more clusters carry a
   * refcount than the host file really allocates, so holes in the file are
   * preallocated-but-unwritten data.
   */
  metadataPreallocated(): Promise<boolean> {
    this.preallocation ??= (async () => {
      const s = this.storage;
      if (!s.allocatedSize) return false;
      const real = await s.allocatedSize();
      if (real === undefined) return false;
      const fileLength = await s.size();
      const realClusters = Math.floor(real / this.clusterSize);
      const threshold = Math.max(Math.floor((realClusters * 10) / 9), realClusters + 2);
      const end = Math.ceil(fileLength / this.clusterSize);
      const count = await this.refcounts.countAllocated(end, threshold);
      return count >= threshold;
    })();
    return this.preallocation;
  }

  /** Refcount of a host cluster of the image file. */
  refcount(cluster: number): Promise<number> {
    return this.refcounts.refcount(cluster);
  }

  async info(): Promise<DriverInfo> {
    const h = this.header;
    const inc = Number(h.incompatibleFeatures);
    const data: Record<string, unknown> = {
      compat: h.version === 2 ? '0.10' : '1.1',
      'compression-type': C.COMPRESSION_NAMES[h.compressionType as 0 | 1],
      'refcount-bits': 2 ** h.refcountOrder,
    };
    if (h.version === 3) {
      data['lazy-refcounts'] = (Number(h.compatibleFeatures & 0xffffffffn) & C.COMPAT_LAZY_REFCOUNTS) !== 0;
      data.corrupt = (inc & C.INCOMPAT_CORRUPT) !== 0;
      data['extended-l2'] = (inc & C.INCOMPAT_EXTL2) !== 0;
      if (h.extensions.dataFile !== undefined) data['data-file'] = h.extensions.dataFile;
      if (this.hasDataFile) data['data-file-raw'] = (Number(h.autoclearFeatures & 0xffffffffn) & C.AUTOCLEAR_DATA_FILE_RAW) !== 0;
      if (h.extensions.bitmaps) {
        const dir = await readBitmapDirectory(this.storage, h.extensions.bitmaps, this.clusterSize, this.size);
        if (dir.length > 0) data.bitmaps = dir.map(bitmapInfo);
      }
    }
    if (h.cryptMethod === C.CRYPT_AES) data.encrypt = { format: 'aes' };
    else if (this.parts.luks) data.encrypt = this.parts.luks;
    const formatSpecific: FormatSpecific = { type: 'qcow2', data };
    const info: DriverInfo = {
      clusterSize: this.clusterSize,
      encrypted: this.encrypted,
      dirty: (inc & C.INCOMPAT_DIRTY) !== 0,
      formatSpecific,
    };
    if (this.snapshots.length > 0) info.snapshots = this.snapshots.map(snapshotInfo);
    return info;
  }

  async flush(): Promise<void> {
    if (this.emptied) return this.storage.flush();
    await this.writer?.flush();
  }

  async close(): Promise<void> {
    try {
      try {
        if (!this.emptied) await this.writer?.close();
      } catch (e) {
        // qemu's words when closing cannot write the cached metadata back
        // (its L2 cache flush writes the refcounts first, so it names that cache).
        if (!isImageError(e, 'io')) throw e;
        throw new ImageError('io', `Failed to flush the L2 table cache: ${e.message}`, { cause: e, errno: e.errno });
      }
      // Only after the tables are durable; if that failed, the bitmaps stay flagged in-use.
      await this.storeBitmaps();
      if (this.parts.ownsDataStorage) await this.parts.dataStorage?.close();
    } finally {
      await this.storage.close();
    }
  }
}

/** The whole active L1 table (writable opens update it in place). */
async function readWholeL1(storage: Storage, h: Qcow2Header): Promise<Uint8Array> {
  const buf = new Uint8Array(h.l1Size * C.L1_ENTRY_SIZE);
  await storage.read(buf, h.l1TableOffset);
  return buf;
}

/** Active L1 table, read only as far as the file goes (the rest reads as zero). */
async function readL1(storage: Storage, h: Qcow2Header, fileSize: number): Promise<Uint8Array> {
  const want = h.l1Size * C.L1_ENTRY_SIZE; // <= 32 MiB, validated
  const avail = Math.max(0, Math.min(want, fileSize - h.l1TableOffset));
  const buf = new Uint8Array(avail - (avail % C.L1_ENTRY_SIZE));
  if (buf.length > 0) await storage.read(buf, h.l1TableOffset);
  return buf;
}

/**
 * The header as it would read with a snapshot's L1 table and disk size
 * active (qcow2_snapshot_load_tmp): a read-only view of the snapshot.
 */
async function atSnapshot(storage: Storage, header: Qcow2Header, ctx: DriverContext): Promise<Qcow2Header> {
  const ref = ctx.internalSnapshot!;
  if (ctx.writable) throw new ImageError('bad-argument', 'Internal snapshots can only be loaded read-only');
  const size = header.size - (header.size % C.SECTOR_SIZE);
  const list = await readSnapshots(storage, header.snapshotsOffset, header.nbSnapshots, size);
  const i = typeof ref === 'string' ? findSnapshotByIdOrName(list, ref) : findSnapshot(list, ref.id, ref.name);
  if (i < 0) throw new SnapshotLoadError('not-found', "Failed to load snapshot: Can't find snapshot");
  const sn = list[i]!;
  return { ...header, l1TableOffset: Number(sn.l1TableOffset), l1Size: sn.l1Size, size: Number(sn.diskSize) };
}

export async function openQcow2(ctx: DriverContext): Promise<FormatDriver> {
  const storage = ctx.storage;
  let header = await readHeader(storage, { writable: ctx.writable });
  // Before anything is repaired or written: an encrypted image opens for data only with its key.
  const encryption = await openEncryption(storage, header, ctx);
  if (ctx.writable && Number(header.incompatibleFeatures) & C.INCOMPAT_DIRTY) {
    await repairDirty(storage, ctx.onWarning);
    header = await readHeader(storage, { writable: true });
  }
  const fileSize = await storage.size();
  if (ctx.internalSnapshot !== undefined) header = await atSnapshot(storage, header, ctx);
  const l1 = ctx.writable ? await readWholeL1(storage, header) : await readL1(storage, header, fileSize);
  const inc = Number(header.incompatibleFeatures);
  const ext = header.extensions;

  let dataStorage: Storage | undefined;
  let ownsDataStorage = false;
  if (inc & C.INCOMPAT_DATA_FILE) {
    if (ctx.dataFile) {
      dataStorage = ctx.dataFile;
    } else if (!ctx.metadataOnly) {
      if (ext.dataFile === undefined) throw new ImageError('invalid', "'data-file' is required for this image");
      dataStorage = await ctx.openDataFile(ext.dataFile);
      ownsDataStorage = true;
    }
  } else {
    if (ctx.dataFile) throw new ImageError('invalid', "'data-file' can only be set for images with an external data file");
    if (Number(header.autoclearFeatures & 0xffffffffn) & C.AUTOCLEAR_DATA_FILE_RAW) {
      throw new ImageError('invalid', 'data-file-raw requires a data file');
    }
    dataStorage = storage;
  }

  try {
    const virtualSize = header.size - (header.size % C.SECTOR_SIZE);
    const snapshots = await readSnapshots(storage, header.snapshotsOffset, header.nbSnapshots, virtualSize);
    let refcountStore: RefcountStore | undefined;
    if (ctx.writable) {
      refcountStore = await loadRefcountStore(storage, header);
    }
    // QEMU loads the bitmaps of a v3 image on a writable open (unless a program without
    // bitmap support cleared the autoclear bit): their errors refuse the open.
    let bitmaps: PersistentBitmaps | undefined;
    if (refcountStore) {
      const stored = header.version === 3 && !ext.bitmapsInconsistent ? ext.bitmaps : undefined;
      bitmaps = await PersistentBitmaps.load(storage, stored, header.clusterSize, virtualSize, header.version);
    } else if (header.version === 3 && !ext.bitmapsInconsistent && ext.bitmaps) {
      // Read-only opens fail on a directory QEMU would not load either.
      await readBitmapDirectory(storage, ext.bitmaps, header.clusterSize, virtualSize);
    }
    const cipher = encryption.cipher && dataStorage ? { storage: new CipherStorage(dataStorage, encryption.cipher), ivFromGuest: encryption.ivFromGuest } : undefined;
    return new Qcow2Driver({ header, storage, dataStorage, ownsDataStorage, l1, snapshots, luks: encryption.luks, cipher, ctx, refcountStore, bitmaps });
  } catch (e) {
    if (ownsDataStorage) await dataStorage?.close().catch(() => {});
    throw e;
  }
}

/** The codecs compressed writes use: at the level the open asked for, checked against the image's compression type. */
function writeCodecs(ctx: DriverContext, compressionType: number): Codecs {
  if (ctx.compressionLevel === undefined) return ctx.codecs;
  checkCompressionLevel(compressionType === C.COMPRESSION_ZSTD ? 'zstd' : 'zlib', ctx.compressionLevel);
  return withCompressionLevel(ctx.codecs, ctx.compressionLevel);
}
