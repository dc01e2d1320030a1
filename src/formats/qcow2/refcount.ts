/**
 * Read-only refcount lookup (spec: Host cluster management): a two-level
 * table of refcount blocks, entries refcount_bits wide. Sub-byte widths
 * pack LSB-first in each byte; wider ones are big-endian.
 */
import { ImageError } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import * as C from './constants.js';
import { hexAlt } from './text.js';

const TWO_32 = 0x1_0000_0000;
/** QEMU's default refcount cache: 4 blocks. */
const BLOCK_CACHE = 4;

export interface RefcountConfig {
  storage: Storage;
  clusterBits: number;
  refcountOrder: number;
  tableOffset: number;
  tableClusters: number;
}

export class RefcountReader {
  private readonly cfg: RefcountConfig;
  private readonly clusterSize: number;
  /** log2 of refcount entries per block. */
  private readonly blockBits: number;
  private table: Promise<DataView> | undefined;
  private readonly blocks = new Map<number, Promise<Uint8Array>>();

  constructor(cfg: RefcountConfig) {
    this.cfg = cfg;
    this.clusterSize = 2 ** cfg.clusterBits;
    this.blockBits = cfg.clusterBits + 3 - cfg.refcountOrder;
  }

  private loadTable(): Promise<DataView> {
    this.table ??= (async () => {
      // At most 8 MiB (validated at open); clipped to the file: the rest reads as zero.
      const fileSize = await this.cfg.storage.size();
      const want = this.cfg.tableClusters * this.clusterSize;
      const len = Math.max(0, Math.min(want, fileSize - this.cfg.tableOffset));
      const buf = new Uint8Array(len - (len % C.REFTABLE_ENTRY_SIZE));
      await this.cfg.storage.read(buf, this.cfg.tableOffset);
      return new DataView(buf.buffer);
    })();
    return this.table;
  }

  /** Offset of refcount block `i`, 0 if none. */
  private async blockOffset(i: number): Promise<number> {
    const t = await this.loadTable();
    if ((i + 1) * C.REFTABLE_ENTRY_SIZE > t.byteLength) return 0;
    const hi = t.getUint32(i * 8, false);
    const lo = t.getUint32(i * 8 + 4, false) & C.REFT_OFFSET_MASK_LO;
    if (hi > 0x1f_ffff) throw new ImageError('unsupported', 'Refcount block offset is too large: offsets above 2^53 are not supported');
    const off = hi * TWO_32 + (lo >>> 0);
    if (off % this.clusterSize !== 0) {
      throw new ImageError('corrupt', `Refblock offset ${hexAlt(off)} unaligned (reftable index: ${hexAlt(i)})`);
    }
    return off;
  }

  private block(i: number, offset: number): Promise<Uint8Array> {
    const hit = this.blocks.get(i);
    if (hit) {
      this.blocks.delete(i);
      this.blocks.set(i, hit);
      return hit;
    }
    const p = (async () => {
      const buf = new Uint8Array(this.clusterSize);
      await this.cfg.storage.read(buf, offset);
      return buf;
    })();
    this.blocks.set(i, p);
    p.catch(() => {
      if (this.blocks.get(i) === p) this.blocks.delete(i);
    });
    while (this.blocks.size > BLOCK_CACHE) this.blocks.delete(this.blocks.keys().next().value as number);
    return p;
  }

  /** Refcount of host cluster `cluster` (exact up to 2^53). */
  async refcount(cluster: number): Promise<number> {
    const bi = Math.floor(cluster / 2 ** this.blockBits);
    const off = await this.blockOffset(bi);
    if (off === 0) return 0;
    const b = await this.block(bi, off);
    return entryAt(b, cluster % 2 ** this.blockBits, this.cfg.refcountOrder);
  }

  /**
   * How many clusters in [0, endCluster) have a nonzero refcount, stopping
   * once `limit` is reached: one read per refcount block.
   */
  async countAllocated(endCluster: number, limit: number): Promise<number> {
    const per = 2 ** this.blockBits;
    let count = 0;
    for (let bi = 0; bi * per < endCluster && count < limit; bi++) {
      const off = await this.blockOffset(bi);
      if (off === 0) continue;
      const b = await this.block(bi, off);
      const n = Math.min(per, endCluster - bi * per);
      for (let j = 0; j < n && count < limit; j++) {
        if (entryAt(b, j, this.cfg.refcountOrder) !== 0) count++;
      }
    }
    return count;
  }
}

/** Entry `i` of a refcount block with entries of 2^order bits. */
export function entryAt(block: Uint8Array, i: number, order: number): number {
  switch (order) {
    case 0:
      return (block[i >>> 3]! >>> (i & 7)) & 1;
    case 1:
      return (block[i >>> 2]! >>> (2 * (i & 3))) & 3;
    case 2:
      return (block[i >>> 1]! >>> (4 * (i & 1))) & 15;
    case 3:
      return block[i]!;
    case 4:
      return (block[2 * i]! << 8) | block[2 * i + 1]!;
    case 5:
      return ((block[4 * i]! << 24) | (block[4 * i + 1]! << 16) | (block[4 * i + 2]! << 8) | block[4 * i + 3]!) >>> 0;
    default: {
      const v = new DataView(block.buffer, block.byteOffset + 8 * i, 8);
      return v.getUint32(0, false) * TWO_32 + v.getUint32(4, false);
    }
  }
}
