/**
 * The QED table walk: guest offset → L1 entry → L2 entry → host cluster.
 * The L1 table is held in memory (only the entries the image size can
 * reach); L2 tables are read in pieces through a bounded LRU cache, so no
 * buffer is ever sized by a table size alone.
 */
import type { Mapping } from '../../block/driver.js';
import { ImageError, corrupt } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import { divCeil, writeU64 } from '../../units.js';
import { ENTRY_BYTES, TABLE_CACHE_CHUNKS, TABLE_CHUNK_BYTES } from './constants.js';
import { entryAt, isUnallocated, isValidClusterOffset, isValidTableOffset, isZeroCluster, type QedGeometry } from './table.js';

type RunKind = 'data' | 'zero' | 'unallocated';

/** Clusters of one kind found in one piece of one table. */
interface Run {
  kind: RunKind;
  length: number;
  /** For data: the host offset of the run's first byte. */
  host: number;
}

const hex = (v: number): string => `0x${v.toString(16)}`;

/** A small LRU of table pieces keyed by host offset; loads are shared while in flight. */
class TableCache {
  private readonly entries = new Map<number, Promise<DataView>>();

  constructor(
    private readonly storage: Storage,
    private readonly capacity: number,
  ) {}

  get(hostOffset: number, bytes: number): Promise<DataView> {
    const hit = this.entries.get(hostOffset);
    if (hit) {
      // Re-insert to mark as most recently used.
      this.entries.delete(hostOffset);
      this.entries.set(hostOffset, hit);
      return hit;
    }
    const load = this.load(hostOffset, bytes);
    this.entries.set(hostOffset, load);
    load.catch(() => {
      if (this.entries.get(hostOffset) === load) this.entries.delete(hostOffset);
    });
    while (this.entries.size > this.capacity) {
      const oldest = this.entries.keys().next().value as number;
      this.entries.delete(oldest);
    }
    return load;
  }

  private async load(hostOffset: number, bytes: number): Promise<DataView> {
    const buf = new Uint8Array(bytes);
    await this.storage.read(buf, hostOffset);
    return new DataView(buf.buffer);
  }

  clear(): void {
    this.entries.clear();
  }

  /**
   * Apply `fn` to the cached piece at `hostOffset`, if any (including one
   * still loading), once the same change is on the storage.
   */
  async patch(hostOffset: number, fn: (view: DataView) => void): Promise<void> {
    const hit = this.entries.get(hostOffset);
    if (!hit) return;
    try {
      fn(await hit);
    } catch {
      // A failed load is dropped from the cache; nothing to patch.
    }
  }

  /** Forget pieces starting in [start, end). */
  drop(start: number, end: number): void {
    for (const k of [...this.entries.keys()]) if (k >= start && k < end) this.entries.delete(k);
  }
}

export class QedMapper {
  private readonly cache: TableCache;
  /** Entries per cached piece of an L2 table. */
  private readonly chunkEntries: number;
  /** L1 entries the image size can reach. */
  private readonly l1Entries: number;
  private l1: Promise<DataView> | undefined;

  constructor(
    private readonly storage: Storage,
    private readonly g: QedGeometry,
    private readonly l1Offset: number,
    private readonly size: number,
  ) {
    this.chunkEntries = Math.min(g.tableEntries, TABLE_CHUNK_BYTES / ENTRY_BYTES);
    this.cache = new TableCache(storage, TABLE_CACHE_CHUNKS);
    // The header check bounds size by tableEntries^2 * clusterSize and by 2^53,
    // which keeps this at most 2^18 entries (2 MiB).
    this.l1Entries = Math.min(g.tableEntries, divCeil(size, g.l2Coverage));
  }

  /** Read the L1 table (once). */
  loadL1(): Promise<DataView> {
    if (!this.l1) {
      const buf = new Uint8Array(this.l1Entries * ENTRY_BYTES);
      this.l1 = this.storage.read(buf, this.l1Offset).then(() => new DataView(buf.buffer));
      this.l1.catch(() => {
        this.l1 = undefined;
      });
    }
    return this.l1;
  }

