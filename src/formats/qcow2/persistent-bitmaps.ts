/**
 * The persistent dirty bitmaps of a writable qcow2 image, kept as QEMU
 * keeps them: loaded on open, flagged in-use on disk before the first
 * change, dirtied by every write, stored on close (docs/qcow2-bitmaps.md).
 * A bitmap found in-use on open was not stored by its last writer: it is
 * kept, untouched and still in-use, and never trusted.
 */
import type { PersistentBitmapSet, StoredBitmap } from '../../block/bitmaps.js';
import { ImageError } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import { bitmapInfo, readBitmapDirectory, serializeBitmapDirectory, type BitmapEntry } from './bitmap.js';
import * as C from './constants.js';
import { DirtyBitmap, loadBitmapData, readBitmapTable, serializedBytes, tableEntries } from './dirty-bitmap.js';
import type { BitmapsExtension } from './header.js';
import type { RefcountStore } from './refcounts.js';

export interface LoadedBitmap {
  entry: BitmapEntry;
  /** Absent for a bitmap that was in-use on open (inconsistent). */
  data?: DirtyBitmap;
  /** Clusters of the stored table and its data, freed once a new copy is durable. */
  oldClusters: Array<{ offset: number; length: number }>;
}

export interface BitmapSink {
  storage: Storage;
  refcounts: RefcountStore;
  /** Point the header's bitmaps extension (and autoclear bit) at a directory, durably. */
  writeExtension(ext: BitmapsExtension | undefined): Promise<void>;
}

const BME_MAX_TABLE_SIZE = 0x8000000;
/** Bitmaps are held whole in memory: a hostile directory must not make a writable open take more. */
const MAX_BITMAP_MEMORY = 1024 * 1024 * 1024;

export class PersistentBitmaps implements PersistentBitmapSet {
  private directory: { offset: number; size: number } | undefined;
  private inUseOnDisk = false;
  /** Bitmaps added or removed: the directory must be rewritten even if no data changed. */
  private listChanged = false;

  private constructor(
    readonly bitmaps: LoadedBitmap[],
    private size: number,
    private readonly clusterSize: number,
    ext: BitmapsExtension | undefined,
    private readonly version: 2 | 3,
  ) {
    if (ext) this.directory = { offset: ext.directoryOffset, size: ext.directorySize };
    this.defaultGranularity = Math.min(65536, Math.max(4096, clusterSize));
  }

  readonly defaultGranularity: number;

  get supported(): boolean {
    return this.version === 3;
  }

  static async load(
    storage: Storage,
    ext: BitmapsExtension | undefined,
    clusterSize: number,
    size: number,
    version: 2 | 3 = 3,
  ): Promise<PersistentBitmaps> {
    const entries = ext ? await readBitmapDirectory(storage, ext, clusterSize, size) : [];
    const list: LoadedBitmap[] = [];
    let memory = 0;
    for (const entry of entries) {
      const inUse = (entry.flags & C.BME_FLAG_IN_USE) !== 0;
      let table: number[];
      try {
        table = await readBitmapTable(storage, entry.tableOffset, entry.tableSize);
      } catch (e) {
        // The data of an in-use bitmap is never used: only its clusters are, to free them.
        if (!inUse) throw new ImageError('corrupt', `Could not read bitmap '${entry.name}' from image: Invalid argument`, { cause: e });
        table = [];
      }
      const oldClusters = [{ offset: entry.tableOffset, length: entry.tableSize * 8 }];
      for (const host of table) if (host > 0) oldClusters.push({ offset: host, length: clusterSize });
      if (!inUse) {
        memory += serializedBytes(size, entry.granularityBits);
        if (memory > MAX_BITMAP_MEMORY) throw new ImageError('io', 'Could not load bitmaps: Cannot allocate memory', { errno: 'ENOMEM' });
      }
      const data = inUse ? undefined : await loadBitmapData(storage, table, size, entry.granularityBits, clusterSize);
      list.push({ entry, data, oldClusters });
    }
    return new PersistentBitmaps(list, size, clusterSize, ext, version);
  }

  list(): StoredBitmap[] {
    return this.bitmaps.map((b) => ({
      name: b.entry.name,
      granularity: 2 ** b.entry.granularityBits,
      enabled: (b.entry.flags & C.BME_FLAG_AUTO) !== 0,
      bits: b.data,
      // What the directory says once stored: in-use only when found so.
      flags: bitmapInfo({ ...b.entry, flags: b.data ? b.entry.flags & ~C.BME_FLAG_IN_USE : b.entry.flags }).flags,
    }));
  }

