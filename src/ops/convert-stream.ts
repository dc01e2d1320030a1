/**
 * convert into a WHATWG ReadableStream: the output file's bytes, front to
 * back, with no seek, so it can go to a pipe, a socket or an HTTP body.
 * Pull-based: nothing is read until the consumer asks for bytes, and the
 * writer's read-ahead is bounded, so a slow consumer bounds memory.
 *
 * A format that can be written this way has a `writeStream` hook in its
 * descriptor (block/format.ts); this file knows none of them.
 */
import { extents, type Image } from '../block/image.js';
import type { StreamInput, StreamTargetOptions, StreamWriter } from '../block/stream-target.js';
import { ImageError } from '../errors.js';
import { findFormat, registeredFormats } from '../block/format.js';
import { abortError, throwIfAborted, type OperationOptions } from './operation.js';

export type { StreamWriter, StreamInput, StreamTargetOptions } from '../block/stream-target.js';

export interface StreamConvertOptions extends StreamTargetOptions, OperationOptions {
  /** Output format. Default 'qcow2'. */
  format?: string;
}

/** Formats convertToStream can write. */
export function streamFormats(): string[] {
  return registeredFormats().filter((f) => findFormat(f)?.writeStream !== undefined);
}

/** The concatenated sources as one guest address space, with cancellation checked before every read. */
function concatenated(sources: readonly Image[], opts: OperationOptions): StreamInput {
  const size = sources.reduce((n, s) => n + s.size, 0);
  const signal = opts.signal;
  return {
    size,
    checkAborted: () => throwIfAborted(signal),
    progress: (done, total) => opts.onProgress?.(done, total),
    async read(offset, into) {
      let base = 0;
      let pos = 0;
      for (const s of sources) {
        const end = base + s.size;
        if (offset + pos < end && pos < into.length) {
          const within = offset + pos - base;
          const n = Math.min(into.length - pos, s.size - within);
          throwIfAborted(signal);
          await s.read(within, into.subarray(pos, pos + n));
          pos += n;
        }
        base = end;
      }
      into.fill(0, pos);
    },
    async *extents() {
      let base = 0;
      for (const s of sources) {
        for await (const e of extents(s)) {
          throwIfAborted(signal);
          yield { offset: base + e.offset, length: e.length, zero: e.zero };
        }
        base += s.size;
      }
    },
  };
}

/**
 * The sources, concatenated, converted to `opts.format` (default qcow2) as
 * a stream of bytes. Errors (unsupported options, read failures, abort
 * through `opts.signal` as ImageError 'aborted') error the stream. The
 * caller keeps ownership of the sources and closes them after the stream ends.
 */
export function convertToStream(sources: readonly Image[], opts: StreamConvertOptions = {}): ReadableStream<Uint8Array> {
  const format = opts.format ?? 'qcow2';
  const writer: StreamWriter | undefined = findFormat(format)?.writeStream;
  let iterator: AsyncIterator<Uint8Array> | undefined;
  let finished = false;
  const signal = opts.signal;
  let onAbort: (() => void) | undefined;
  const detach = (): void => {
    finished = true;
    if (onAbort) signal?.removeEventListener('abort', onAbort);
  };
  return new ReadableStream<Uint8Array>(
    {
      start(controller) {
        if (!writer) {
          finished = true;
          controller.error(new ImageError('unsupported', `Writing '${format}' as a stream is not supported`));
          return;
        }
        if (signal) {
          onAbort = () => {
            if (finished) return;
            detach();
            // Error now, not at the next pull: the consumer may be waiting on a read in flight.
            controller.error(abortError(signal));
            void iterator?.return?.();
          };
          signal.addEventListener('abort', onAbort);
        }
      },
      async pull(controller) {
        if (finished) return;
        try {
          throwIfAborted(signal);
          iterator ??= writer!(concatenated(sources, opts), opts)[Symbol.asyncIterator]();
          const r = await iterator.next();
          if (finished) return;
          if (r.done) {
            detach();
            controller.close();
          } else {
            controller.enqueue(r.value);
          }
        } catch (e) {
          if (finished) return;
          detach();
          controller.error(signal?.aborted ? abortError(signal) : e);
        }
      },
      async cancel() {
        detach();
        await iterator?.return?.();
      },
    },
    // One chunk waiting: the writer's own read-ahead overlaps the rest.
    { highWaterMark: 1 },
  );
}
