/**
 * qemu-img bench: a fixed number of equal-sized requests at a step through
 * the image, `depth` of them in flight, optionally with a flush every N
 * requests. Written against Image only.
 */
import { ImageError } from '../errors.js';
import type { Image } from '../block/image.js';

export interface BenchOptions {
  count: number;
  depth: number;
  bufferSize: number;
  /** Distance between the offsets of consecutive requests (qemu: defaults to the buffer size). */
  step: number;
  offset: number;
  write: boolean;
  pattern: number;
  /** Flush after every N requests (0: never). */
  flushInterval: number;
  /** Wait for the requests in flight before each flush (qemu's default). */
  drain: boolean;
  /** Cache mode writethrough/directsync: each write is flushed before it completes. */
  writethrough?: boolean;
}

/** Runs the requests; returns the elapsed milliseconds measured by `now`. */
export async function bench(image: Image, o: BenchOptions, now: () => number): Promise<number> {
  if (o.offset + o.bufferSize > image.size) throw new ImageError('io', 'Input/output error');
  let next = o.offset;
  let issued = 0;
  let sinceFlush = 0;
  let inFlight = 0;
  let drained: (() => void) | undefined;
  let flushing: Promise<void> | undefined;

  const takeOffset = (): number => {
    const off = next;
    next += o.step;
    // Wrap before a request would run past the end, as qemu-img does.
    if (next > image.size - o.bufferSize) next = 0;
    return off;
  };

  const worker = async (buf: Uint8Array): Promise<void> => {
    for (;;) {
      if (flushing) await flushing;
      if (issued >= o.count) return;
      issued++;
      const off = takeOffset();
      inFlight++;
      try {
        if (o.write) {
          await image.write(off, buf);
          if (o.writethrough) await image.flush();
        } else await image.read(off, buf);
      } finally {
        inFlight--;
        if (inFlight === 0) drained?.();
      }
      if (o.flushInterval > 0 && ++sinceFlush >= o.flushInterval && !flushing) {
        sinceFlush = 0;
        flushing = (async () => {
          if (o.drain && inFlight > 0) await new Promise<void>((r) => (drained = r));
          drained = undefined;
          await image.flush();
        })();
        await flushing;
        flushing = undefined;
      }
    }
  };

  const start = now();
  const buffers = Array.from({ length: Math.max(1, Math.min(o.depth, o.count)) }, () => new Uint8Array(o.bufferSize).fill(o.pattern));
  await Promise.all(buffers.map((b) => worker(b)));
  return now() - start;
}
