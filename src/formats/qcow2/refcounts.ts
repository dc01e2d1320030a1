/**
 * Refcounts for writing (spec: Host cluster management; docs/qcow2-writes.md):
 * the whole refcount table in memory, refcount blocks in a cache whose
 * dirty blocks are written only by flush(), a first-fit allocator, and
 * frees deferred until the references to the freed clusters are gone from
 * the disk.
 *
 * Callers hold the image's metadata mutex around every method.
 */
import { ImageError } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import * as C from './constants.js';
import { entryAt } from './refcount.js';

const TWO_32 = 0x1_0000_0000;
/** Clean refcount blocks kept in memory (qemu's refcount cache is bounded as well). */
const BLOCK_CACHE_BYTES = 8 * 1024 * 1024;

export interface RefcountStoreConfig {
  storage: Storage;
  clusterBits: number;
  refcountOrder: number;
  tableOffset: number;
  tableClusters: number;
  /**
   * The refcount table moved: the caller must point the header at it and
   * make that durable before returning.
   */
  onTableMoved(offset: number, clusters: number): Promise<void>;
}

/** Set entry `i` of a refcount block with entries of 2^order bits. */
export function setEntryAt(block: Uint8Array, i: number, order: number, value: number): void {
  switch (order) {
    case 0:
      block[i >>> 3] = (block[i >>> 3]! & ~(1 << (i & 7))) | ((value & 1) << (i & 7));
      return;
    case 1: {
      const s = 2 * (i & 3);
      block[i >>> 2] = (block[i >>> 2]! & ~(3 << s)) | ((value & 3) << s);
      return;
    }
    case 2: {
      const s = 4 * (i & 1);
      block[i >>> 1] = (block[i >>> 1]! & ~(15 << s)) | ((value & 15) << s);
      return;
    }
    case 3:
      block[i] = value;
      return;
    case 4:
      block[2 * i] = value >>> 8;
      block[2 * i + 1] = value & 0xff;
      return;
    case 5:
      new DataView(block.buffer, block.byteOffset).setUint32(4 * i, value, false);
      return;
    default: {
      const v = new DataView(block.buffer, block.byteOffset);
      v.setUint32(8 * i, Math.floor(value / TWO_32), false);
      v.setUint32(8 * i + 4, value >>> 0, false);
    }
  }
}

export class RefcountStore {
  private readonly cfg: RefcountStoreConfig;
  readonly clusterSize: number;
  /** Refcount entries per block. */
  private readonly perBlock: number;
  private readonly max: number;
  /** Refcount table entries (block offsets; 0 = none). */
  private table: number[];
  private tableOffset: number;
  private tableClusters: number;
  private readonly blocks = new Map<number, Uint8Array>();
  private readonly dirty = new Set<number>();
  /** Lowest cluster index that may be free. */
  private freeIndex = 0;
  /** Where the next compressed payload may go (qemu's free_byte_offset); 0 = none. */
  private freeByte = 0;
  /** Decrements waiting until the references they drop are durable. */
  private pending: Array<{ offset: number; length: number }> = [];

  private constructor(cfg: RefcountStoreConfig, table: number[]) {
    this.cfg = cfg;
    this.clusterSize = 2 ** cfg.clusterBits;
    this.perBlock = 2 ** (cfg.clusterBits + 3 - cfg.refcountOrder);
    this.max = cfg.refcountOrder === 6 ? Number.MAX_SAFE_INTEGER : 2 ** 2 ** cfg.refcountOrder - 1;
    this.table = table;
    this.tableOffset = cfg.tableOffset;
    this.tableClusters = cfg.tableClusters;
  }

  static async load(cfg: RefcountStoreConfig): Promise<RefcountStore> {
    const bytes = new Uint8Array(cfg.tableClusters * 2 ** cfg.clusterBits);
    await cfg.storage.read(bytes, cfg.tableOffset);
    const v = new DataView(bytes.buffer);
    const table: number[] = [];
    for (let i = 0; i < bytes.length; i += C.REFTABLE_ENTRY_SIZE) {
      const hi = v.getUint32(i, false);
      const lo = v.getUint32(i + 4, false) & C.REFT_OFFSET_MASK_LO;
      if (hi > 0x1f_ffff) throw new ImageError('unsupported', 'Refcount block offset above 2^53');
      table.push(hi * TWO_32 + (lo >>> 0));
    }
    return new RefcountStore(cfg, table);
  }

  /** Whether host cluster `c` holds a refcount block. */
  isRefcountBlock(c: number): boolean {
    this.blockClusters ??= new Set(this.table.filter((o) => o !== 0).map((o) => o / this.clusterSize));
    return this.blockClusters.has(c);
  }
  private blockClusters: Set<number> | undefined;

