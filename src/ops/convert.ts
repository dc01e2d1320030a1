/**
 * qemu-img convert's copy loop, written against `Image` only: the sources
 * are concatenated, data extents are copied in large chunks with several
 * requests in flight, zero and unallocated extents are skipped (or zeroed
 * when the target does not start out zero), and data blocks that are all
 * zero at the sparse granularity stay holes.
 */
import { ImageError, isImageError } from '../errors.js';
import { extents, type Image } from '../block/image.js';
import { isZero } from './compare.js';
import { abortError, throwIfAborted, type OperationOptions } from './operation.js';

/** Where converted bytes go: a raw file or a writable image. */
export interface ConvertTarget {
  write(offset: number, data: Uint8Array): Promise<void>;
  /** One whole cluster (or the image's last, shorter one), stored compressed. Needed for `compressClusterSize`. */
  writeCompressed?(offset: number, data: Uint8Array): Promise<void>;
  /** Make a range read as zero; without it zeros are written as data. */
  writeZeroes?(offset: number, length: number): Promise<void>;
  flush(): Promise<void>;
  close(): Promise<void>;
}

/**
 * `signal` cancels the copy (in-flight requests finish, nothing new starts,
 * then it rejects with ImageError 'aborted', without flushing the target);
 * `onProgress` gets guest bytes handled of the sources' total size, zero and
 * skipped runs included, so it ends at exactly that total.
 */
export interface ConvertOptions extends OperationOptions {
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
  /**
   * -c: write whole clusters of this size compressed, cluster by cluster,
   * with `parallel` of them in flight (compression runs off the main thread).
   */
  compressClusterSize?: number;
  /**
   * The target has a backing file of its own (-B): only what the sources'
   * top layers allocate is copied; the rest is left to the target's
   * backing file, and zeros must be written explicitly.
   */
  targetHasBacking?: boolean;
  /**
   * Issue writes in target order, one at a time, while reads still run
   * `parallel` ahead (qemu-img's default; -W turns it off). A qcow2 or QED
   * target then allocates its clusters in guest order. Default false.
   */
  inOrder?: boolean;
  /**
   * --salvage: a failed read is retried sector by sector; sectors that still
   * fail read as zeros and are reported through this callback (offset in
   * the source image, message) instead of ending the conversion.
   */
  salvage?: (offset: number, message: string) => void;
}

/** qemu-img convert's block states: copy, make zero, or leave to the target's backing file. */
type Kind = 'data' | 'zero' | 'backing';

interface Work {
  source: Image;
  srcOffset: number;
  dstOffset: number;
  length: number;
  kind: Kind;
}

const MiB = 1024 * 1024;

