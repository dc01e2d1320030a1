/**
 * convert --bitmaps: the source's persistent bitmaps copied to the target
 * after the data, with qemu-img convert's checks and messages. qemu walks
 * a node's bitmaps newest first, so its checks and warnings do too.
 */
import type { Image } from '../block/image.js';
import { ImageError } from '../errors.js';
import { addBitmap, listBitmaps, mergeBitmap, supportsPersistentBitmaps } from './bitmaps.js';

/** Before anything is created: the source must hold bitmaps, all consistent unless skipped. */
export async function checkSourceBitmaps(sources: readonly Image[], skipBroken: boolean): Promise<void> {
  if (sources.length > 1) throw new ImageError('bad-argument', 'Copying bitmaps only possible with single source');
  const src = sources[0]!;
  if (!(await supportsPersistentBitmaps(src))) throw new ImageError('unsupported', 'Source lacks bitmap support');
  if (skipBroken) return;
  for (const b of (await listBitmaps(src)).reverse()) {
    if (b.inconsistent) {
      throw new ImageError('bad-argument', `Cannot copy inconsistent bitmap '${b.name}'`, {
        hint: "Try --skip-broken-bitmaps, or use 'qimg bitmap --remove' to delete it",
      });
    }
  }
}

/** Once the target is open: it must be able to store them. */
export async function checkTargetBitmaps(target: Image | undefined, format: string): Promise<void> {
  if (!target || !(await supportsPersistentBitmaps(target))) {
    throw new ImageError('unsupported', `Format driver '${format}' does not support bitmaps`);
  }
}

/** After the copy: each bitmap added to the target (same granularity, enabled state) and filled from the source. */
export async function copyBitmaps(src: Image, dst: Image, skipBroken: boolean, warn: (message: string) => void): Promise<void> {
  for (const b of (await listBitmaps(src)).reverse()) {
    if (b.inconsistent) {
      if (skipBroken) warn(`Skipping inconsistent bitmap '${b.name}'`);
      continue;
    }
    try {
      await addBitmap(dst, b.name, { granularity: b.granularity, disabled: !b.enabled });
    } catch (e) {
      if (!(e instanceof ImageError)) throw e;
      throw new ImageError(e.code, `Failed to create bitmap ${b.name}: ${e.message}`, { cause: e });
    }
    try {
      await mergeBitmap(dst, b.name, b.name, { from: src });
    } catch (e) {
      if (!(e instanceof ImageError)) throw e;
      throw new ImageError(e.code, `Failed to populate bitmap ${b.name}: ${e.message}`, { cause: e });
    }
  }
}