  /** qcow2's can_store_new_dirty_bitmap and check_constraints_on_bitmap, in their order. */
  checkCanStore(name: string, granularity: number): void {
    const fail = (m: string): never => {
      throw new ImageError('unsupported', m);
    };
    if (this.version < 3) fail('Cannot store dirty bitmaps in qcow2 v2 files');
    const bits = Math.log2(granularity);
    if (bits < C.BME_MIN_GRANULARITY_BITS) fail(`Granularity is under minimum (${2 ** C.BME_MIN_GRANULARITY_BITS} bytes)`);
    if (bits > C.BME_MAX_GRANULARITY_BITS) fail(`Granularity exceeds maximum (${2 ** C.BME_MAX_GRANULARITY_BITS} bytes)`);
    const bytes = Math.ceil(Math.ceil(this.size / granularity) / 8);
    if (bytes > C.BME_MAX_PHYS_SIZE || Math.ceil(bytes / this.clusterSize) > BME_MAX_TABLE_SIZE) {
      fail('Too much space will be occupied by the bitmap. Use larger granularity');
    }
    const nameBytes = new TextEncoder().encode(name).length;
    if (nameBytes > C.BME_MAX_NAME_SIZE) fail(`Name length exceeds maximum (${C.BME_MAX_NAME_SIZE} characters)`);
    if (this.bitmaps.length >= C.MAX_BITMAPS) fail('Maximum number of persistent bitmaps is already reached');
    const dirSize = serializeBitmapDirectory(this.bitmaps.map((b) => b.entry)).length;
    if (dirSize + ((C.BITMAP_DIR_ENTRY_SIZE + nameBytes + 7) & ~7) > C.MAX_BITMAP_DIRECTORY_SIZE) {
      fail('Not enough space in the bitmap directory');
    }
  }

  get count(): number {
    return this.bitmaps.length;
  }

  find(name: string): LoadedBitmap | undefined {
    return this.bitmaps.find((b) => b.entry.name === name);
  }

  private named(name: string): LoadedBitmap {
    const b = this.find(name);
    if (!b) throw new ImageError('bad-argument', `Dirty bitmap '${name}' not found`);
    return b;
  }

  /** Dirty the granules of [offset, offset+length) in every enabled, consistent bitmap. */
  markDirty(offset: number, length: number): void {
    for (const b of this.bitmaps) {
      if (b.data && b.entry.flags & C.BME_FLAG_AUTO) b.data.set(offset, length);
    }
  }

  /** Refuse, before anything changes, a size whose bitmaps would not fit the memory bound. */
  checkResize(size: number): void {
    let memory = 0;
    for (const b of this.bitmaps) if (b.data) memory += serializedBytes(size, b.entry.granularityBits);
    if (memory > MAX_BITMAP_MEMORY) throw new ImageError('io', 'Could not resize the dirty bitmaps: Cannot allocate memory', { errno: 'ENOMEM' });
  }

  /**
   * Follow a resize of the image: each consistent bitmap keeps its bits
   * for the guest bytes that remain and covers the new size (stored with
   * the new table size on the next store). A bitmap found in-use is kept
   * as it is: it is never trusted, and only removing it clears it.
   */
  resize(size: number): void {
    this.checkResize(size);
    if (size === this.size) return;
    this.size = size;
    for (const b of this.bitmaps) {
      if (!b.data) continue;
      b.data = b.data.resized(size);
      b.entry.tableSize = tableEntries(size, b.entry.granularityBits, this.clusterSize);
    }
  }

  /**
   * Before the first change: every consistent bitmap is flagged in-use in
   * the directory, in place, and synced, so a crash before the bitmaps are
   * stored leaves them flagged rather than silently stale.
   */
  async markInUse(storage: Storage): Promise<void> {
    if (this.inUseOnDisk || !this.directory || this.bitmaps.length === 0) return;
    for (const b of this.bitmaps) b.entry.flags |= C.BME_FLAG_IN_USE;
    const dir = serializeBitmapDirectory(this.bitmaps.map((b) => b.entry));
    if (dir.length !== this.directory.size) throw new ImageError('corrupt', 'Bitmap directory changed size');
    await storage.write(dir, this.directory.offset);
    await storage.flush();
    this.inUseOnDisk = true;
  }

