/**
 * Fills an image sequentially from chunks of any size, for the writable
 * stream adapters. Bytes are gathered into blocks aligned to guest offsets
 * and written with a bounded number of requests in flight. As convert
 * does, 4 KiB blocks that are all zero are not written as data: where the
 * image already reads as zero they are skipped (a fresh image stays
 * sparse), elsewhere they become write-zeroes.
 */
import type { Image } from '../block/image.js';
import { ImageError } from '../errors.js';
import { isZero } from './compare.js';
import { abortError, type OperationOptions } from './operation.js';

export interface ImageWriteOptions extends OperationOptions {
  /** Guest offset of the first byte. Default 0. */
  offset?: number;
  /** All-zero 4 KiB blocks become holes or write-zeroes instead of data. Default true. */
  detectZeroes?: boolean;
  /** Flush the image once everything is written. Default true. */
  flush?: boolean;
  /** Bytes gathered before a write is issued (writes are aligned to it). Default 1 MiB. */
  blockSize?: number;
  /** Block writes in flight at once. Default 2. */
  parallel?: number;
}

/** The zero-detection granularity: convert's default -S. */
const ZERO_GRANULARITY = 4096;

export class ImageFiller {
  private readonly start: number;
  private readonly blockSize: number;
  private readonly parallel: number;
  /** Next guest offset to receive a byte. */
  private pos: number;
  private block: { offset: number; buf: Uint8Array; filled: number } | null = null;
  private readonly inFlight = new Set<Promise<void>>();
  private failure: unknown;
  private written = 0;
  private stopped = false;
  /** Full-size block buffers whose writes have completed, reused (as convert reuses its buffers). */
  private readonly spare: Uint8Array[] = [];

  constructor(
    private readonly image: Image,
    private readonly opts: ImageWriteOptions = {},
  ) {
    this.start = opts.offset ?? 0;
    this.blockSize = opts.blockSize ?? 1024 * 1024;
    this.parallel = Math.max(1, opts.parallel ?? 2);
    if (!Number.isSafeInteger(this.start) || this.start < 0 || this.start > image.size) {
      throw new ImageError('bad-argument', `Write offset ${this.start} is outside the image (size ${image.size})`);
    }
    if (!Number.isSafeInteger(this.blockSize) || this.blockSize < ZERO_GRANULARITY || this.blockSize % ZERO_GRANULARITY !== 0) {
      throw new ImageError('bad-argument', `Invalid block size ${this.blockSize}: a multiple of ${ZERO_GRANULARITY} is needed`);
    }
    this.pos = this.start;
  }

  /** Takes the bytes of `chunk` (copied); resolves once they are buffered or their writes issued. */
  async write(chunk: Uint8Array): Promise<void> {
    await this.check();
    if (this.pos + chunk.length > this.image.size) {
      // Refused whole; the bytes accepted before it are still written.
      await this.writeBuffered();
      await this.settle();
      this.stopped = true;
      this.failure ??= new ImageError(
        'bad-argument',
        `Write of ${chunk.length} bytes at offset ${this.pos} would pass the end of the image (size ${this.image.size})`,
      );
      throw this.failure;
    }
    let from = 0;
    while (from < chunk.length) {
      const block = (this.block ??= this.newBlock());
      const n = Math.min(chunk.length - from, block.buf.length - block.filled);
      block.buf.set(chunk.subarray(from, from + n), block.filled);
      block.filled += n;
      from += n;
      this.pos += n;
      if (block.filled === block.buf.length) {
        this.block = null;
        await this.dispatch(block.offset, block.buf);
        await this.check();
      }
    }
  }

  /** Writes what is buffered, waits for every write, then flushes (unless told not to). */
  async close(): Promise<void> {
    await this.check();
    await this.writeBuffered();
    await this.settle();
    await this.check();
    if (this.opts.flush ?? true) await this.image.flush();
    this.stopped = true;
  }

  /** Issues the write of the partly filled block, if any. */
  private async writeBuffered(): Promise<void> {
    const block = this.block;
    this.block = null;
    if (block && block.filled > 0) await this.dispatch(block.offset, block.buf.subarray(0, block.filled));
  }

  /** Stops: drops what is buffered, lets writes already issued finish, does not flush. */
  async abort(): Promise<void> {
    this.stopped = true;
    this.block = null;
    await this.settle();
  }

  /** Throws (after the writes in flight have settled) on a failed write, an abort or use after close. */
  private async check(): Promise<void> {
    const signal = this.opts.signal;
    if (this.failure === undefined && signal?.aborted) this.failure = abortError(signal);
    if (this.failure === undefined && this.stopped) this.failure = new ImageError('bad-argument', 'The image stream is already closed');
    if (this.failure === undefined) return;
    this.stopped = true;
    this.block = null;
    await this.settle();
    throw this.failure;
  }

  private newBlock(): { offset: number; buf: Uint8Array; filled: number } {
    // Blocks end at multiples of blockSize (the first may be shorter) and at the image end.
    const end = Math.min(this.image.size, (Math.floor(this.pos / this.blockSize) + 1) * this.blockSize);
    const length = end - this.pos;
    const buf = length === this.blockSize ? (this.spare.pop() ?? new Uint8Array(length)) : new Uint8Array(length);
    return { offset: this.pos, buf, filled: 0 };
  }

  private async dispatch(offset: number, buf: Uint8Array): Promise<void> {
    while (this.inFlight.size >= this.parallel) await Promise.race(this.inFlight);
    // A failure or an abort while waiting: issue nothing more (check() reports it).
    if (this.failure !== undefined || this.opts.signal?.aborted) return;
    const p: Promise<void> = this.writeBlock(offset, buf).then(
      () => {
        if (buf.length === this.blockSize) this.spare.push(buf);
        this.written += buf.length;
        this.opts.onProgress?.(this.written, this.image.size - this.start);
      },
      (e: unknown) => {
        this.failure ??= e;
      },
    );
    const tracked = p.finally(() => this.inFlight.delete(tracked));
    this.inFlight.add(tracked);
  }

  private async settle(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.all(this.inFlight);
  }

  private async writeBlock(offset: number, buf: Uint8Array): Promise<void> {
    if (!(this.opts.detectZeroes ?? true)) return this.image.write(offset, buf);
    // Runs of data and of zero at the granularity, aligned to guest offsets.
    let runStart = 0;
    let runZero: boolean | undefined;
    let pos = 0;
    while (pos < buf.length) {
      const end = Math.min(buf.length, pos + ZERO_GRANULARITY - ((offset + pos) % ZERO_GRANULARITY));
      const zero = isZero(buf.subarray(pos, end));
      if (zero !== runZero) {
        if (runZero !== undefined) await this.writeRun(offset + runStart, buf.subarray(runStart, pos), runZero);
        runStart = pos;
        runZero = zero;
      }
      pos = end;
    }
    if (runZero !== undefined) await this.writeRun(offset + runStart, buf.subarray(runStart), runZero);
  }

  private async writeRun(offset: number, bytes: Uint8Array, zero: boolean): Promise<void> {
    if (!zero) return this.image.write(offset, bytes);
    // Only the parts that do not already read as zero need a request.
    const end = offset + bytes.length;
    let pos = offset;
    while (pos < end) {
      const e = await this.image.blockStatus(pos, end - pos);
      if (!e.zero) await this.image.writeZeroes(pos, e.length, { mayUnmap: true });
      pos += e.length;
    }
  }
}
