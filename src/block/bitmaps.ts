/**
 * What a format offers for persistent dirty bitmaps (qcow2 v3 does; QED
 * and raw do not). ops/bitmaps.ts applies QEMU's block-layer rules on top.
 */

/** A bitmap's bits: one per granule of the guest. */
export interface BitmapBits {
  readonly size: number;
  readonly granularity: number;
  isSet(granule: number): boolean;
  clear(): void;
  /** OR in another bitmap of the same size (granularities may differ). */
  merge(other: BitmapBits): void;
}

/** One persistent bitmap as the format holds it. */
export interface StoredBitmap {
  readonly name: string;
  readonly granularity: number;
  readonly enabled: boolean;
  /** Absent when the bitmap was found in-use (not stored by its last writer): inconsistent. */
  readonly bits: BitmapBits | undefined;
  /** qemu-img info's flags: "in-use", "auto". */
  readonly flags: string[];
}

export interface PersistentBitmapSet {
  list(): readonly StoredBitmap[];
  /**
   * Whether a new bitmap could be stored: throws the format's reason
   * (QEMU's can_store_new_dirty_bitmap), without QEMU's "Can't make..." prefix.
   */
  checkCanStore(name: string, granularity: number): void;
  add(name: string, granularity: number, enabled: boolean): void;
  remove(name: string): void;
  setEnabled(name: string, enabled: boolean): void;
  /** Whether this image can store bitmaps at all (qcow2 v2 cannot). */
  readonly supported: boolean;
  /** The format's default granularity (QEMU: cluster size within 4 KiB..64 KiB). */
  readonly defaultGranularity: number;
}
