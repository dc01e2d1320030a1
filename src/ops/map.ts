/**
 * qemu-img map: block status over the whole chain, merged into runs the
 * way qemu-img merges them, so the output matches entry for entry.
 */
import { extents, type Image } from '../block/image.js';
import { throwIfAborted, type OperationOptions } from './operation.js';

export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  compressed: boolean;
  /** Host offset, when qemu would report one (OFFSET_VALID). */
  offset?: number;
  /** The file `offset` refers to; only set together with `offset`. */
  filename?: string;
}

/**
 * `signal` stops the walk before the next block status query (the
 * generator then throws ImageError 'aborted'); `onProgress` gets the bytes
 * mapped of the range.
 */
export interface MapOptions extends OperationOptions {
  start?: number;
  /** Bytes to cover from `start`; clipped to the image end. */
  maxLength?: number;
  /**
   * Human output ignores the difference between unallocated, zero and
   * zero+data once an entry has been printed, which lets more entries merge
   * (qemu-img's dump_map_entry rewrites the following entry the same way).
   */
  human?: boolean;
}

/** qemu-img's entry_mergeable. */
export function mergeable(curr: MapEntry, next: MapEntry): boolean {
  if (curr.length === 0) return false;
  if (
    curr.zero !== next.zero ||
    curr.data !== next.data ||
    curr.depth !== next.depth ||
    curr.present !== next.present ||
    (curr.filename !== undefined) !== (next.filename !== undefined) ||
    (curr.offset !== undefined) !== (next.offset !== undefined)
  ) {
    return false;
  }
  if (curr.filename !== undefined && curr.filename !== next.filename) return false;
  if (curr.offset !== undefined && curr.offset + curr.length !== next.offset) return false;
  return true;
}

/**
 * The map of [start, start+maxLength) as qemu-img prints it. When the range
 * is empty, one zero-length entry at `start` comes out, as in qemu-img.
 *
 * @example
 * for await (const e of mapImage(img)) console.log(e.start, e.length, e.data, e.zero, e.depth);
 */
export async function* mapImage(image: Image, opts: MapOptions = {}): AsyncGenerator<MapEntry> {
  const start = opts.start ?? 0;
  let end = image.size;
  if (opts.maxLength !== undefined) end = Math.min(start + opts.maxLength, end);
  let curr: MapEntry = { start, length: 0, depth: 0, present: false, zero: false, data: false, compressed: false };
  throwIfAborted(opts.signal);
  if (start < end) {
    for await (const e of extents(image, start, end - start)) {
      opts.onProgress?.(e.offset + e.length - start, end - start);
      const next: MapEntry = {
        start: e.offset,
        length: e.length,
        depth: e.depth,
        present: e.present,
        zero: e.zero,
        data: e.data,
        compressed: e.compressed,
      };
      if (e.hostOffset !== undefined) {
        next.offset = e.hostOffset;
        if (e.file) next.filename = e.file.name;
      }
      if (mergeable(curr, next)) {
        curr.length += next.length;
        throwIfAborted(opts.signal);
        continue;
      }
      if (curr.length > 0) {
        yield curr;
        if (opts.human && (!next.data || next.zero)) {
          next.data = false;
          next.zero = true;
        }
      }
      curr = next;
      throwIfAborted(opts.signal);
    }
  }
  yield curr;
}
