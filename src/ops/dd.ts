/**
 * qemu-img dd on `Image`: copy an input image into an output image block
 * by block, from `skip` blocks in, up to `count` blocks counted from the
 * start of the input (qemu-img's reading of count), every block written
 * (zeros included), as qemu-img dd does.
 */
import { ImageError } from '../errors.js';
import type { Image } from '../block/image.js';
import { throwIfAborted, type OperationOptions } from './operation.js';

export interface DdOptions extends OperationOptions {
  /** Block size in bytes (bs=), 1..2^31-1. Default 512. */
  blockSize?: number;
  /** Blocks to copy (count=), counted from the start of the input. Default: all. */
  count?: number;
  /** Blocks of the input to skip (skip=). Default 0. */
  skip?: number;
}

/** Where the copy starts and ends in the input, and how large the output must be. */
export interface DdPlan {
  /** First input byte copied. */
  start: number;
  /** End of the copied input range. */
  end: number;
  /** Output size: end - start, or 0 when skip lies past the end. */
  outputSize: number;
  /** skip lies past the end of what would be copied: nothing is (qemu warns, "cannot skip to specified offset"). */
  skipPastEnd: boolean;
}

const INT_MAX = 2 ** 31 - 1;

/** qemu-img dd's sizes for an input of `inputSize` bytes. */
export function planDd(inputSize: number, opts: Pick<DdOptions, 'blockSize' | 'count' | 'skip'> = {}): DdPlan {
  const bs = opts.blockSize ?? 512;
  if (!Number.isInteger(bs) || bs < 1 || bs > INT_MAX) throw new ImageError('bad-argument', `Invalid bs specified. Must be between 1 and ${INT_MAX}.`);
  for (const [k, v] of [['count', opts.count], ['skip', opts.skip]] as const) {
    if (v !== undefined && (!Number.isSafeInteger(v) || v < 0)) throw new ImageError('bad-argument', `Invalid ${k} specified`);
  }
  let end = inputSize;
  if (opts.count !== undefined && opts.count <= Math.floor(inputSize / bs)) end = opts.count * bs;
  const skip = opts.skip ?? 0;
  const start = skip * bs;
  const skipPastEnd = skip > 0 && (!Number.isSafeInteger(start) || end < start);
  return skipPastEnd ? { start: end, end, outputSize: 0, skipPastEnd } : { start, end, outputSize: end - start, skipPastEnd };
}

/**
 * Copy `input` into `output` (at least planDd(...).outputSize bytes) as
 * qemu-img dd does: one block at a time, the last one short. The caller
 * creates the output and closes both images; `output` is flushed.
 *
 * @example
 * const plan = planDd(src.size, { blockSize: 65536, skip: 16 });
 * // create `dst` of plan.outputSize bytes, then:
 * await ddImage(src, dst, { blockSize: 65536, skip: 16 });
 */
export async function ddImage(input: Image, output: Image, opts: DdOptions = {}): Promise<void> {
  const plan = planDd(input.size, opts);
  const bs = opts.blockSize ?? 512;
  if (output.size < plan.outputSize) throw new ImageError('bad-argument', 'output image is smaller than the data to copy');
  const buf = new Uint8Array(Math.min(bs, Math.max(plan.outputSize, 1)));
  const total = plan.outputSize;
  let out = 0;
  for (let pos = plan.start; pos < plan.end; ) {
    throwIfAborted(opts.signal);
    const n = Math.min(bs, plan.end - pos);
    const block = buf.subarray(0, n);
    try {
      await input.read(pos, block);
    } catch (e) {
      throw new ImageError('io', `error while reading from input image file: ${messageOf(e)}`, { cause: e });
    }
    pos += n;
    try {
      await output.write(out, block);
    } catch (e) {
      throw new ImageError('io', `error while writing to output image file: ${messageOf(e)}`, { cause: e });
    }
    out += n;
    opts.onProgress?.(out, total);
  }
  await output.flush();
}

const messageOf = (e: unknown): string => (e instanceof Error ? e.message : String(e));
