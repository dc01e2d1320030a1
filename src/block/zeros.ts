/** Explicit zeros for storages and formats that have no cheaper way to make a range read as zero. */
import type { Storage } from '../io/storage.js';

/** Write zeros over [start, end) of `storage`, a bounded buffer at a time. */
export async function writeZeroRange(storage: Storage, start: number, end: number): Promise<void> {
  if (end <= start) return;
  const chunk = new Uint8Array(Math.min(end - start, 1 << 20));
  for (let pos = start; pos < end; pos += chunk.length) await storage.write(chunk.subarray(0, Math.min(chunk.length, end - pos)), pos);
}