  add(name: string, granularity: number, enabled: boolean): void {
    const granularityBits = Math.log2(granularity);
    const entry: BitmapEntry = {
      name,
      tableOffset: 0,
      tableSize: tableEntries(this.size, granularityBits, this.clusterSize),
      flags: enabled ? C.BME_FLAG_AUTO : 0,
      type: C.BITMAP_TYPE_DIRTY_TRACKING,
      granularityBits,
    };
    const data = new DirtyBitmap(this.size, granularityBits);
    data.changed = true;
    // qemu keeps a node's bitmaps newest first and stores the ones not yet on
    // disk in that order after those that are: so new ones go before other new ones.
    const firstNew = this.bitmaps.findIndex((b) => b.entry.tableOffset === 0);
    this.bitmaps.splice(firstNew === -1 ? this.bitmaps.length : firstNew, 0, { entry, data, oldClusters: [] });
    this.listChanged = true;
  }

  remove(name: string): void {
    const b = this.named(name);
    this.bitmaps.splice(this.bitmaps.indexOf(b), 1);
    this.removed.push(...b.oldClusters);
    this.listChanged = true;
  }

  setEnabled(name: string, on: boolean): void {
    const b = this.named(name);
    b.entry.flags = on ? b.entry.flags | C.BME_FLAG_AUTO : b.entry.flags & ~C.BME_FLAG_AUTO;
    this.listChanged = true;
  }

  private readonly removed: Array<{ offset: number; length: number }> = [];

  get needsStore(): boolean {
    return this.inUseOnDisk || this.listChanged;
  }

  /**
   * Store every changed bitmap in new clusters, then a new directory,
   * then the header extension pointing at it (the commit point), then free
   * what the old directory referenced. A crash before the commit leaves the
   * old directory, whose bitmaps are flagged in-use; after it, at worst
   * leaked clusters.
   */
  async store(sink: BitmapSink): Promise<void> {
    if (!this.needsStore) return;
    const { storage, refcounts } = sink;
    const cs = this.clusterSize;
    const frees = [...this.removed];
    for (const b of this.bitmaps) {
      if (!b.data) continue; // inconsistent: keep its table and its in-use flag
      if (b.data.changed || b.entry.tableOffset === 0) {
        const table = new Uint8Array(b.entry.tableSize * 8);
        const tv = new DataView(table.buffer);
        const newClusters: Array<{ offset: number; length: number }> = [];
        for (let i = 0; i < b.entry.tableSize; i++) {
          const chunk = b.data.bits.subarray(i * cs, (i + 1) * cs);
          if (chunk.every((x) => x === 0)) continue;
          const host = await refcounts.allocate(1);
          const cluster = new Uint8Array(cs);
          cluster.set(chunk);
          await storage.write(cluster, host);
          tv.setBigUint64(i * 8, BigInt(host), false);
          newClusters.push({ offset: host, length: cs });
        }
        const tableOffset = await refcounts.allocate(Math.ceil(table.length / cs));
        await storage.write(padCluster(table, cs), tableOffset);
        frees.push(...b.oldClusters);
        b.oldClusters = [{ offset: tableOffset, length: table.length }, ...newClusters];
        b.entry.tableOffset = tableOffset;
      }
      b.entry.flags &= ~C.BME_FLAG_IN_USE;
    }
    const old = this.directory;
    let ext: BitmapsExtension | undefined;
    if (this.bitmaps.length > 0) {
      const dir = serializeBitmapDirectory(this.bitmaps.map((b) => b.entry));
      const offset = await refcounts.allocate(Math.ceil(dir.length / cs));
      await storage.write(padCluster(dir, cs), offset);
      ext = { nbBitmaps: this.bitmaps.length, directorySize: dir.length, directoryOffset: offset };
      this.directory = { offset, size: dir.length };
    } else {
      this.directory = undefined;
    }
    await refcounts.flushBlocks();
    await storage.flush();
    await sink.writeExtension(ext);
    if (old) frees.push({ offset: old.offset, length: old.size });
    for (const f of frees) await refcounts.update(f.offset, f.length, -1);
    await refcounts.flushBlocks();
    await storage.flush();
    for (const b of this.bitmaps) if (b.data) b.data.changed = false;
    this.removed.length = 0;
    this.inUseOnDisk = false;
    this.listChanged = false;
  }
}

function padCluster(b: Uint8Array, cs: number): Uint8Array {
  const n = Math.ceil(b.length / cs) * cs;
  if (n === b.length) return b;
  const out = new Uint8Array(n);
  out.set(b);
  return out;
}
