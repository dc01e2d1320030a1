/**
 * qemu-img commit on `Image`: everything the top image and the layers
 * between it and the base allocate is written into the base, so the base
 * reads as the top did; then, unless dropped, the top is emptied (qemu's
 * bdrv_make_empty) so that it reads through to the base.
 */
import { ImageError } from '../errors.js';
import type { Image } from '../block/image.js';
import { throwIfAborted, type OperationOptions } from './operation.js';
import { resizeImage } from './resize.js';

/** qemu's mirror: bytes copied per request at most. */
const MAX_IO = 1024 * 1024;
/** Smallest copy granularity (qemu's default dirty-bitmap granularity floor). */
const MIN_GRANULARITY = 4096;
const MAX_GRANULARITY = 65536;

export interface CommitOptions extends OperationOptions {
  /**
   * The base image, opened writable, by the filename of its layer in the
   * top's backing chain (default: the top's backing file, which must then
   * be writable).
   */
  base?: Image;
  /** Leave the top image as it is (-d; qemu's default when a base is named). */
  drop?: boolean;
  /** Limit writes into the base to this many bytes per second (-r). */
  rateLimit?: number;
}

/**
 * Commit `top` into its base. A base smaller than the top grows to the
 * top's size. The caller closes both images afterwards; after emptying, the top
 * takes no more writes until reopened.
 *
 * @example
 * const top = await openImageFile('overlay.qcow2', { writable: true });
 * const base = await openImageFile(top.backing!.filename, { writable: true, backing: false });
 * await commitImage(top, { base });
 */
export async function commitImage(top: Image, opts: CommitOptions = {}): Promise<void> {
  throwIfAborted(opts.signal);
  if (!top.backing) throw new ImageError('bad-argument', 'Image does not have a backing file');
  const base = opts.base ?? top.backing;
  const layer = chainLayerOf(top, base);
  if (!layer) throw new ImageError('bad-argument', `Did not find '${base.filename}' in the backing chain of '${top.filename}'`);
  // A smaller base grows to the top's size first, as qemu's commit job truncates it.
  if (base.size < top.size) await resizeImage(base, top.size, { signal: opts.signal });
  // qemu's default dirty-bitmap granularity: the base's cluster size (4 KiB at least), or 64 KiB where it has none (raw).
  const clusterSize = (await base.info())['cluster-size'];
  const granularity = clusterSize === undefined ? MAX_GRANULARITY : Math.min(MAX_GRANULARITY, Math.max(MIN_GRANULARITY, clusterSize));
  const size = top.size;
  const started = Date.now();
  let written = 0;
  let pos = 0;
  while (pos < size) {
    throwIfAborted(opts.signal);
    const run = await allocatedAbove(top, layer, pos, size - pos);
    if (!run.allocated) {
      pos += run.length;
      opts.onProgress?.(pos, size);
      continue;
    }
    // Whole granules, as qemu's mirror copies them.
    const start = Math.floor(pos / granularity) * granularity;
    const end = Math.min(size, Math.ceil((pos + run.length) / granularity) * granularity);
    await copyRange(top, base, start, end, granularity, opts);
    written += end - start;
    if (opts.rateLimit !== undefined && opts.rateLimit > 0) {
      const due = started + (written / opts.rateLimit) * 1000;
      const wait = due - Date.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    }
    pos = end;
    opts.onProgress?.(pos, size);
  }
  await base.flush();
  if (!opts.drop) {
    // qemu ignores a format that cannot be emptied (ENOTSUP): its image keeps its data.
    await top.driver.makeEmpty?.();
  }
  opts.onProgress?.(size, size);
}

/** The layer of `top`'s chain that `base` is (the same object, or the same filename). */
function chainLayerOf(top: Image, base: Image): Image | null {
  for (let b = top.backing; b; b = b.backing) if (b === base || b.filename === base.filename) return b;
  return null;
}

/** Whether [offset, ...) is allocated in `top` or a layer above `base`, and how far that holds. */
async function allocatedAbove(top: Image, base: Image, offset: number, length: number): Promise<{ allocated: boolean; length: number }> {
  let n = length;
  for (let layer: Image | null = top; layer && layer !== base; layer = layer.backing) {
    if (offset >= layer.size) continue;
    const st = await layer.layerStatus(offset, Math.min(n, layer.size - offset));
    if (st.allocated) return { allocated: true, length: st.length };
    n = Math.min(n, st.length);
  }
  return { allocated: false, length: n };
}

/**
 * Copy [start, end) of what `top` reads into `base`, granule by granule as
 * qemu's mirror does: a granule that reads as zero throughout is written as
 * zeroes (unmapping), any other granule is copied as data, zero parts and all.
 */
async function copyRange(top: Image, base: Image, start: number, end: number, granularity: number, opts: CommitOptions): Promise<void> {
  const buf = new Uint8Array(Math.min(MAX_IO, end - start));
  let pos = start;
  while (pos < end) {
    throwIfAborted(opts.signal);
    // The run of whole zero granules from pos, or the run of granules holding data.
    const zeroEnd = await zeroGranulesEnd(top, pos, Math.min(end, pos + MAX_IO), granularity);
    if (zeroEnd > pos) {
      await base.writeZeroes(pos, zeroEnd - pos, { mayUnmap: true });
      pos = zeroEnd;
      continue;
    }
    const next = Math.min(end, pos + granularity);
    const part = buf.subarray(0, next - pos);
    await top.read(pos, part);
    await base.write(pos, part);
    pos = next;
  }
}

/** The end of the whole granules from `pos` (at most `limit`) that read as zero in `top`; `pos` if the first does not. */
async function zeroGranulesEnd(top: Image, pos: number, limit: number, granularity: number): Promise<number> {
  const e = await top.blockStatus(pos, limit - pos);
  if (!e.zero || e.data) return pos;
  const zeroTo = pos + e.length;
  if (zeroTo >= limit) return limit;
  return Math.max(pos, pos + Math.floor((zeroTo - pos) / granularity) * granularity);
}
