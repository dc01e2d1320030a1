/**
 * qemu-img compare: guest-visible contents, driven by block status so that
 * sparse regions are never read. Mismatch offsets are reported at 512-byte
 * granularity, as qemu-img does.
 */
import { ImageError, isImageError } from '../errors.js';
import type { Extent, Image } from '../block/image.js';
import { throwIfAborted, type OperationOptions } from './operation.js';

const SECTOR = 512;
/** qemu-img's IO_BUF_SIZE: the largest range read in one go. */
const IO_BUF_SIZE = 2 * 1024 * 1024;

export type CompareResult =
  | { kind: 'identical'; sizeMismatch: boolean }
  | { kind: 'content'; offset: number; sizeMismatch: boolean }
  | { kind: 'strict-size' }
  | { kind: 'strict-status'; offset: number };

/** A failure qemu-img reports with its own exit code (3: block status, 4: read). */
export class CompareFailure extends ImageError {
  readonly stage: 'status' | 'read';
  constructor(stage: 'status' | 'read', message: string, options?: { cause?: unknown }) {
    super(isImageError(options?.cause) ? options.cause.code : 'io', message, options);
    this.name = 'CompareFailure';
    this.stage = stage;
  }
}

/**
 * `signal` stops the comparison between chunks (rejecting with ImageError
 * 'aborted'); `onProgress` gets the bytes compared of the larger size.
 */
export interface CompareOptions extends OperationOptions {
  strict?: boolean;
  /** Names for messages; default the images' filenames. */
  names?: [string, string];
  /** Called before the tail of the larger image is checked. */
  onSizeMismatch?: () => void;
  /** Progress in percent of the compared range, as increments. */
  progress?: (deltaPercent: number) => void;
}

function errText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

async function status(img: Image, name: string, offset: number, length: number): Promise<Extent> {
  try {
    return await img.blockStatus(offset, length);
  } catch (e) {
    throw new CompareFailure('status', `Sector allocation test failed for ${name}`, { cause: e });
  }
}

async function readAt(img: Image, name: string, offset: number, into: Uint8Array): Promise<void> {
  try {
    await img.read(offset, into);
  } catch (e) {
    throw new CompareFailure('read', `Error while reading offset ${offset} of ${name}: ${errText(e)}`, { cause: e });
  }
}

export function isZero(buf: Uint8Array): boolean {
  let i = 0;
  if (buf.byteOffset % 4 === 0) {
    const words = new Uint32Array(buf.buffer, buf.byteOffset, buf.length >>> 2);
    for (let w = 0; w < words.length; w++) if (words[w] !== 0) return false;
    i = words.length * 4;
  }
  for (; i < buf.length; i++) if (buf[i] !== 0) return false;
  return true;
}

/** Index of the first 512-byte block holding a non-zero byte, or -1 (qemu's find_nonzero). */
export function findNonzero(buf: Uint8Array): number {
  for (let i = 0; i < buf.length; i += SECTOR) {
    if (!isZero(buf.subarray(i, Math.min(i + SECTOR, buf.length)))) return i;
  }
  return -1;
}

/** qemu's compare_buffers: whether the first block differs, and how many bytes share that answer. */
function compareBuffers(a: Uint8Array, b: Uint8Array): { differ: boolean; n: number } {
  const eq = (from: number, to: number): boolean => {
    for (let i = from; i < to; i++) if (a[i] !== b[i]) return false;
    return true;
  };
  let i = Math.min(a.length, SECTOR);
  const differ = !eq(0, i);
  while (i < a.length) {
    const len = Math.min(a.length - i, SECTOR);
    if (!eq(i, i + len) !== differ) break;
    i += len;
  }
  return { differ, n: i };
}

/** qemu compares the whole status word, including BDRV_BLOCK_EOF (the extent reaches the image end). */
const sameStatus = (a: Extent, b: Extent, aEof: boolean, bEof: boolean): boolean =>
  a.data === b.data && a.zero === b.zero && a.present === b.present && (a.hostOffset !== undefined) === (b.hostOffset !== undefined) && aEof === bEof;

/**
 * qemu-img compare: whether two images show the same guest content (the
 * shorter one reads as zero beyond its end unless `strict`). Sparse ranges
 * are compared by block status, never read. Returns the first differing
 * offset; a failed read or status query rejects with CompareFailure.
 *
 * @example
 * const r = await compareImages(a, b);
 * if (r.kind === 'content') console.log(`differ at byte ${r.offset}`);
 */
export async function compareImages(img1: Image, img2: Image, opts: CompareOptions = {}): Promise<CompareResult> {
  const [name1, name2] = opts.names ?? [img1.filename, img2.filename];
  const size1 = img1.size;
  const size2 = img2.size;
  const base = Math.min(size1, size2);
  const sizeMismatch = size1 !== size2;
  if (opts.strict && sizeMismatch) return { kind: 'strict-size' };
  // qemu-img counts progress against the larger size.
  const progressBase = Math.max(size1, size2, 1);
  let compared = 0;
  const progress = (chunk: number): void => {
    opts.progress?.(Math.fround(Math.fround(chunk / progressBase) * 100));
    compared += chunk;
    opts.onProgress?.(compared, Math.max(size1, size2));
  };
  const signal = opts.signal;

  // Reads of empty sectors allocated on one side only.
  const checkEmpty = async (img: Image, name: string, offset: number, length: number): Promise<number> => {
    const buf = new Uint8Array(length);
    await readAt(img, name, offset, buf);
    const idx = findNonzero(buf);
    return idx < 0 ? -1 : offset + idx;
  };

  let offset = 0;
  while (offset < base) {
    throwIfAborted(signal);
    const s1 = await status(img1, name1, offset, size1 - offset);
    const s2 = await status(img2, name2, offset, size2 - offset);
    let chunk = Math.min(s1.length, s2.length);
    if (opts.strict && !sameStatus(s1, s2, offset + s1.length === size1, offset + s2.length === size2)) return { kind: 'strict-status', offset };
    if (s1.zero && s2.zero) {
      // both read as zero
    } else if (s1.present === s2.present) {
      if (s1.present) {
        chunk = Math.min(chunk, IO_BUF_SIZE);
        const b1 = new Uint8Array(chunk);
        const b2 = new Uint8Array(chunk);
        await readAt(img1, name1, offset, b1);
        await readAt(img2, name2, offset, b2);
        const r = compareBuffers(b1, b2);
        if (r.differ || r.n !== chunk) return { kind: 'content', offset: offset + (r.differ ? 0 : r.n), sizeMismatch: false };
      }
    } else {
      chunk = Math.min(chunk, IO_BUF_SIZE);
      const at = s1.present ? await checkEmpty(img1, name1, offset, chunk) : await checkEmpty(img2, name2, offset, chunk);
      if (at >= 0) return { kind: 'content', offset: at, sizeMismatch: false };
    }
    offset += chunk;
    progress(chunk);
  }

  if (sizeMismatch) {
    opts.onSizeMismatch?.();
    const [over, name, total] = size1 > size2 ? [img1, name1, size1] : [img2, name2, size2];
    let pos = base;
    while (pos < total) {
      throwIfAborted(signal);
      const s = await status(over, name, pos, total - pos);
      let chunk = s.length;
      if (s.present && !s.zero) {
        chunk = Math.min(chunk, IO_BUF_SIZE);
        const at = await checkEmpty(over, name, pos, chunk);
        if (at >= 0) return { kind: 'content', offset: at, sizeMismatch: true };
      }
      pos += chunk;
      progress(chunk);
    }
  }
  return { kind: 'identical', sizeMismatch };
}