  get tableLocation(): { offset: number; clusters: number } {
    return { offset: this.tableOffset, clusters: this.tableClusters };
  }

  private async block(bi: number): Promise<Uint8Array | undefined> {
    const off = this.table[bi] ?? 0;
    if (off === 0) return undefined;
    if (off % this.clusterSize !== 0) throw new ImageError('corrupt', `Refblock offset 0x${off.toString(16)} unaligned (reftable index: 0x${bi.toString(16)})`);
    let b = this.blocks.get(bi);
    if (b) {
      // Refresh the LRU position.
      this.blocks.delete(bi);
      this.blocks.set(bi, b);
    } else {
      b = new Uint8Array(this.clusterSize);
      await this.cfg.storage.read(b, off);
      this.blocks.set(bi, b);
      this.evictClean();
    }
    return b;
  }

  /**
   * Keep at most BLOCK_CACHE_BYTES of clean blocks: a hostile refcount table
   * (a million entries naming full blocks) would otherwise make one
   * allocation scan cache every block it passes. Dirty blocks stay until
   * flushed; a clean one reads back the same from the disk.
   */
  private evictClean(): void {
    const max = Math.max(8, Math.floor(BLOCK_CACHE_BYTES / this.clusterSize));
    if (this.blocks.size <= max) return;
    for (const key of this.blocks.keys()) {
      if (this.blocks.size <= max) break;
      if (!this.dirty.has(key)) this.blocks.delete(key);
    }
  }

  async get(cluster: number): Promise<number> {
    const b = await this.block(Math.floor(cluster / this.perBlock));
    return b ? entryAt(b, cluster % this.perBlock, this.cfg.refcountOrder) : 0;
  }

  /** Add `delta` to the refcount of every cluster overlapping [offset, offset+length). */
  async update(offset: number, length: number, delta: number): Promise<void> {
    const first = Math.floor(offset / this.clusterSize);
    const last = Math.floor((offset + length - 1) / this.clusterSize);
    for (let c = first; c <= last; c++) await this.add(c, delta);
  }

  private async add(cluster: number, delta: number): Promise<void> {
    const bi = Math.floor(cluster / this.perBlock);
    let b = await this.block(bi);
    if (!b) {
      if (delta < 0) throw new ImageError('corrupt', `Refcount of cluster ${cluster} would drop below zero`);
      b = await this.newBlock(bi);
    }
    const i = cluster % this.perBlock;
    const now = entryAt(b, i, this.cfg.refcountOrder);
    const next = now + delta;
    if (next < 0) throw new ImageError('corrupt', `Refcount of cluster ${cluster} would drop below zero`);
    if (next > this.max) throw new ImageError('invalid', `Refcount overflow for cluster ${cluster}`);
    setEntryAt(b, i, this.cfg.refcountOrder, next);
    this.dirty.add(bi);
    if (next === 0 && cluster < this.freeIndex) this.freeIndex = cluster;
  }

  /**
   * Allocate `count` contiguous clusters (refcount 1) and return the host
   * offset of the first. New refcount blocks describe themselves where they
   * can and are written and hooked into the table at once, so the table on
   * disk never points at an unwritten block.
   */
  async allocate(count: number): Promise<number> {
    for (;;) {
      const start = await this.findFree(count);
      if (await this.ensureBlocks(start, count)) continue; // blocks landed in the run: search again
      for (let c = start; c < start + count; c++) await this.add(c, 1);
      this.freeIndex = start + count;
      return start * this.clusterSize;
    }
  }

  /** First run of `count` clusters with refcount 0 at or after freeIndex. */
  private async findFree(count: number): Promise<number> {
    let start = this.freeIndex;
    let run = 0;
    let firstFree = -1;
    // Clusters below the first free one seen are all in use: later searches start there (qemu's
    // free_cluster_index), so a long stretch of full blocks is walked once, not once per allocation.
    const found = (): number => {
      this.freeIndex = Math.max(this.freeIndex, firstFree);
      return start;
    };
    for (let c = start; ; ) {
      const bi = Math.floor(c / this.perBlock);
      const b = await this.block(bi);
      const blockEnd = (bi + 1) * this.perBlock;
      if (!b) {
        // No block: every cluster it would describe is free.
        if (firstFree < 0) firstFree = c;
        if (run === 0) start = c;
        run += blockEnd - c;
        if (run >= count) return found();
        c = blockEnd;
        continue;
      }
      // One lookup per block, not per cluster: a hostile table can make this scan very long.
      for (; c < blockEnd; c++) {
        if (entryAt(b, c % this.perBlock, this.cfg.refcountOrder) === 0) {
          if (firstFree < 0) firstFree = c;
          if (run === 0) start = c;
          if (++run >= count) return found();
        } else {
          run = 0;
        }
      }
    }
  }

