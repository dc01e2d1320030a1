/**
 * Persistent dirty bitmaps of an image, with QEMU's block-dirty-bitmap-*
 * rules and messages: add, remove, clear, enable, disable, merge, list.
 * Changes reach the disk when the image is closed (the bitmaps are flagged
 * in-use on disk meanwhile, so a crash leaves them inconsistent, not wrong).
 */
import type { PersistentBitmapSet, StoredBitmap } from '../block/bitmaps.js';
import type { Image } from '../block/image.js';
import { ImageError } from '../errors.js';

/** A persistent bitmap as `qemu-img info` lists it. */
export interface DirtyBitmapInfo {
  name: string;
  granularity: number;
  /** Tracks writes ("auto"). */
  enabled: boolean;
  /** Found in-use: not stored by its last writer, so not to be trusted ("in-use"). */
  inconsistent: boolean;
  flags: string[];
}

export interface AddBitmapOptions {
  /** Bytes per bit: a power of two, at least 512. Default: the format's (qcow2: cluster size within 4 KiB..64 KiB). */
  granularity?: number;
  /** Create it disabled: it does not track writes until enabled. */
  disabled?: boolean;
}

export interface MergeBitmapOptions {
  /** The image holding the source bitmap (default: the target image). */
  from?: Image;
}

/** QEMU names a block node in some messages; it generates "#block" names like this one. */
function nodeName(): string {
  return `#block1${String(Math.floor(Math.random() * 100)).padStart(2, '0')}`;
}

async function bitmapsOf(image: Image, forChange: boolean, forAdd = false): Promise<PersistentBitmapSet> {
  const hook = image.driver.persistentBitmaps;
  if (!hook) {
    // A format without bitmaps has none to find; only storing a new one is refused.
    if (forAdd) throw new ImageError('unsupported', `Can't store persistent bitmaps to ${nodeName()}: Operation not supported`);
    return emptySet;
  }
  return hook.call(image.driver, forChange);
}

const emptySet: PersistentBitmapSet = {
  list: () => [],
  checkCanStore: () => {},
  add: () => {},
  remove: () => {},
  setEnabled: () => {},
  defaultGranularity: 65536,
  supported: false,
};

/** Whether the image can hold persistent bitmaps (qemu's bdrv_supports_persistent_dirty_bitmap). */
export async function supportsPersistentBitmaps(image: Image): Promise<boolean> {
  return (await bitmapsOf(image, false)).supported;
}

function lookup(set: PersistentBitmapSet, name: string): StoredBitmap {
  const b = set.list().find((x) => x.name === name);
  if (!b) throw new ImageError('bad-argument', `Dirty bitmap '${name}' not found`);
  return b;
}

/** QEMU's "inconsistent" refusal; its hint is the second line. */
function usable(b: StoredBitmap): NonNullable<StoredBitmap['bits']> {
  if (!b.bits) {
    throw new ImageError('bad-argument', `Bitmap '${b.name}' is inconsistent and cannot be used`, {
      hint: 'Try block-dirty-bitmap-remove to delete this bitmap from disk',
    });
  }
  return b.bits;
}

/** The persistent bitmaps of an image (none for formats that cannot store them). */
export async function listBitmaps(image: Image): Promise<DirtyBitmapInfo[]> {
  const set = await bitmapsOf(image, false);
  return set.list().map((b) => ({
    name: b.name,
    granularity: b.granularity,
    enabled: b.enabled,
    inconsistent: b.bits === undefined,
    flags: [...b.flags],
  }));
}

/** Add a persistent bitmap (qemu-img bitmap --add). The image must be open for writing. */
export async function addBitmap(image: Image, name: string, opts: AddBitmapOptions = {}): Promise<void> {
  if (name === '') throw new ImageError('bad-argument', 'Bitmap name cannot be empty');
  const g = opts.granularity;
  if (g !== undefined && (g < 512 || !Number.isInteger(Math.log2(g)))) {
    throw new ImageError('bad-argument', 'Granularity must be power of 2 and at least 512');
  }
  const set = await bitmapsOf(image, true, true);
  const granularity = g ?? set.defaultGranularity;
  try {
    set.checkCanStore(name, granularity);
  } catch (e) {
    if (!(e instanceof ImageError)) throw e;
    throw new ImageError(e.code, `Can't make bitmap '${name}' persistent in '${nodeName()}': ${e.message}`, { cause: e });
  }
  if (set.list().some((b) => b.name === name)) throw new ImageError('bad-argument', `Bitmap already exists: ${name}`);
  set.add(name, granularity, !opts.disabled);
}

/** Remove a persistent bitmap, inconsistent ones included. */
export async function removeBitmap(image: Image, name: string): Promise<void> {
  const set = await bitmapsOf(image, true);
  lookup(set, name);
  set.remove(name);
}

/** Clear every bit of a bitmap. */
export async function clearBitmap(image: Image, name: string): Promise<void> {
  const set = await bitmapsOf(image, true);
  usable(lookup(set, name)).clear();
}

/** Make a bitmap track writes again. */
export async function enableBitmap(image: Image, name: string): Promise<void> {
  const set = await bitmapsOf(image, true);
  usable(lookup(set, name));
  set.setEnabled(name, true);
}

/** Stop a bitmap tracking writes. */
export async function disableBitmap(image: Image, name: string): Promise<void> {
  const set = await bitmapsOf(image, true);
  usable(lookup(set, name));
  set.setEnabled(name, false);
}

/** OR bitmap `source` (of `opts.from`, default this image) into bitmap `target`. */
export async function mergeBitmap(image: Image, target: string, source: string, opts: MergeBitmapOptions = {}): Promise<void> {
  const set = await bitmapsOf(image, true);
  const into = usable(lookup(set, target));
  const fromSet = opts.from && opts.from !== image ? await bitmapsOf(opts.from, false) : set;
  const from = usable(lookup(fromSet, source));
  if (from.size !== into.size) throw new ImageError('bad-argument', "Bitmaps are incompatible and can't be merged");
  into.merge(from);
}
