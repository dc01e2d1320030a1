/**
 * The L1/L2 walk (QEMU's qcow2_get_host_offset and
 * count_contiguous_subclusters): for a guest offset, the longest run of
 * (sub)clusters of one type, with contiguous host offsets where there are
 * any. L2 tables come through a bounded LRU cache whose entries are the
 * load promises, so concurrent lookups share one read per table.
 */
import { ImageError } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import * as C from './constants.js';
import { Cluster, Sub, clusterType, entryOffset, hasHostOffset, subclusterType, type SubclusterType } from './l2.js';
import { hexAlt } from './text.js';

export interface MapperConfig {
  /** The image file: L2 tables live here. */
  storage: Storage;
  clusterBits: number;
  extL2: boolean;
  hasDataFile: boolean;
  version: number;
  /** Active L1 table entries as read (possibly shorter than l1Size: the rest read as zero). */
  l1: Uint8Array;
  l1Size: number;
  /** Most L2 tables held at once. */
  cacheTables: number;
}

/** One run of (sub)clusters of the same type. */
export interface Run {
  type: SubclusterType;
  length: number;
  /** Host offset of the first byte, or -1 for types without one. */
  hostOffset: number;
}

const corruption = (m: string): ImageError => new ImageError('corrupt', m);

export class L2Mapper {
  private readonly cfg: MapperConfig;
  private readonly clusterSize: number;
  private readonly entrySize: number;
  private readonly l2Entries: number;
  /** Guest bytes one L1 entry maps. */
  private readonly l1Span: number;
  private readonly subSize: number;
  private l1View: DataView;
  private readonly cache = new Map<number, Promise<DataView>>();
  /** Tables changed in memory and not yet written (pinned in the cache), by L1 index. */
  private readonly dirtyTables = new Set<number>();
  /** L1 entries changed in memory and not yet written. */
  private readonly dirtyL1 = new Set<number>();

  constructor(cfg: MapperConfig) {
    this.cfg = cfg;
    this.clusterSize = 2 ** cfg.clusterBits;
    this.entrySize = cfg.extL2 ? C.L2_ENTRY_SIZE_EXTENDED : C.L2_ENTRY_SIZE;
    this.l2Entries = this.clusterSize / this.entrySize;
    this.l1Span = this.l2Entries * this.clusterSize;
    this.subSize = cfg.extL2 ? this.clusterSize / C.SUBCLUSTERS_PER_CLUSTER : this.clusterSize;
    this.l1View = new DataView(cfg.l1.buffer, cfg.l1.byteOffset, cfg.l1.byteLength);
  }

  /** The L2 table offset for L1 index i, 0 if unallocated. */
  private l2Offset(i: number): number {
    if (i >= this.cfg.l1Size || (i + 1) * C.L1_ENTRY_SIZE > this.cfg.l1.length) return 0;
    const hi = this.l1View.getUint32(i * C.L1_ENTRY_SIZE, false);
    const lo = this.l1View.getUint32(i * C.L1_ENTRY_SIZE + 4, false);
    const off = entryOffset(hi, lo);
    if (off !== 0 && off % this.clusterSize !== 0) {
      throw corruption(`L2 table offset ${hexAlt(off)} unaligned (L1 index: ${hexAlt(i)})`);
    }
    return off;
  }

  private table(l1Index: number, offset: number): Promise<DataView> {
    const hit = this.cache.get(l1Index);
    if (hit) {
      // Refresh LRU position.
      this.cache.delete(l1Index);
      this.cache.set(l1Index, hit);
      return hit;
    }
    const p = (async () => {
      const buf = new Uint8Array(this.clusterSize);
      await this.cfg.storage.read(buf, offset);
      return new DataView(buf.buffer);
    })();
    this.cache.set(l1Index, p);
    p.catch(() => {
      if (this.cache.get(l1Index) === p) this.cache.delete(l1Index);
    });
    this.evict();
    return p;
  }

  /** Drop least recently used clean tables; dirty ones stay until flushed. */
  private evict(): void {
    if (this.cache.size <= this.cfg.cacheTables) return;
    for (const key of this.cache.keys()) {
      if (this.cache.size <= this.cfg.cacheTables) break;
      if (!this.dirtyTables.has(key)) this.cache.delete(key);
    }
  }

  // --- writing: callers hold the image's metadata mutex ---

  /** Guest bytes covered by one L2 table. */
  get tableSpan(): number {
    return this.l1Span;
  }

  /** The raw L1 entry words for index i (0,0 past the table). */
  l1Entry(i: number): { hi: number; lo: number } {
    if (i >= this.cfg.l1Size || (i + 1) * C.L1_ENTRY_SIZE > this.cfg.l1.length) return { hi: 0, lo: 0 };
    return { hi: this.l1View.getUint32(i * C.L1_ENTRY_SIZE, false), lo: this.l1View.getUint32(i * C.L1_ENTRY_SIZE + 4, false) };
  }