  /**
   * Make sure every cluster of [start, start+count) has a refcount block.
   * Returns true if a new block was placed inside that run (the caller then
   * searches again, as qemu does).
   */
  private async ensureBlocks(start: number, count: number): Promise<boolean> {
    const firstBlock = Math.floor(start / this.perBlock);
    const lastBlock = Math.floor((start + count - 1) / this.perBlock);
    let moved = false;
    const before = start * this.clusterSize;
    const after = (start + count) * this.clusterSize;
    for (let bi = firstBlock; bi <= lastBlock; bi++) {
      if ((this.table[bi] ?? 0) !== 0) continue;
      await this.newBlock(bi);
      // Growing the table or placing blocks may have used clusters of the run.
      moved ||= this.table.some((off) => off >= before && off < after);
    }
    return moved || (await this.anyUsed(start, count));
  }

  private async anyUsed(start: number, count: number): Promise<boolean> {
    for (let c = start; c < start + count; c++) if ((await this.get(c)) !== 0) return true;
    return false;
  }

  /** Create refcount block `bi`, written and hooked into the table before it is used. */
  private async newBlock(bi: number): Promise<Uint8Array> {
    if (bi >= this.table.length) await this.growTable(bi + 1);
    for (;;) {
      const existing = await this.block(bi);
      if (existing) return existing; // the table growth placed it
      // Place it at the first free cluster; if that cluster falls in the range
      // the new block describes, the block counts itself.
      const at = await this.findFree(1);
      const block = new Uint8Array(this.clusterSize);
      if (Math.floor(at / this.perBlock) === bi) {
        setEntryAt(block, at % this.perBlock, this.cfg.refcountOrder, 1);
      } else {
        // Counted by another block, which may itself need creating first.
        if (await this.ensureBlocks(at, 1)) continue;
        await this.add(at, 1);
      }
      // Whatever counts `at` must reach the disk before the new block is hooked up.
      await this.flushBlocks();
      await this.cfg.storage.write(block, at * this.clusterSize);
      await this.cfg.storage.flush();
      this.table[bi] = at * this.clusterSize;
      this.blockClusters = undefined;
      this.blocks.set(bi, block);
      await this.writeTableEntry(bi);
      await this.cfg.storage.flush();
      if (at === this.freeIndex) this.freeIndex = at + 1;
      return block;
    }
  }

  private async writeTableEntry(bi: number): Promise<void> {
    const e = new Uint8Array(8);
    const v = new DataView(e.buffer);
    const off = this.table[bi] ?? 0;
    v.setUint32(0, Math.floor(off / TWO_32), false);
    v.setUint32(4, off >>> 0, false);
    await this.cfg.storage.write(e, this.tableOffset + bi * C.REFTABLE_ENTRY_SIZE);
  }

