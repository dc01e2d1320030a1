/**
 * An image's guest content as WHATWG streams: a byte stream of its bytes
 * (BYOB readers read straight into their own buffers), a stream of extent
 * chunks for sparse-aware consumers, and a writable that fills an image.
 * All are pull-based with at most one chunk read ahead, so memory stays
 * bounded however large the image. A fired signal errors the stream with
 * ImageError 'aborted' once requests already issued have finished.
 */
import type { Image } from '../block/image.js';
import { ImageError } from '../errors.js';
import { abortError } from './operation.js';
import { ImageChunkReader, type ImageChunk, type ImageReadOptions } from './image-chunks.js';
import { ImageFiller, type ImageWriteOptions } from './image-filler.js';

export type { ImageChunk, ImageReadOptions } from './image-chunks.js';
export type { ImageWriteOptions } from './image-filler.js';

/**
 * Runs `onAbort` once when `signal` fires; returns the function that
 * detaches the listener (call it when the stream ends).
 */
function onSignal(signal: AbortSignal | undefined, onAbort: () => void): () => void {
  if (!signal) return () => {};
  if (signal.aborted) {
    queueMicrotask(onAbort);
    return () => {};
  }
  signal.addEventListener('abort', onAbort, { once: true });
  return () => signal.removeEventListener('abort', onAbort);
}

/**
 * What both readable streams share: pulls run one at a time (the stream
 * machinery guarantees it), and a fired signal errors the stream once the
 * pull in flight has settled, so no read outlives the error.
 */
class PullGate {
  private inFlight: Promise<unknown> = Promise.resolve();
  /** Ended, cancelled or aborted: a pull finishing now must not touch the controller. */
  done = false;
  private detach = (): void => {};

  constructor(private readonly signal: AbortSignal | undefined) {}

  start(controller: { error(e: unknown): void }): void {
    this.detach = onSignal(this.signal, () => {
      if (this.done) return;
      this.finish();
      void this.inFlight.then(() => controller.error(abortError(this.signal!)));
    });
  }

  /** Runs one pull's read; null once the gate has closed meanwhile. */
  async run<T>(read: () => Promise<T>): Promise<T | null> {
    const p = read();
    this.inFlight = p.catch(() => {});
    try {
      const v = await p;
      return this.done ? null : v;
    } catch (e) {
      this.finish();
      throw e;
    }
  }

  finish(): void {
    this.done = true;
    this.detach();
  }

  async cancel(): Promise<void> {
    this.finish();
    await this.inFlight;
  }
}

/**
 * The guest bytes of [offset, offset+length) in order, as a byte stream.
 * Chunks never cross a blockStatus extent: zero runs arrive as zero-filled
 * chunks of their own (at most chunkSize each).
 */
export function imageReadableStream(image: Image, opts: ImageReadOptions = {}): ReadableStream<Uint8Array> {
  const reader = new ImageChunkReader(image, opts);
  const gate = new PullGate(opts.signal);
  return new ReadableStream(
    {
      type: 'bytes',
      start: (controller) => gate.start(controller),
      async pull(controller) {
        const req = controller.byobRequest;
        const view = req?.view ? new Uint8Array(req.view.buffer, req.view.byteOffset, req.view.byteLength) : undefined;
        const next = await gate.run(() => reader.nextBytes(view));
        if (gate.done) return; // cancelled or aborted meanwhile
        if (!next) {
          gate.finish();
          controller.close();
          req?.respond(0);
        } else if (req) {
          req.respond(next.bytes.length);
        } else {
          controller.enqueue(next.bytes);
        }
      },
      cancel: () => gate.cancel(),
    },
    // One chunk read ahead of the consumer.
    { highWaterMark: reader.chunkSize },
  );
}

/**
 * The range as extent chunks: zero runs whole as `{ zero: true }` with no
 * bytes read or allocated, data as chunks of at most chunkSize with their
 * bytes. Chunks never cross a blockStatus extent.
 */
export function imageExtentStream(image: Image, opts: ImageReadOptions = {}): ReadableStream<ImageChunk> {
  const reader = new ImageChunkReader(image, opts);
  const gate = new PullGate(opts.signal);
  return new ReadableStream<ImageChunk>(
    {
      start: (controller) => gate.start(controller),
      async pull(controller) {
        const next = await gate.run(() => reader.nextChunk());
        if (gate.done) return;
        if (!next) {
          gate.finish();
          controller.close();
        } else {
          controller.enqueue(next);
        }
      },
      cancel: () => gate.cancel(),
    },
    { highWaterMark: 1 },
  );
}

/**
 * A writable that fills `image` sequentially from `offset` with chunks of
 * any size. A write past the image's end is refused (ImageError
 * 'bad-argument'); closing writes what is buffered and flushes; aborting
 * (the writer's abort() or the signal) lets issued writes finish and
 * flushes nothing.
 */
export function imageWritableStream(image: Image, opts: ImageWriteOptions = {}): WritableStream<Uint8Array> {
  const filler = new ImageFiller(image, opts);
  let detach = (): void => {};
  return new WritableStream<Uint8Array>(
    {
      start(controller) {
        detach = onSignal(opts.signal, () => {
          // A write in progress sees the signal itself; an idle stream is errored here.
          void filler.abort().then(() => controller.error(abortError(opts.signal!)));
        });
      },
      async write(chunk) {
        try {
          await filler.write(asBytes(chunk));
        } catch (e) {
          detach();
          await filler.abort();
          throw e;
        }
      },
      async close() {
        try {
          await filler.close();
        } finally {
          detach();
        }
      },
      async abort() {
        detach();
        await filler.abort();
      },
    },
    { highWaterMark: 1 },
  );
}

/** Any ArrayBufferView (a Node Buffer included) as bytes; anything else is refused. */
export function asBytes(chunk: unknown): Uint8Array {
  if (chunk instanceof Uint8Array) return chunk;
  if (ArrayBuffer.isView(chunk)) return new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  if (chunk instanceof ArrayBuffer) return new Uint8Array(chunk);
  throw new ImageError('bad-argument', 'An image stream takes Uint8Array chunks');
}
