/**
 * qemu-img convert's copy loop, written against `Image` only: the sources
 * are concatenated, data extents are copied in large chunks with several
 * requests in flight, zero and unallocated extents are skipped (or zeroed
 * when the target does not start out zero), and data blocks that are all
 * zero at the sparse granularity stay holes.
 */
import { extents, type Image } from '../block/image.js';
import { isZero } from './compare.js';

/** Where converted bytes go: a raw file today, an image writer later. */
export interface ConvertTarget {
  write(offset: number, data: Uint8Array): Promise<void>;
  /** Make a range read as zero; without it zeros are written as data. */
  writeZeroes?(offset: number, length: number): Promise<void>;
  flush(): Promise<void>;
  close(): Promise<void>;
}

export interface ConvertOptions {
  /** -S: zero detection granularity in bytes; 0 writes everything (fully allocated). Default 4096. */
  sparseSize?: number;
  /** -m: requests in flight. Default 8. */
  parallel?: number;
  /** Largest single request. Default 2 MiB. */
  chunkSize?: number;
  /**
   * The target reads as zero before the copy (a freshly created file), so
   * zero ranges need no writes. False for -n.
   */
  targetIsZero?: boolean;
  /** Called with the completed percentage (0..100), as qemu-img computes it. */
  progress?: (percent: number) => void;
}

interface Work {
  source: Image;
  srcOffset: number;
  dstOffset: number;
  length: number;
  data: boolean;
}

const MiB = 1024 * 1024;

/** A failed read or write, with qemu-img's wording ("error while reading at byte N: ..."). */
export class ConvertError extends Error {
  constructor(op: 'reading' | 'writing', offset: number, cause: unknown) {
    super(`error while ${op} at byte ${offset}: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
  }
}

async function attempt<T>(op: 'reading' | 'writing', offset: number, f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    throw e instanceof ConvertError ? e : new ConvertError(op, offset, e);
  }
}

/** Total guest size of the concatenated sources. */
export const totalSize = (sources: readonly Image[]): number => sources.reduce((n, s) => n + s.size, 0);

async function* plan(sources: readonly Image[], chunkSize: number): AsyncGenerator<Work> {
  let base = 0;
  for (const source of sources) {
    for await (const e of extents(source)) {
      // Unallocated with no backing reads as zero; anything else not zero is read.
      const data = !e.zero;
      for (let off = 0; off < e.length; off += chunkSize) {
        const length = Math.min(chunkSize, e.length - off);
        yield { source, srcOffset: e.offset + off, dstOffset: base + e.offset + off, length, data };
      }
    }
    base += source.size;
  }
}

/** Bytes qemu-img counts for progress: data, and zeros too when nothing is sparse. */
async function workBytes(sources: readonly Image[], fullyAllocate: boolean): Promise<number> {
  let n = 0;
  for (const source of sources) {
    for await (const e of extents(source)) if (!e.zero || fullyAllocate) n += e.length;
  }
  return n;
}

export async function convertImages(sources: readonly Image[], target: ConvertTarget, opts: ConvertOptions = {}): Promise<void> {
  const sparse = opts.sparseSize ?? 4096;
  const parallel = Math.max(1, opts.parallel ?? 8);
  const chunkSize = Math.max(sparse, opts.chunkSize ?? 2 * MiB);
  const targetIsZero = opts.targetIsZero ?? true;
  const fullyAllocate = sparse === 0;
  const zeroBuf = new Uint8Array(chunkSize);

  const total = opts.progress ? await workBytes(sources, fullyAllocate) : 0;
  let done = 0;
  const report = (n: number): void => {
    if (!opts.progress || total === 0) return;
    done += n;
    opts.progress((100 * done) / total);
  };

  const writeZeroes = async (offset: number, length: number): Promise<void> => {
    if (!fullyAllocate && target.writeZeroes) return target.writeZeroes(offset, length);
    for (let p = 0; p < length; p += zeroBuf.length) {
      await target.write(offset + p, zeroBuf.subarray(0, Math.min(zeroBuf.length, length - p)));
    }
  };

  /** Write `buf` at `offset`, leaving sparse-size blocks that are all zero as holes. */
  const writeSparse = async (offset: number, buf: Uint8Array): Promise<void> => {
    if (fullyAllocate) return target.write(offset, buf);
    let pos = 0;
    let runStart = 0;
    let runIsData: boolean | undefined;
    const flushRun = async (end: number): Promise<void> => {
      if (runIsData === undefined || end === runStart) return;
      if (runIsData) await target.write(offset + runStart, buf.subarray(runStart, end));
      else if (!targetIsZero) await writeZeroes(offset + runStart, end - runStart);
    };
    while (pos < buf.length) {
      // Blocks are aligned to the target offset, as qemu aligns them to the sector number.
      const end = Math.min(buf.length, pos + sparse - ((offset + pos) % sparse));
      const data = !isZero(buf.subarray(pos, end));
      if (data !== runIsData) {
        await flushRun(pos);
        runStart = pos;
        runIsData = data;
      }
      pos = end;
    }
    await flushRun(buf.length);
  };

  const work = plan(sources, chunkSize);
  let failed: unknown;
  const worker = async (): Promise<void> => {
    for (;;) {
      if (failed !== undefined) return;
      const next = await work.next();
      if (next.done) return;
      const w = next.value;
      try {
        if (w.data) {
          const buf = new Uint8Array(w.length);
          await attempt('reading', w.dstOffset, () => w.source.read(w.srcOffset, buf));
          await attempt('writing', w.dstOffset, () => writeSparse(w.dstOffset, buf));
          report(w.length);
        } else {
          if (fullyAllocate || !targetIsZero) await attempt('writing', w.dstOffset, () => writeZeroes(w.dstOffset, w.length));
          if (fullyAllocate) report(w.length);
        }
      } catch (e) {
        failed ??= e;
        return;
      }
    }
  };
  await Promise.all(Array.from({ length: parallel }, worker));
  if (failed !== undefined) throw failed;
  await target.flush();
}