  /**
   * A table with room for `needed` entries, written at the end of the used
   * area with refcount blocks for itself, then switched to through the
   * header; the old table's clusters are freed afterwards.
   */
  private async growTable(needed: number): Promise<void> {
    const perTableCluster = this.clusterSize / C.REFTABLE_ENTRY_SIZE;
    const end = await this.endCluster();
    // The new area holds the table and any refcount blocks needed for the area itself.
    let tableClusters = Math.ceil(Math.max(needed, Math.ceil(this.table.length * 1.5)) / perTableCluster);
    let blocks: number[] = [];
    // Fixed point: the area must hold the table and the blocks that count the area.
    for (;;) {
      const areaEnd = end + blocks.length + tableClusters;
      const next: number[] = [];
      for (let bi = Math.floor(end / this.perBlock); bi * this.perBlock < areaEnd; bi++) {
        if ((this.table[bi] ?? 0) === 0) next.push(bi);
      }
      const entries = Math.max(needed, this.table.length, next.length ? next[next.length - 1]! + 1 : 0);
      const want = Math.ceil(entries / perTableCluster);
      const stable = next.length === blocks.length && want <= tableClusters;
      blocks = next;
      tableClusters = Math.max(tableClusters, want);
      if (stable) break;
    }
    if (tableClusters * this.clusterSize > C.MAX_REFTABLE_SIZE) {
      throw new ImageError('invalid', 'Reference count table too large');
    }
    const blockStart = end;
    const tableStart = end + blocks.length;
    const areaEnd = tableStart + tableClusters;
    const newTable = this.table.slice();
    while (newTable.length < tableClusters * perTableCluster) newTable.push(0);
    // Refcount blocks for the area: every area cluster in their range counts 1.
    await this.flushBlocks();
    for (let k = 0; k < blocks.length; k++) {
      const bi = blocks[k]!;
      const b = new Uint8Array(this.clusterSize);
      for (let c = Math.max(end, bi * this.perBlock); c < Math.min(areaEnd, (bi + 1) * this.perBlock); c++) {
        setEntryAt(b, c % this.perBlock, this.cfg.refcountOrder, 1);
      }
      const host = (blockStart + k) * this.clusterSize;
      await this.cfg.storage.write(b, host);
      newTable[bi] = host;
      this.blocks.set(bi, b);
    }
    // Area clusters described by blocks that already exist.
    const pendingAdds: number[] = [];
    for (let c = end; c < areaEnd; c++) {
      const bi = Math.floor(c / this.perBlock);
      if (!blocks.includes(bi)) pendingAdds.push(c);
    }
    const bytes = new Uint8Array(tableClusters * this.clusterSize);
    const v = new DataView(bytes.buffer);
    newTable.forEach((off, i) => {
      v.setUint32(i * 8, Math.floor(off / TWO_32), false);
      v.setUint32(i * 8 + 4, off >>> 0, false);
    });
    const old = { offset: this.tableOffset, clusters: this.tableClusters };
    this.table = newTable;
    this.blockClusters = undefined;
    for (const c of pendingAdds) await this.add(c, 1);
    await this.flushBlocks();
    await this.cfg.storage.write(bytes, tableStart * this.clusterSize);
    await this.cfg.storage.flush();
    this.tableOffset = tableStart * this.clusterSize;
    this.tableClusters = tableClusters;
    await this.cfg.onTableMoved(this.tableOffset, this.tableClusters);
    // The header no longer names the old table: its clusters are free.
    await this.update(old.offset, old.clusters * this.clusterSize, -1);
    if (this.freeIndex < areaEnd && this.freeIndex >= end) this.freeIndex = areaEnd;
  }

  /** One past the highest cluster with a nonzero refcount (or a refcount block). */
  async endCluster(): Promise<number> {
    for (let bi = this.table.length - 1; bi >= 0; bi--) {
      const b = await this.block(bi);
      if (!b) continue;
      for (let i = this.perBlock - 1; i >= 0; i--) {
        if (entryAt(b, i, this.cfg.refcountOrder) !== 0) return bi * this.perBlock + i + 1;
      }
    }
    return 0;
  }

  /**
   * Room for one compressed payload of `size` bytes, packed after the
   * previous one where it fits (qemu's qcow2_alloc_bytes). Every host
   * cluster the payload touches gains one reference.
   */
  async allocateBytes(size: number): Promise<number> {
    let offset = this.freeByte;
    if (offset !== 0 && (await this.get(Math.floor(offset / this.clusterSize))) >= this.max) offset = 0;
    let room = offset === 0 ? 0 : this.clusterSize - (offset % this.clusterSize);
    while (offset === 0 || room < size) {
      const c = await this.findFree(1);
      if (await this.ensureBlocks(c, 1)) continue;
      // Cluster 0 (the header) "free" means the refcounts are corrupt; offset 0
      // also means "none" here, so going on would loop forever (qemu refuses too).
      if (c === 0) throw new ImageError('corrupt', 'Preventing invalid allocation of compressed cluster at offset 0');
      const next = c * this.clusterSize;
      if (offset === 0 || Math.ceil(offset / this.clusterSize) * this.clusterSize !== next) {
        offset = next;
        room = this.clusterSize;
      } else {
        room += this.clusterSize;
      }
    }
    await this.update(offset, size, 1);
    this.freeByte = (offset + size) % this.clusterSize === 0 ? 0 : offset + size;
    return offset;
  }

  /** Drop a reference once the metadata that held it is durable (see flush). */
  queueFree(offset: number, length: number): void {
    this.pending.push({ offset, length });
  }

  get hasPendingFrees(): boolean {
    return this.pending.length > 0;
  }

  /** Apply queued frees: call only after the L2/L1 updates that dropped them are on disk. */
  async applyPendingFrees(): Promise<void> {
    const list = this.pending;
    this.pending = [];
    for (const f of list) await this.update(f.offset, f.length, -1);
  }

  get isDirty(): boolean {
    return this.dirty.size > 0;
  }

  /** Write every dirty refcount block (no sync: the caller orders syncs). */
  async flushBlocks(): Promise<void> {
    for (const bi of [...this.dirty].sort((a, b) => a - b)) {
      const b = this.blocks.get(bi);
      const off = this.table[bi] ?? 0;
      if (b && off !== 0) await this.cfg.storage.write(b, off);
      this.dirty.delete(bi);
    }
  }
}
