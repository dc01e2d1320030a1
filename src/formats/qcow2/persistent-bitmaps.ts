/**
 * The persistent dirty bitmaps of a writable qcow2 image, kept as QEMU
 * keeps them: loaded on open, flagged in-use on disk before the first
 * change, dirtied by every write, stored on close (docs/qcow2-bitmaps.md).
 * A bitmap found in-use on open was not stored by its last writer: it is
 * kept, untouched and still in-use, and never trusted.
 */
import { ImageError } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import { readBitmapDirectory, serializeBitmapDirectory, type BitmapEntry } from './bitmap.js';
import * as C from './constants.js';
import { DirtyBitmap, loadBitmapData, readBitmapTable, tableEntries } from './dirty-bitmap.js';
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

export class PersistentBitmaps {
  private directory: { offset: number; size: number } | undefined;
  private inUseOnDisk = false;
  /** Bitmaps added or removed: the directory must be rewritten even if no data changed. */
  private listChanged = false;

  private constructor(
    readonly list: LoadedBitmap[],
    private readonly size: number,
    private readonly clusterSize: number,
    ext: BitmapsExtension | undefined,
  ) {
    if (ext) this.directory = { offset: ext.directoryOffset, size: ext.directorySize };
  }

  static async load(storage: Storage, ext: BitmapsExtension | undefined, clusterSize: number, size: number): Promise<PersistentBitmaps> {
    const entries = ext ? await readBitmapDirectory(storage, ext, clusterSize, size) : [];
    const list: LoadedBitmap[] = [];
    for (const entry of entries) {
      const table = await readBitmapTable(storage, entry.tableOffset, entry.tableSize);
      const oldClusters = [{ offset: entry.tableOffset, length: entry.tableSize * 8 }];
      for (const host of table) if (host > 0) oldClusters.push({ offset: host, length: clusterSize });
      const inUse = (entry.flags & C.BME_FLAG_IN_USE) !== 0;
      const data = inUse ? undefined : await loadBitmapData(storage, table, size, entry.granularityBits, clusterSize);
      list.push({ entry, data, oldClusters });
    }
    return new PersistentBitmaps(list, size, clusterSize, ext);
  }

  get count(): number {
    return this.list.length;
  }

  find(name: string): LoadedBitmap | undefined {
    return this.list.find((b) => b.entry.name === name);
  }

  /** Dirty the granules of [offset, offset+length) in every enabled, consistent bitmap. */
  markDirty(offset: number, length: number): void {
    for (const b of this.list) {
      if (b.data && b.entry.flags & C.BME_FLAG_AUTO) b.data.set(offset, length);
    }
  }

  /**
   * Before the first change: every consistent bitmap is flagged in-use in
   * the directory, in place, and synced, so a crash before the bitmaps are
   * stored leaves them flagged rather than silently stale.
   */
  async markInUse(storage: Storage): Promise<void> {
    if (this.inUseOnDisk || !this.directory || this.list.length === 0) return;
    for (const b of this.list) b.entry.flags |= C.BME_FLAG_IN_USE;
    const dir = serializeBitmapDirectory(this.list.map((b) => b.entry));
    if (dir.length !== this.directory.size) throw new ImageError('corrupt', 'Bitmap directory changed size');
    await storage.write(dir, this.directory.offset);
    await storage.flush();
    this.inUseOnDisk = true;
  }

  add(name: string, granularityBits: number, enabled: boolean): void {
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
    this.list.push({ entry, data, oldClusters: [] });
    this.listChanged = true;
  }

  remove(b: LoadedBitmap): void {
    this.list.splice(this.list.indexOf(b), 1);
    this.removed.push(...b.oldClusters);
    this.listChanged = true;
  }

  setEnabled(b: LoadedBitmap, on: boolean): void {
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
    for (const b of this.list) {
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
    if (this.list.length > 0) {
      const dir = serializeBitmapDirectory(this.list.map((b) => b.entry));
      const offset = await refcounts.allocate(Math.ceil(dir.length / cs));
      await storage.write(padCluster(dir, cs), offset);
      ext = { nbBitmaps: this.list.length, directorySize: dir.length, directoryOffset: offset };
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
    for (const b of this.list) if (b.data) b.data.changed = false;
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