/** A failed read or write, with qemu-img's wording ("error while reading at byte N: ..."). */
export class ConvertError extends ImageError {
  constructor(
    /** Whether a source read or a target write failed. */
    readonly op: 'reading' | 'writing',
    offset: number,
    cause: unknown,
  ) {
    super(isImageError(cause) ? cause.code : 'io', `error while ${op} at byte ${offset}: ${cause instanceof Error ? cause.message : String(cause)}`, {
      cause,
      errno: isImageError(cause) ? cause.errno : undefined,
    });
    this.name = 'ConvertError';
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

/** The sources' runs in target offsets: the whole chain's view, or the top layers' with a target backing file. */
async function* runs(sources: readonly Image[], topOnly: boolean, signal?: AbortSignal): AsyncGenerator<{ source: Image; srcOffset: number; dstOffset: number; length: number; kind: Kind }> {
  let base = 0;
  for (const source of sources) {
    if (topOnly) {
      // bdrv_block_status of the top layer: unallocated without a backing file reads as zero.
      let off = 0;
      while (off < source.size) {
        throwIfAborted(signal);
        const st = await source.layerStatus(off, source.size - off);
        const kind: Kind = st.zero ? 'zero' : st.data ? 'data' : 'backing';
        yield { source, srcOffset: off, dstOffset: base + off, length: st.length, kind };
        off += st.length;
      }
    } else {
      for await (const e of extents(source)) {
        throwIfAborted(signal);
        // Unallocated with no backing reads as zero; anything else not zero is read.
        yield { source, srcOffset: e.offset, dstOffset: base + e.offset, length: e.length, kind: e.zero ? 'zero' : 'data' };
      }
    }
    base += source.size;
  }
}

/** Whether words [from, to) are all zero. */
function zeroWords(words: Uint32Array, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (words[i] !== 0) return false;
  return true;
}

async function* plan(sources: readonly Image[], chunkSize: number, topOnly: boolean, signal?: AbortSignal): AsyncGenerator<Work> {
  for await (const r of runs(sources, topOnly, signal)) {
    if (r.kind !== 'data') {
      // Zero and backing runs are skipped or zeroed whole: a 4 TiB hole is one work item, not millions.
      yield { source: r.source, srcOffset: r.srcOffset, dstOffset: r.dstOffset, length: r.length, kind: r.kind };
      continue;
    }
    for (let off = 0; off < r.length; off += chunkSize) {
      const length = Math.min(chunkSize, r.length - off);
      yield { source: r.source, srcOffset: r.srcOffset + off, dstOffset: r.dstOffset + off, length, kind: r.kind };
    }
  }
}

/** Bytes qemu-img counts for progress: data, and zeros too when nothing is sparse. */
async function workBytes(sources: readonly Image[], fullyAllocate: boolean, topOnly: boolean, signal?: AbortSignal): Promise<number> {
  let n = 0;
  for await (const r of runs(sources, topOnly, signal)) if (r.kind === 'data' || fullyAllocate) n += r.length;
  return n;
}

/**
 * Copy the guest content of `sources` (concatenated) into `target`: data in
 * large chunks with several requests in flight, zero runs skipped or
 * zeroed, all-zero blocks left sparse. `imageTarget(img)` and
 * `storageTarget(storage)` make targets; convertImageFile (qimg/node) does
 * the whole of qemu-img convert around this.
 *
 * @example
 * await convertImages([src], imageTarget(dst), { signal, onProgress: (done, total) => {} });
 */
export async function convertImages(sources: readonly Image[], target: ConvertTarget, opts: ConvertOptions = {}): Promise<void> {
  const sparse = opts.sparseSize ?? 4096;
  const parallel = Math.max(1, opts.parallel ?? 8);
  // qemu-img convert's IO_BUF_SIZE: its -p meter advances once per chunk of up to 2 MiB.
  const chunkSize = Math.max(sparse, opts.chunkSize ?? 2 * 1024 * 1024);
  const topOnly = opts.targetHasBacking ?? false;
  // A target with a backing file does not read as zero where nothing is written.
  const targetIsZero = (opts.targetIsZero ?? true) && !topOnly;
  const fullyAllocate = sparse === 0;
  const zeroBuf = new Uint8Array(chunkSize);
  const signal = opts.signal;
  throwIfAborted(signal);

  const total = opts.progress ? await workBytes(sources, fullyAllocate, topOnly, signal) : 0;
  let done = 0;
  const report = (n: number): void => {
    if (!opts.progress || total === 0) return;
    done += n;
    opts.progress((100 * done) / total);
  };
  // onProgress counts every guest byte handled, unlike qemu-img's percentage above.
  const guestTotal = totalSize(sources);
  let guestDone = 0;
  const advance = (n: number): void => {
    if (!opts.onProgress) return;
    guestDone += n;
    opts.onProgress(guestDone, guestTotal);
  };

  const writeZeroes = async (offset: number, length: number): Promise<void> => {
    if (!fullyAllocate && target.writeZeroes) return target.writeZeroes(offset, length);
    for (let p = 0; p < length; p += zeroBuf.length) {
      await target.write(offset + p, zeroBuf.subarray(0, Math.min(zeroBuf.length, length - p)));
    }
  };

  /** Write `buf` at `offset`, leaving sparse-size blocks that are all zero as holes. */
  const writeSparse = async (offset: number, buf: Uint8Array, words?: Uint32Array): Promise<void> => {
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
      const data = words && pos % 4 === 0 && end % 4 === 0 ? !zeroWords(words, pos >>> 2, end >>> 2) : !isZero(buf.subarray(pos, end));
      if (data !== runIsData) {
        await flushRun(pos);
        runStart = pos;
        runIsData = data;
      }
      pos = end;
    }
    await flushRun(buf.length);
  };

  const read: ReadFn = opts.salvage ? salvagingRead(opts.salvage) : (img, off, buf) => img.read(off, buf);
  if (opts.compressClusterSize !== undefined) {
    await convertCompressed(sources, target, opts.compressClusterSize, { parallel, sparse, targetIsZero, topOnly, writeZeroes, report, advance, read, signal });
    throwIfAborted(signal);
    await target.flush();
    return;
  }

  const work = plan(sources, chunkSize, topOnly, signal);
  let failed: unknown;
  const ordered = opts.inOrder ? new WriteOrder() : undefined;
  /** Whether the copy must stop: an earlier failure, or the signal (which then becomes the failure). */
  const stopping = (): boolean => {
    if (failed === undefined && signal?.aborted) {
      failed = abortError(signal);
      ordered?.abort();
    }
    return failed !== undefined;
  };
  const worker = async (): Promise<void> => {
    // One buffer per worker, reused: writes complete before the next read.
    const own = new Uint8Array(chunkSize);
    const words = new Uint32Array(own.buffer);
    for (;;) {
      if (stopping()) return;
      let next: IteratorResult<Work>;
      try {
        next = await work.next();
      } catch (e) {
        // A failed block status (or the signal seen while planning): the other workers finish their requests first.
        failed ??= e;
        ordered?.abort();
        return;
      }
      if (next.done) return;
      const w = next.value;
      // Work items come out of plan() in target order, so taking a ticket here orders the writes.
      const ticket = ordered?.ticket();
      try {
        if (w.kind === 'backing') {
          // Left to the target's backing file; still takes its turn so later writes keep their order.
          await ordered?.turn(ticket!);
          advance(w.length);
        } else if (w.kind === 'data') {
          const buf = own.subarray(0, w.length);
          await attempt('reading', w.dstOffset, () => read(w.source, w.srcOffset, buf));
          await ordered?.turn(ticket!);
          if (stopping()) return;
          await attempt('writing', w.dstOffset, () => writeSparse(w.dstOffset, buf, words));
          report(w.length);
          advance(w.length);
        } else {
          await ordered?.turn(ticket!);
          if (stopping()) return;
          if (fullyAllocate || !targetIsZero) await attempt('writing', w.dstOffset, () => writeZeroes(w.dstOffset, w.length));
          if (fullyAllocate) report(w.length);
          advance(w.length);
        }
      } catch (e) {
        failed ??= e;
        ordered?.abort();
        return;
      } finally {
        ordered?.done(ticket!);
      }
    }
  };
  await Promise.all(Array.from({ length: parallel }, worker));
  if (failed !== undefined) throw failed;
  throwIfAborted(signal);
  await target.flush();
}

/** Hands out write turns in the order tickets were taken (qemu-img's wr_in_order). */
class WriteOrder {
  private next = 0;
  private issued = 0;
  private readonly waiting = new Map<number, () => void>();
  private aborted = false;

