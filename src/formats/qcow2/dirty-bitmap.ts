/**
 * One dirty bitmap in memory: a bit per granule of the guest (bit n of
 * byte n/8 is granule n, as the spec's bitmap data is laid out), and its
 * bitmap table on disk (spec: Bitmaps, "Bitmap table").
 */
import type { BitmapBits } from '../../block/bitmaps.js';
import { ImageError } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import * as C from './constants.js';

const TWO_32 = 0x1_0000_0000;

export class DirtyBitmap implements BitmapBits {
  readonly granularity: number;
  readonly bits: Uint8Array;
  /** Changed since it was loaded: it must be stored again. */
  changed = false;

  constructor(
    readonly size: number,
    readonly granularityBits: number,
    bits?: Uint8Array,
  ) {
    this.granularity = 2 ** granularityBits;
    this.bits = bits ?? new Uint8Array(serializedBytes(size, granularityBits));
  }

  /** Mark every granule that [offset, offset+length) touches. */
  set(offset: number, length: number): void {
    if (length <= 0) return;
    const end = Math.min(offset + length, this.size);
    if (offset >= end) return;
    const first = Math.floor(offset / this.granularity);
    const last = Math.floor((end - 1) / this.granularity);
    this.setGranules(first, last);
  }

  private setGranules(first: number, last: number): void {
    const b = this.bits;
    let g = first;
    while (g <= last && g % 8 !== 0) b[g >> 3]! |= 1 << (g & 7), g++;
    if (g + 8 <= last + 1) {
      const whole = Math.floor((last + 1 - g) / 8);
      b.fill(0xff, g / 8, g / 8 + whole);
      g += whole * 8;
    }
    while (g <= last) b[Math.floor(g / 8)]! |= 1 << (g & 7), g++;
    this.changed = true;
  }

  clear(): void {
    this.bits.fill(0);
    this.changed = true;
  }

  /** OR another bitmap of the same image into this one (granularities may differ). */
  merge(other: BitmapBits): void {
    const gs = other.granularity;
    const count = Math.ceil(other.size / gs);
    if (other instanceof DirtyBitmap && gs === this.granularity) {
      for (let i = 0; i < this.bits.length; i++) this.bits[i]! |= other.bits[i]!;
    } else {
      for (let g = 0; g < count; g++) if (other.isSet(g)) this.set(g * gs, gs);
    }
    this.changed = true;
  }

  /**
   * This bitmap for an image resized to `size`: granules that remain keep
   * their bits, new ones start clean, and the bits of granules past a
   * smaller end are dropped (as qemu's bitmaps follow a truncate).
   */
  resized(size: number): DirtyBitmap {
    const next = new DirtyBitmap(size, this.granularityBits);
    const granules = Math.ceil(Math.min(size, this.size) / this.granularity);
    const whole = Math.floor(granules / 8);
    next.bits.set(this.bits.subarray(0, whole));
    for (let g = whole * 8; g < granules; g++) if (this.isSet(g)) next.bits[g >> 3]! |= 1 << (g & 7);
    next.changed = true;
    return next;
  }

  isSet(granule: number): boolean {
    return (this.bits[Math.floor(granule / 8)]! & (1 << (granule & 7))) !== 0;
  }
}

/** Bytes of bitmap data: one bit per granule, in whole 64-bit words as qemu serializes. */
export function serializedBytes(size: number, granularityBits: number): number {
  const granules = Math.ceil(size / 2 ** granularityBits);
  return Math.ceil(granules / 64) * 8;
}

/** Clusters the bitmap table needs entries for. */
export function tableEntries(size: number, granularityBits: number, clusterSize: number): number {
  return Math.max(1, Math.ceil(serializedBytes(size, granularityBits) / clusterSize));
}

/** Host offsets of a bitmap table (0: an all-zero cluster; -1: all ones). */
export async function readBitmapTable(storage: Storage, offset: number, entries: number): Promise<number[]> {
  const buf = new Uint8Array(entries * 8);
  await storage.read(buf, offset);
  const v = new DataView(buf.buffer);
  const out: number[] = [];
  for (let i = 0; i < entries; i++) {
    const hi = v.getUint32(8 * i, false);
    const lo = v.getUint32(8 * i + 4, false);
    const host = (hi & C.OFFSET_MASK_HI) * TWO_32 + ((lo & C.OFFSET_MASK_LO) >>> 0);
    if ((hi & 0xff000000) !== 0 || (lo & 0x1fe) !== 0 || (host !== 0 && (lo & 1) !== 0)) {
      throw new ImageError('corrupt', 'Bitmap table entry is invalid');
    }
    out.push(host === 0 ? ((lo & 1) !== 0 ? -1 : 0) : host);
  }
  return out;
}

/** The bitmap's bits from its table: absent clusters read as zeros, flagged ones as ones. */
export async function loadBitmapData(
  storage: Storage,
  table: readonly number[],
  size: number,
  granularityBits: number,
  clusterSize: number,
): Promise<DirtyBitmap> {
  const bytes = serializedBytes(size, granularityBits);
  const bits = new Uint8Array(bytes);
  for (let i = 0; i < table.length; i++) {
    const start = i * clusterSize;
    if (start >= bytes) break;
    const part = bits.subarray(start, Math.min(bytes, start + clusterSize));
    const host = table[i]!;
    if (host === -1) part.fill(0xff);
    else if (host !== 0) await storage.read(part, host);
  }
  const bm = new DirtyBitmap(size, granularityBits, bits);
  clearTail(bm);
  return bm;
}

/** Bits past the last granule stay zero, whatever the file held. */
function clearTail(bm: DirtyBitmap): void {
  const granules = Math.ceil(bm.size / bm.granularity);
  for (let g = granules; g < bm.bits.length * 8; g++) bm.bits[g >> 3]! &= ~(1 << (g & 7));
}