  /** Entries of the active L1 table. */
  get l1Size(): number {
    return this.cfg.l1Size;
  }

  /**
   * Switch to a longer L1 table (a resize moved or extended it). Only with
   * nothing dirty: the entries are the same, the new ones zero.
   */
  replaceL1(l1: Uint8Array, l1Size: number): void {
    if (this.dirtyL1.size > 0) throw new ImageError('invalid', 'L1 table replaced with unwritten entries');
    this.cfg.l1 = l1;
    this.cfg.l1Size = l1Size;
    this.l1View = new DataView(l1.buffer, l1.byteOffset, l1.byteLength);
    this.l2Clusters = undefined;
  }

  /** Whether host cluster `c` holds an active L2 table. */
  isL2Table(c: number): boolean {
    if (!this.l2Clusters) {
      this.l2Clusters = new Set();
      for (let i = 0; i < this.cfg.l1Size && (i + 1) * C.L1_ENTRY_SIZE <= this.cfg.l1.length; i++) {
        const { hi, lo } = this.l1Entry(i);
        const off = entryOffset(hi, lo);
        if (off !== 0) this.l2Clusters.add(Math.floor(off / this.clusterSize));
      }
    }
    return this.l2Clusters.has(c);
  }
  private l2Clusters: Set<number> | undefined;

  /** Point L1 entry i at an L2 table (COPIED: this table is ours alone). */
  setL1(i: number, offset: number, copied: boolean): void {
    if ((i + 1) * C.L1_ENTRY_SIZE > this.cfg.l1.length) throw new ImageError('invalid', `L1 index ${i} is beyond the L1 table`);
    this.l1View.setUint32(i * C.L1_ENTRY_SIZE, Math.floor(offset / 0x1_0000_0000) | (copied ? C.OFLAG_COPIED_HI : 0), false);
    this.l1View.setUint32(i * C.L1_ENTRY_SIZE + 4, offset >>> 0, false);
    this.dirtyL1.add(i);
    this.l2Clusters = undefined;
  }

  /** The L2 table of L1 index i for modification (pinned until written), or undefined if none. */
  async tableForWrite(i: number): Promise<DataView | undefined> {
    const off = this.l2Offset(i);
    if (off === 0) return undefined;
    const t = await this.table(i, off);
    this.dirtyTables.add(i);
    return t;
  }

  /** Install a new (already modified) table for L1 index i; written at the next flush. */
  installTable(i: number, view: DataView): void {
    this.cache.delete(i);
    this.cache.set(i, Promise.resolve(view));
    this.dirtyTables.add(i);
  }

  /** More dirty tables than the cache is meant to hold. */
  get overCapacity(): boolean {
    return this.dirtyTables.size > this.cfg.cacheTables;
  }

  get hasDirty(): boolean {
    return this.dirtyTables.size > 0 || this.dirtyL1.size > 0;
  }

  /** Write every dirty L2 table (no sync). */
  async writeDirtyTables(): Promise<void> {
    for (const i of [...this.dirtyTables].sort((a, b) => a - b)) {
      const off = this.l2Offset(i);
      const t = await this.cache.get(i);
      if (off !== 0 && t) await this.cfg.storage.write(new Uint8Array(t.buffer, t.byteOffset, this.clusterSize), off);
      this.dirtyTables.delete(i);
    }
    this.evict();
  }

  /**
   * Write every dirty L1 entry, coalesced into runs (no sync). An entry
   * stays dirty until its write succeeded: after a failed write the next
   * flush writes it again, or the L2 table it points at (and the data
   * behind it) would never become reachable although a later flush succeeds.
   */
  async writeDirtyL1(l1Offset: number): Promise<void> {
    const idx = [...this.dirtyL1].sort((a, b) => a - b);
    for (let k = 0; k < idx.length; ) {
      let e = k;
      while (e + 1 < idx.length && idx[e + 1] === idx[e]! + 1) e++;
      const first = idx[k]!;
      const n = idx[e]! - first + 1;
      const bytes = this.cfg.l1.subarray(first * C.L1_ENTRY_SIZE, (first + n) * C.L1_ENTRY_SIZE);
      await this.cfg.storage.write(bytes, l1Offset + first * C.L1_ENTRY_SIZE);
      for (let j = k; j <= e; j++) this.dirtyL1.delete(idx[j]!);
      k = e + 1;
    }
  }

