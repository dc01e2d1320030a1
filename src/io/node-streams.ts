/**
 * An image's guest content as Node streams, for pipeline() with files,
 * sockets and HTTP bodies. Both are native Node streams over the same
 * cursors as the web streams: the readable reads one chunk per _read (so
 * highWaterMark and backpressure bound what is buffered), the writable
 * fills the image in order. Errors surface as the ImageError itself.
 */
import { Readable, Writable } from 'node:stream';
import type { Image } from '../block/image.js';
import { abortError } from '../ops/operation.js';
import { ImageChunkReader, type ImageReadOptions } from '../ops/image-chunks.js';
import { ImageFiller, type ImageWriteOptions } from '../ops/image-filler.js';
import { asBytes } from '../ops/streams.js';

export interface NodeStreamOptions {
  /** The Node stream's buffer limit in bytes (Node's default when absent). */
  highWaterMark?: number;
}

/** Destroys `stream` with ImageError 'aborted' when `signal` fires; returns the detach function. */
function destroyOnAbort(stream: Readable | Writable, signal: AbortSignal | undefined): () => void {
  if (!signal) return () => {};
  const onAbort = (): void => {
    stream.destroy(abortError(signal));
  };
  if (signal.aborted) {
    process.nextTick(onAbort);
    return () => {};
  }
  signal.addEventListener('abort', onAbort, { once: true });
  return () => signal.removeEventListener('abort', onAbort);
}

/** The guest bytes of [offset, offset+length) as a Node Readable (zero runs as zero-filled chunks). */
export function imageNodeReadable(image: Image, opts: ImageReadOptions & NodeStreamOptions = {}): Readable {
  const reader = new ImageChunkReader(image, opts);
  let inFlight: Promise<unknown> = Promise.resolve();
  const stream = new Readable({
    highWaterMark: opts.highWaterMark,
    read() {
      const p = reader.nextBytes().then(
        (next) => {
          if (stream.destroyed) return;
          stream.push(next ? Buffer.from(next.bytes.buffer, next.bytes.byteOffset, next.bytes.length) : null);
        },
        (e: unknown) => {
          stream.destroy(e as Error);
        },
      );
      inFlight = p;
    },
    destroy(err, callback) {
      detach();
      // The read in flight finishes before the stream reports its end or error.
      void inFlight.then(() => callback(err));
    },
  });
  const detach = destroyOnAbort(stream, opts.signal);
  stream.once('end', detach);
  return stream;
}

/**
 * A Node Writable that fills `image` from `offset` in order: a write past
 * the end fails with ImageError 'bad-argument', finishing flushes, and
 * destroying (or the signal) stops without flushing once issued writes
 * have finished.
 */
export function imageNodeWritable(image: Image, opts: ImageWriteOptions & NodeStreamOptions = {}): Writable {
  const filler = new ImageFiller(image, opts);
  let finished = false;
  const stream = new Writable({
    highWaterMark: opts.highWaterMark,
    write(chunk: unknown, _encoding, callback) {
      let bytes: Uint8Array;
      try {
        bytes = asBytes(chunk);
      } catch (e) {
        callback(e as Error);
        return;
      }
      filler.write(bytes).then(
        () => callback(),
        (e: unknown) => callback(e as Error),
      );
    },
    final(callback) {
      filler.close().then(
        () => {
          finished = true;
          detach();
          callback();
        },
        (e: unknown) => callback(e as Error),
      );
    },
    destroy(err, callback) {
      detach();
      if (finished) {
        callback(err);
        return;
      }
      void filler.abort().then(() => callback(err));
    },
  });
  const detach = destroyOnAbort(stream, opts.signal);
  return stream;
}