  ticket(): number {
    return this.issued++;
  }

  /** Resolves once every earlier ticket is done. */
  turn(t: number): Promise<void> {
    if (t === this.next || this.aborted) return Promise.resolve();
    return new Promise((r) => this.waiting.set(t, r));
  }

  done(t: number): void {
    if (t !== this.next) return;
    this.next++;
    const wake = this.waiting.get(this.next);
    if (wake) {
      this.waiting.delete(this.next);
      wake();
    }
  }

  /** A failure stops the copy: release everyone waiting so the workers can end. */
  abort(): void {
    this.aborted = true;
    for (const wake of this.waiting.values()) wake();
    this.waiting.clear();
  }
}

const SECTOR = 512;

type ReadFn = (img: Image, offset: number, into: Uint8Array) => Promise<void>;

/** convert_co_read under --salvage: retry a failed read per sector, zero what stays unreadable. */
function salvagingRead(report: (offset: number, message: string) => void): ReadFn {
  return async (img: Image, offset: number, buf: Uint8Array): Promise<void> => {
    try {
      await img.read(offset, buf);
      return;
    } catch {
      // Fall through to sector-sized reads.
    }
    for (let p = 0; p < buf.length; p += SECTOR) {
      const part = buf.subarray(p, Math.min(buf.length, p + SECTOR));
      try {
        await img.read(offset + p, part);
      } catch (e) {
        report(offset + p, e instanceof Error ? e.message : String(e));
        part.fill(0);
      }
    }
  };
}

/** Reads guest bytes of the concatenated sources at a target offset. */
async function readConcat(sources: readonly Image[], offset: number, into: Uint8Array, read: ReadFn): Promise<void> {
  let base = 0;
  let pos = 0;
  for (const s of sources) {
    const end = base + s.size;
    if (offset + pos < end && pos < into.length) {
      const within = offset + pos - base;
      const n = Math.min(into.length - pos, s.size - within);
      await read(s, within, into.subarray(pos, pos + n));
      pos += n;
    }
    base = end;
  }
  into.fill(0, pos);
}

/**
 * convert -c: cluster by cluster, as qemu-img does. A cluster lying wholly
 * in one zero run is zeroed (or skipped on a zero target), one wholly left
 * to the target's backing file is skipped, any other cluster is read whole
 * and written compressed unless it is all zero, which is then treated as a
 * zero cluster.
 */
async function convertCompressed(
  sources: readonly Image[],
  target: ConvertTarget,
  clusterSize: number,
  o: {
    parallel: number;
    sparse: number;
    targetIsZero: boolean;
    topOnly: boolean;
    writeZeroes: (offset: number, length: number) => Promise<void>;
    report: (n: number) => void;
    advance: (n: number) => void;
    read: ReadFn;
    signal: AbortSignal | undefined;
  },
): Promise<void> {
  if (!target.writeCompressed) throw new Error('Compression not supported for this file format');
  const total = totalSize(sources);
  const segs: { start: number; end: number; kind: Kind }[] = [];
  for await (const r of runs(sources, o.topOnly, o.signal)) {
    const last = segs[segs.length - 1];
    if (last && last.kind === r.kind && last.end === r.dstOffset) last.end += r.length;
    else segs.push({ start: r.dstOffset, end: r.dstOffset + r.length, kind: r.kind });
  }
  let segIdx = 0;
  const kindOf = (start: number, end: number): Kind => {
    while (segIdx < segs.length && segs[segIdx]!.end <= start) segIdx++;
    const seg = segs[segIdx];
    return seg && seg.start <= start && seg.end >= end ? seg.kind : 'data';
  };
  let next = 0;
  let failed: unknown;
  const stopping = (): boolean => {
    if (failed === undefined && o.signal?.aborted) failed = abortError(o.signal);
    return failed !== undefined;
  };
  const worker = async (): Promise<void> => {
    while (!stopping() && next < total) {
      const start = next;
      const length = Math.min(clusterSize, total - start);
      next += length;
      let kind = kindOf(start, start + length);
      // -S 0: zero clusters are written (compressed) too.
      if (kind === 'zero' && o.sparse === 0) kind = 'data';
      try {
        if (kind === 'zero') {
          if (!o.targetIsZero) await attempt('writing', start, () => o.writeZeroes(start, length));
        } else if (kind === 'data') {
          const buf = new Uint8Array(length);
          await attempt('reading', start, () => readConcat(sources, start, buf, o.read));
          if (stopping()) return;
          // A compressed cluster is written whole, so only an all-zero one is saved.
          if (o.sparse === 0 || !isZero(buf)) await attempt('writing', start, () => target.writeCompressed!(start, buf));
          else if (!o.targetIsZero) await attempt('writing', start, () => o.writeZeroes(start, length));
          o.report(length);
        }
        o.advance(length);
      } catch (e) {
        failed ??= e;
        return;
      }
    }
  };
  await Promise.all(Array.from({ length: o.parallel }, worker));
  if (failed !== undefined) throw failed;
}