  /** The raw L2 entry words of the cluster holding guest `offset` (0,0 if unallocated). */
  async entry(offset: number): Promise<{ hi: number; lo: number; zeroBits: number; allocBits: number; l2Offset: number; index: number }> {
    const l1i = Math.floor(offset / this.l1Span);
    const l2off = this.l2Offset(l1i);
    const index = Math.floor((offset % this.l1Span) / this.clusterSize);
    if (l2off === 0) return { hi: 0, lo: 0, zeroBits: 0, allocBits: 0, l2Offset: 0, index };
    const t = await this.table(l1i, l2off);
    const p = index * this.entrySize;
    const ext = this.cfg.extL2;
    return {
      hi: t.getUint32(p, false),
      lo: t.getUint32(p + 4, false),
      zeroBits: ext ? t.getUint32(p + 8, false) : 0,
      allocBits: ext ? t.getUint32(p + 12, false) : 0,
      l2Offset: l2off,
      index,
    };
  }

  /** The run starting at guest `offset`, at most `maxLength` bytes (> 0). */
  async lookup(offset: number, maxLength: number): Promise<Run> {
    const { cfg, clusterSize, subSize, entrySize, l1Span } = this;
    const end = offset + maxLength;
    let pos = offset;
    let type: SubclusterType | -1 = -1;
    let startHost = -1;
    let nextHost = -1;

    walk: while (pos < end) {
      const l1i = Math.floor(pos / l1Span);
      const l1End = Math.min(end, (l1i + 1) * l1Span);
      const l2off = this.l2Offset(l1i);
      if (l2off === 0) {
        if (type === -1) type = Sub.UNALLOCATED_PLAIN;
        else if (type !== Sub.UNALLOCATED_PLAIN) break;
        pos = l1End;
        continue;
      }
      const t = await this.table(l1i, l2off);
      while (pos < l1End) {
        const index = Math.floor((pos % l1Span) / clusterSize);
        const p = index * entrySize;
        const hi = t.getUint32(p, false);
        const lo = t.getUint32(p + 4, false);
        const ct = clusterType(hi, lo, cfg.extL2, cfg.hasDataFile);
        const allocBits = cfg.extL2 ? t.getUint32(p + 12, false) : 0;
        const zeroBits = cfg.extL2 ? t.getUint32(p + 8, false) : 0;
        const clusterStart = pos - (pos % clusterSize);
        const clusterEnd = Math.min(l1End, clusterStart + clusterSize);
        let host = -1;
        // Per-entry checks happen once per cluster, before any subcluster of it joins the run.
        const first = type === -1;
        let bad: string | undefined;
        if (ct === Cluster.ZERO_PLAIN || ct === Cluster.ZERO_ALLOC) {
          if (cfg.version < 3) bad = `Zero cluster entry found in pre-v3 image (L2 offset: ${hexAlt(l2off)}, L2 index: ${hexAlt(index)})`;
        }
        if (ct === Cluster.COMPRESSED && cfg.hasDataFile) {
          bad = `Compressed cluster entry found in image with external data file (L2 offset: ${hexAlt(l2off)}, L2 index: ${hexAlt(index)})`;
        }
        if (bad === undefined && (ct === Cluster.ZERO_ALLOC || ct === Cluster.NORMAL)) {
          host = entryOffset(hi, lo);
          if (host % clusterSize !== 0) {
            bad = `Cluster allocation offset ${hexAlt(host)} unaligned (L2 offset: ${hexAlt(l2off)}, L2 index: ${hexAlt(index)})`;
          } else if (cfg.hasDataFile && host !== clusterStart) {
            bad = `External data file host cluster offset ${hexAlt(host)} does not match guest cluster offset: ${hexAlt(clusterStart)}, L2 index: ${hexAlt(index)})`;
          }
        }
        if (bad !== undefined) {
          if (first) throw corruption(bad);
          break walk;
        }
        while (pos < clusterEnd) {
          const inCluster = pos - clusterStart;
          const sc = Math.floor(inCluster / subSize);
          const st = subclusterType(ct, cfg.extL2, allocBits, zeroBits, sc);
          if (st === Sub.INVALID) {
            if (type === -1) throw corruption(`Invalid cluster entry found (L2 offset: ${hexAlt(l2off)}, L2 index: ${hexAlt(index)})`);
            break walk;
          }
          const h = hasHostOffset(st) ? host + inCluster : -1;
          if (type === -1) {
            type = st;
            startHost = h;
          } else if (st !== type || (h !== -1 && h !== nextHost)) {
            break walk;
          }
          const unitEnd = Math.min(clusterEnd, clusterStart + (sc + 1) * subSize);
          if (h !== -1) nextHost = h + (unitEnd - pos);
          pos = unitEnd;
        }
      }
    }
    return { type: type === -1 ? Sub.UNALLOCATED_PLAIN : type, length: pos - offset, hostOffset: startHost };
  }
}