  async getMapping(offset: number, maxLength: number): Promise<Mapping> {
    const end = Math.min(offset + maxLength, this.size);
    if (!Number.isSafeInteger(offset) || offset < 0 || !(offset < end)) {
      throw new ImageError('bad-argument', `Request out of range: offset ${offset}, length ${maxLength}, image size ${this.size}`);
    }
    const head = (await this.run(offset, end, true))!;
    let length = head.length;
    // Merge following runs of the same kind (and, for data, host-contiguous).
    // A bad entry ahead only ends the merge: it fails when it is asked for.
    while (offset + length < end) {
      let next: Run | undefined;
      try {
        next = await this.run(offset + length, end, false);
      } catch {
        break;
      }
      if (!next || next.kind !== head.kind || (head.kind === 'data' && next.host !== head.host + length)) break;
      length += next.length;
    }
    switch (head.kind) {
      case 'data':
        return { kind: 'data', length, storage: this.storage, hostOffset: head.host };
      case 'zero':
        return { kind: 'zero', length };
      case 'unallocated':
        return { kind: 'unallocated', length };
    }
  }

  /**
   * The run starting at `pos` (< end) within one L1 entry's range, or one
   * piece of its L2 table. An invalid entry throws when `strict`, otherwise
   * gives undefined.
   */
  private async run(pos: number, end: number, strict: boolean): Promise<Run | undefined> {
    const g = this.g;
    const cs = g.clusterSize;
    const l1 = await this.loadL1();
    let l1Index = Math.floor(pos / g.l2Coverage);
    const l2Offset = entryAt(l1, l1Index);

    if (isUnallocated(l2Offset)) {
      // A whole unallocated L1 entry, and every unallocated one after it, in one step.
      let stop = (l1Index + 1) * g.l2Coverage;
      while (stop < end && l1Index + 1 < this.l1Entries && isUnallocated(entryAt(l1, l1Index + 1))) {
        l1Index++;
        stop += g.l2Coverage;
      }
      return { kind: 'unallocated', length: Math.min(stop, end) - pos, host: 0 };
    }
    if (!isValidTableOffset(g, l2Offset)) {
      if (strict) throw corrupt(`QED L2 table offset ${hex(l2Offset)} in L1 entry ${l1Index} is invalid`);
      return undefined;
    }

    const l2Start = l1Index * g.l2Coverage;
    const index = Math.floor((pos - l2Start) / cs);
    const chunkStart = index - (index % this.chunkEntries);
    const chunk = await this.cache.get(l2Offset + chunkStart * ENTRY_BYTES, this.chunkEntries * ENTRY_BYTES);

    let i = index - chunkStart;
    const first = entryAt(chunk, i);
    let kind: RunKind;
    if (isUnallocated(first)) kind = 'unallocated';
    else if (isZeroCluster(first)) kind = 'zero';
    else if (isValidClusterOffset(g, first)) kind = 'data';
    else if (strict) throw corrupt(`QED data cluster offset ${hex(first)} for guest offset ${pos} is invalid`);
    else return undefined;

    let stop = l2Start + (index + 1) * cs;
    let expect = first + cs;
    while (stop < end && ++i < this.chunkEntries) {
      const e = entryAt(chunk, i);
      if (kind === 'data') {
        // Every cluster is checked, not only the first of a run, so that the
        // answer does not depend on where a request happens to start.
        if (e !== expect || !isValidClusterOffset(g, e)) break;
        expect += cs;
      } else if (kind === 'zero' ? !isZeroCluster(e) : !isUnallocated(e)) {
        break;
      }
      stop += cs;
    }
    return { kind, length: Math.min(stop, end) - pos, host: kind === 'data' ? first + (pos % cs) : 0 };
  }

  /** Forget cached tables (and the L1 table: it is read again when next needed). */
  clear(): void {
    this.cache.clear();
    this.l1 = undefined;
  }

  /** The L1 entry `index` (below the reachable count). */
  async l1Entry(index: number): Promise<number> {
    return entryAt(await this.loadL1(), index);
  }

  /** Record an L1 entry already written to the storage. */
  async setL1Entry(index: number, value: number): Promise<void> {
    writeU64(await this.loadL1(), index * ENTRY_BYTES, value, true);
  }

  /** A new table is about to appear at [start, end): nothing cached there may survive. */
  forgetRange(start: number, end: number): void {
    this.cache.drop(start, end);
  }

  /**
   * Record L2 entries already written to the storage: `values` from entry
   * `index` of the table at `l2Offset` (one run inside one table).
   */
  async setL2Entries(l2Offset: number, index: number, values: readonly number[]): Promise<void> {
    let i = 0;
    while (i < values.length) {
      const at = index + i;
      const chunkStart = at - (at % this.chunkEntries);
      const n = Math.min(values.length - i, chunkStart + this.chunkEntries - at);
      const from = i;
      await this.cache.patch(l2Offset + chunkStart * ENTRY_BYTES, (view) => {
        for (let k = 0; k < n; k++) writeU64(view, (at - chunkStart + k) * ENTRY_BYTES, values[from + k]!, true);
      });
      i += n;
    }
  }
}
