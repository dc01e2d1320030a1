/**
 * Guest bytes of an image as a sequence of chunks, one pull at a time, for
 * the stream adapters (web streams here, Node streams in io/). A chunk never
 * crosses an extent boundary from `blockStatus`, so runs that read as zero
 * come out as chunks of their own, which a sparse-aware consumer skips
 * without reading or allocating anything.
 */
import type { Image } from '../block/image.js';
import { ImageError } from '../errors.js';
import { throwIfAborted, type OperationOptions } from './operation.js';

/** One run of guest bytes: read data, or a run that reads as zero (no bytes attached). */
export interface ImageChunk {
  offset: number;
  length: number;
  /** Reads as zero (a hole, a zero cluster, unallocated without backing data). */
  zero: boolean;
  /** The guest bytes; only on data chunks. */
  data?: Uint8Array;
}

export interface ImageReadOptions extends OperationOptions {
  /** First guest byte. Default 0. */
  offset?: number;
  /** Bytes from `offset`. Default: to the end of the image. */
  length?: number;
  /** Largest data chunk (and largest zero chunk of a byte stream). Default 1 MiB. */
  chunkSize?: number;
}

export const DEFAULT_CHUNK_SIZE = 1024 * 1024;

const badArgument = (msg: string): ImageError => new ImageError('bad-argument', msg);

/** The range and chunk size of a read, checked against the image. */
function readRange(image: Image, opts: ImageReadOptions): { start: number; end: number; chunkSize: number } {
  const start = opts.offset ?? 0;
  const length = opts.length ?? image.size - start;
  const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(length) || start < 0 || length < 0 || start + length > image.size) {
    throw badArgument(`Read range out of bounds: offset ${start}, length ${length}, image size ${image.size}`);
  }
  if (!Number.isSafeInteger(chunkSize) || chunkSize <= 0) throw badArgument(`Invalid chunk size ${chunkSize}`);
  return { start, end: start + length, chunkSize };
}

/**
 * A cursor over [offset, offset+length): each call reads (at most) one
 * chunk. Calls must not overlap; the stream adapters only pull again once
 * the previous pull has finished.
 */
export class ImageChunkReader {
  readonly start: number;
  readonly end: number;
  readonly chunkSize: number;
  private pos: number;
  /** The blockStatus extent the cursor is in: where it ends and whether it reads as zero. */
  private extentEnd: number;
  private extentZero = false;

  constructor(
    private readonly image: Image,
    private readonly opts: ImageReadOptions = {},
  ) {
    const r = readRange(image, opts);
    this.start = r.start;
    this.end = r.end;
    this.chunkSize = r.chunkSize;
    this.pos = r.start;
    this.extentEnd = r.start;
  }

  get total(): number {
    return this.end - this.start;
  }

  /**
   * The next chunk for a sparse-aware consumer: a zero run whole (however
   * long, nothing read), or up to chunkSize bytes of data. Null at the end.
   */
  async nextChunk(): Promise<ImageChunk | null> {
    const run = await this.take(this.chunkSize, Number.MAX_SAFE_INTEGER);
    if (!run) return null;
    if (run.zero) {
      this.advance(run.length);
      return { offset: run.offset, length: run.length, zero: true };
    }
    const data = new Uint8Array(run.length);
    await this.image.read(run.offset, data);
    this.advance(run.length);
    return { offset: run.offset, length: run.length, zero: false, data };
  }

  /**
   * The next chunk of guest bytes, zero runs included as zero-filled
   * chunks of at most chunkSize. With `into`, the bytes go there (at most
   * its length) and the returned bytes are a view of it. Null at the end.
   */
  async nextBytes(into?: Uint8Array): Promise<{ offset: number; zero: boolean; bytes: Uint8Array } | null> {
    const max = into ? Math.min(into.length, this.chunkSize) : this.chunkSize;
    if (max === 0) throw badArgument('Cannot read into an empty buffer');
    const run = await this.take(max, max);
    if (!run) return null;
    const bytes = into ? into.subarray(0, run.length) : new Uint8Array(run.length);
    if (run.zero) {
      if (into) bytes.fill(0);
    } else {
      await this.image.read(run.offset, bytes);
    }
    this.advance(run.length);
    return { offset: run.offset, zero: run.zero, bytes };
  }

  /** The next run inside the current extent, asking blockStatus when the cursor has left it. */
  private async take(maxData: number, maxZero: number): Promise<{ offset: number; length: number; zero: boolean } | null> {
    throwIfAborted(this.opts.signal);
    if (this.pos >= this.end) return null;
    if (this.pos >= this.extentEnd) {
      const e = await this.image.blockStatus(this.pos, this.end - this.pos);
      // A driver answering with an empty extent would make this loop forever.
      if (e.length <= 0) throw new ImageError('io', `Block status returned an empty extent at offset ${this.pos}`);
      throwIfAborted(this.opts.signal);
      this.extentEnd = this.pos + e.length;
      // Unallocated all the way down reads as zero (and is reported so); anything else is read.
      this.extentZero = e.zero;
    }
    const left = this.extentEnd - this.pos;
    const length = Math.min(left, this.extentZero ? maxZero : maxData);
    return { offset: this.pos, length, zero: this.extentZero };
  }

  private advance(n: number): void {
    this.pos += n;
    this.opts.onProgress?.(this.pos - this.start, this.total);
  }
}
