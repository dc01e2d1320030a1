/**
 * qemu-img rebase on `Image`: give an image a new backing file (or none)
 * while keeping what the guest reads. Safe mode copies, into the top image,
 * every range that the top does not allocate and that the old and new
 * backing files read differently; then the header names the new backing
 * file. The header is written last, so an interrupted rebase leaves the
 * image reading as before.
 */
import { ImageError, isImageError } from '../errors.js';
import type { Image } from '../block/image.js';
import { throwIfAborted, type OperationOptions } from './operation.js';

const SECTOR = 512;
/** qemu-img's IO_BUF_SIZE: the largest range compared in one step. */
const IO_BUF_SIZE = 2 * 1024 * 1024;

export interface RebaseOptions extends OperationOptions {
  /** The backing file name to record; '' removes the backing file. */
  backingFile: string;
  /** Its format, recorded in the image (qemu requires one with a backing file). */
  backingFormat?: string;
  /** Only rewrite the header (-u): the caller vouches the contents match. */
  unsafe?: boolean;
  /** qemu-img -p's meter: increments in percent, as qemu-img rebase prints them. */
  progress?: (deltaPercent: number) => void;
}

/**
 * Rebase `image` (opened writable, with its backing chain unless `unsafe`)
 * onto `newBacking` (null: no backing file, flattening what the old chain
 * provided). `newBacking` may be a layer of the image's own chain, which
 * only copies what the layers above it allocate. The image stays open; the
 * caller closes it.
 *
 * @example
 * await rebaseImage(top, newBase, { backingFile: 'base2.qcow2', backingFormat: 'qcow2' });
 */
export async function rebaseImage(image: Image, newBacking: Image | null, opts: RebaseOptions): Promise<void> {
  throwIfAborted(opts.signal);
  if (!opts.unsafe) await copyDifferences(image, newBacking, opts);
  // Everything copied is on disk before the header names the new file.
  await image.flush();
  throwIfAborted(opts.signal);
  await changeBackingFile(image, opts.backingFile, opts.backingFormat);
}

/** qemu's bdrv_change_backing_file with its checks, in qemu-img rebase's words. */
async function changeBackingFile(image: Image, name: string, format: string | undefined): Promise<void> {
  const fail = (code: ImageError['code'], why: string, cause?: unknown) =>
    new ImageError(code, `Could not change the backing file to '${name}': ${why}`, { cause });
  if (name !== '' && format === undefined) throw fail('bad-argument', 'backing format must be specified');
  const driver = image.driver;
  if (!driver.setBacking) throw fail('unsupported', 'Operation not supported');
  try {
    await driver.setBacking(name === '' ? undefined : name, name === '' ? undefined : format);
  } catch (e) {
    throw isImageError(e) ? fail(e.code, e.message, e) : e;
  }
}

/** Whether `layer` is `image`'s backing file or one further down its chain. */
function inChain(image: Image, layer: Image): boolean {
  for (let b = image.backing; b; b = b.backing) if (b === layer) return true;
  return false;
}

/**
 * Whether [offset, offset + n) is allocated in some layer from `from` down
 * to (not including) `base`, and how long that answer holds. Past a layer's
 * end counts as allocated: the layer reads zeroes there, whatever lies below.
 */
async function allocatedAbove(from: Image | null, base: Image, offset: number, n: number): Promise<{ allocated: boolean; length: number }> {
  let length = n;
  for (let layer = from; layer && layer !== base; layer = layer.backing) {
    if (offset >= layer.size) return { allocated: true, length };
    const st = await layer.layerStatus(offset, Math.min(length, layer.size - offset));
    if (st.allocated) return { allocated: true, length: st.length };
    length = Math.min(length, st.length);
  }
  return { allocated: false, length };
}

async function copyDifferences(image: Image, newBacking: Image | null, opts: RebaseOptions): Promise<void> {
  const size = image.size;
  const old = image.backing;
  const oldSize = old?.size ?? 0;
  const newSize = newBacking?.size ?? 0;
  const prefix = newBacking !== null && inChain(image, newBacking) ? newBacking : null;
  // qemu's per-step increment: 100 divided by the number of whole IO_BUF_SIZE steps.
  const steps = size === 0 ? 0 : Math.floor(size / Math.min(size, IO_BUF_SIZE));
  const increment = steps === 0 ? 0 : 100 / steps;
  const bufOld = new Uint8Array(Math.min(IO_BUF_SIZE, size));
  const bufNew = new Uint8Array(bufOld.length);
  let n = 0;
  for (let offset = 0; offset < size; offset += n) {
    throwIfAborted(opts.signal);
    n = Math.min(IO_BUF_SIZE, size - offset);
    opts.onProgress?.(offset, size);
    if (prefix) {
      // Unchanged since the new backing file: old and new read the same.
      const above = await allocatedAbove(old, prefix, offset, n);
      n = above.length;
      if (!above.allocated) continue;
    }
    const st = await image.layerStatus(offset, n);
    n = st.length;
    if (st.allocated) continue;

    let oldIsZero = false;
    if (offset >= oldSize || !old) {
      oldIsZero = true;
    } else {
      n = Math.min(n, oldSize - offset);
    }
    if (newBacking && offset < newSize) n = Math.min(n, newSize - offset);
    const a = bufOld.subarray(0, n);
    const b = bufNew.subarray(0, n);
    if (oldIsZero) a.fill(0);
    else await old!.read(offset, a);
    if (newBacking && offset < newSize) await newBacking.read(offset, b);
    else b.fill(0);

    let done = 0;
    while (done < n) {
      const { differ, length } = compareSectors(a, b, done);
      if (differ) {
        if (oldIsZero) await image.writeZeroes(offset + done, length);
        else await image.write(offset + done, a.subarray(done, done + length));
      }
      done += length;
    }
    opts.progress?.(increment);
  }
  opts.onProgress?.(size, size);
}

/**
 * qemu-img's compare_buffers: whether the sector at `from` differs, and how
 * many bytes from there (whole sectors) share that answer.
 */
function compareSectors(a: Uint8Array, b: Uint8Array, from: number): { differ: boolean; length: number } {
  const end = a.length;
  const differs = (start: number): boolean => {
    const stop = Math.min(end, start + SECTOR);
    for (let i = start; i < stop; i++) if (a[i] !== b[i]) return true;
    return false;
  };
  const differ = differs(from);
  let i = Math.min(end, from + SECTOR);
  while (i < end && differs(i) === differ) i = Math.min(end, i + SECTOR);
  return { differ, length: i - from };
}
