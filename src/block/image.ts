/**
 * The generic block layer: one `Image` per layer of a backing chain, built
 * on a format driver. Reading, zero-filling, backing recursion and block
 * status live here once, for every format.
 */
import { ImageError } from '../errors.js';
import type { Storage } from '../io/storage.js';
import type { FormatDriver, ImageFormat, Mapping } from './driver.js';
import { RangeLock } from './locks.js';
import type { ImageInfo } from './info.js';

/**
 * One run of guest bytes with the same status, as qemu-img map reports it.
 * `depth` counts the backing layers walked before the answer was found.
 */
export interface Extent {
  offset: number;
  length: number;
  depth: number;
  /** Allocated in some layer (qemu's BDRV_BLOCK_ALLOCATED). */
  present: boolean;
  data: boolean;
  zero: boolean;
  compressed: boolean;
  /** Where the bytes live on the host, when that is known (qemu's OFFSET_VALID). */
  hostOffset?: number;
  /** The storage hostOffset refers to. */
  file?: Storage;
}

export interface Image {
  readonly format: ImageFormat;
  /** Virtual size in bytes. */
  readonly size: number;
  /** The name the image was opened by. */
  readonly filename: string;
  readonly driver: FormatDriver;
  readonly backing: Image | null;
  /** Fill `into` with guest bytes from `offset`; the range must lie inside the image. */
  read(offset: number, into: Uint8Array): Promise<void>;
  /**
   * Status of the bytes at `offset`, across the backing chain: one extent
   * starting at `offset`, at most `length` long. Callers loop (see extents()).
   */
  blockStatus(offset: number, length: number): Promise<Extent>;
  /** Status of this layer alone (qemu's bdrv_block_status without the chain walk). */
  layerStatus(offset: number, length: number): Promise<LayerStatus>;
  info(): Promise<ImageInfo>;
  write(offset: number, data: Uint8Array, opts?: { compressed?: boolean }): Promise<void>;
  /** Make the range read as zero; with mayUnmap the space may be released. */
  writeZeroes(offset: number, length: number, opts?: { mayUnmap?: boolean }): Promise<void>;
  /** Advisory: the range's contents are no longer needed (qemu's discard semantics per format). */
  discard(offset: number, length: number): Promise<void>;
  flush(): Promise<void>;
  /** Closes this image and its backing chain. */
  close(): Promise<void>;
}

/** What one layer says about a range, before the chain walk. */
export interface LayerStatus {
  length: number;
  data: boolean;
  zero: boolean;
  /** Allocated in this layer; unallocated with neither data nor zero means "ask the backing file". */
  allocated: boolean;
  compressed: boolean;
  hostOffset?: number;
  file?: Storage;
}

export class BlockImage implements Image {
  readonly format: ImageFormat;
  readonly filename: string;
  readonly driver: FormatDriver;
  readonly backing: Image | null;
  /** The backing name exactly as recorded, and how it resolved (for info). */
  readonly backingPath: string | undefined;
  private readonly copyOnRead: boolean;
  private readonly discardIgnored: boolean;
  /** The driver's cluster size, once copy-on-read has needed it. */
  private clusterSize: number | undefined;

  constructor(opts: {
    driver: FormatDriver;
    filename: string;
    backing: Image | null;
    backingPath?: string;
    /** Data read from the backing chain is written into this layer (qemu's copy-on-read). */
    copyOnRead?: boolean;
    /** 'ignore': discard does nothing (qemu's discard=ignore; zero writes may still unmap, as there). */
    discard?: 'ignore' | 'unmap';
  }) {
    this.copyOnRead = opts.copyOnRead ?? false;
    this.discardIgnored = opts.discard === 'ignore';
    this.driver = opts.driver;
    this.format = opts.driver.format;
    this.filename = opts.filename;
    this.backing = opts.backing;
    this.backingPath = opts.backingPath;
    this.driver.attachBacking?.(this.backing);
  }

  /** Virtual size in bytes: the driver's, so a resize shows at once to every reader. */
  get size(): number {
    return this.driver.size;
  }

  async write(offset: number, data: Uint8Array, opts?: { compressed?: boolean }): Promise<void> {
    this.checkRange(offset, data.length);
    const write = this.writer();
    if (data.length === 0) return;
    const a = this.alignment;
    if (a === 1) return write(offset, data, opts);
    const start = offset - (offset % a);
    const end = alignUp(offset + data.length, a);
    return this.aligned.run(start, end, async () => {
      if (start === offset && end === offset + data.length) return write(offset, data, opts);
      await write(start, await this.merged(start, end, offset, data), opts);
    });
  }

  async writeZeroes(offset: number, length: number, opts?: { mayUnmap?: boolean }): Promise<void> {
    this.checkRange(offset, length);
    const write = this.writer();
    if (length === 0) return;
    const a = this.alignment;
    if (a === 1) return this.zeroes(offset, length, opts?.mayUnmap ?? false);
    // Whole sectors are zeroed as such; a partial head or tail sector is rewritten with zeros in it.
    const start = offset - (offset % a);
    const end = alignUp(offset + length, a);
    return this.aligned.run(start, end, async () => {
      const innerStart = alignUp(offset, a);
      const innerEnd = offset + length - ((offset + length) % a);
      if (innerStart >= innerEnd) {
        await write(start, await this.merged(start, end, offset, new Uint8Array(length)));
        return;
      }
      if (start < offset) await write(start, await this.merged(start, innerStart, offset, new Uint8Array(innerStart - offset)));
      await this.zeroes(innerStart, innerEnd - innerStart, opts?.mayUnmap ?? false);
      if (innerEnd < offset + length) await write(innerEnd, await this.merged(innerEnd, end, innerEnd, new Uint8Array(offset + length - innerEnd)));
    });
  }

  /** The driver's write, or the read-only refusal. */
  private writer(): NonNullable<FormatDriver['write']> {
    const d = this.driver;
    if (!d.writable || !d.write) throw new ImageError('read-only', `Image '${this.filename}' is read-only`);
    return d.write.bind(d);
  }

  /** The driver's request alignment (encrypted images: the cipher's sector), 1 for byte-granular drivers. */
  private get alignment(): number {
    return this.driver.requestAlignment ?? 1;
  }

  /**
   * Sector-aligned requests of a driver with a request alignment hold their
   * aligned range, so a read-modify-write of a partial sector never
   * interleaves with another write to it (qemu's serialising requests).
   */
  private readonly aligned = new RangeLock();

  /** [start, end) as the guest reads it, with `data` laid over it at `offset`. */
  private async merged(start: number, end: number, offset: number, data: Uint8Array): Promise<Uint8Array> {
    const buf = new Uint8Array(end - start);
    const a = this.alignment;
    if (start < offset) await this.read(start, buf.subarray(0, a));
    if (offset + data.length < end) await this.read(end - a, buf.subarray(buf.length - a));
    buf.set(data, offset - start);
    return buf;
  }

  private async zeroes(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    if (this.driver.writeZeroes) return this.driver.writeZeroes(offset, length, { mayUnmap });
    // No native zeroing: write explicit zeros, a bounded buffer at a time.
    const write = this.writer();
    const chunk = new Uint8Array(Math.min(length, 1 << 20));
    for (let pos = 0; pos < length; pos += chunk.length) {
      const n = Math.min(chunk.length, length - pos);
      await write(offset + pos, chunk.subarray(0, n));
    }
  }

  async discard(offset: number, length: number): Promise<void> {
    this.checkRange(offset, length);
    if (!this.driver.writable) throw new ImageError('read-only', `Image '${this.filename}' is read-only`);
    if (this.discardIgnored) return;
    // Discard is advisory: with a request alignment only the whole sectors inside the range go.
    const a = this.alignment;
    const start = alignUp(offset, a);
    const end = offset + length - ((offset + length) % a);
    if (end > start) await this.driver.discard?.(start, end - start);
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    this.checkRange(offset, into.length);
    let pos = 0;
    let copy = false;
    while (pos < into.length) {
      const m = await this.driver.getMapping(offset + pos, into.length - pos);
      const part = into.subarray(pos, pos + m.length);
      switch (m.kind) {
        case 'data':
          await m.storage.read(part, m.hostOffset);
          break;
        case 'zero':
          part.fill(0);
          break;
        case 'unallocated':
          await this.readBacking(offset + pos, part);
          copy = this.copyOnRead;
          break;
        case 'compressed':
          if (!this.driver.readCompressed) throw new ImageError('unsupported', 'compressed data without a decompressor');
          await this.driver.readCompressed(offset + pos, part);
          break;
      }
      pos += m.length;
    }
    if (copy) await this.copyUp(offset, into.length);
  }

  /**
   * Copy-on-read, as qemu does it: every cluster the read touched that this
   * layer does not hold is written here with what the chain below reads
   * (zeros as a zero write), so the cluster is allocated from then on.
   */
  private async copyUp(offset: number, length: number): Promise<void> {
    if (!this.driver.writable) return;
    const write = this.writer();
    this.clusterSize ??= (await this.driver.info()).clusterSize ?? 1;
    const cs = Math.max(this.clusterSize, this.alignment);
    const step = Math.max(cs, 1 << 20);
    const end = Math.min(this.size, alignUp(offset + length, cs));
    let pos = offset - (offset % cs);
    while (pos < end) {
      const st = await this.driver.getMapping(pos, Math.min(step, end - pos));
      if (st.kind === 'unallocated') {
        const buf = new Uint8Array(st.length);
        await this.readBacking(pos, buf);
        if (this.driver.writeZeroes && buf.every((b) => b === 0)) await this.driver.writeZeroes(pos, buf.length, { mayUnmap: false });
        else await write(pos, buf);
      }
      pos += st.length;
    }
  }

  /** Backing bytes for an unallocated range; zeros past the end of a shorter backing file. */
  private async readBacking(offset: number, part: Uint8Array): Promise<void> {
    const b = this.backing;
    const n = b ? Math.max(0, Math.min(part.length, b.size - offset)) : 0;
    if (b && n > 0) await b.read(offset, part.subarray(0, n));
    part.fill(0, n);
  }

  async layerStatus(offset: number, length: number): Promise<LayerStatus> {
    this.checkRange(offset, length);
    const m = await this.driver.getMapping(offset, length);
    return this.statusOf(m, offset);
  }

  private async statusOf(m: Mapping, offset: number): Promise<LayerStatus> {
    switch (m.kind) {
      case 'data': {
        if (m.opaque) return { length: m.length, data: true, zero: false, allocated: true, compressed: false };
        const st: LayerStatus = { length: m.length, data: true, zero: false, allocated: true, compressed: false, hostOffset: m.hostOffset, file: m.storage };
        if (this.format === 'raw') return this.fileStatus(st, m.storage, m.hostOffset, false);
        if (m.recurse) return this.fileStatus(st, m.storage, m.hostOffset, true);
        return st;
      }
      case 'zero':
        return { length: m.length, data: false, zero: true, allocated: true, compressed: false, hostOffset: m.hostOffset, file: m.storage };
      case 'compressed':
        return { length: m.length, data: true, zero: false, allocated: true, compressed: true };
      case 'unallocated': {
        // qemu: unallocated with no backing file, or past the end of a shorter
        // one, reads as zero but is still not allocated here.
        const zero = this.backing === null || offset >= this.backing.size;
        return { length: m.length, data: false, zero, allocated: false, compressed: false, hostOffset: m.hostOffset, file: m.storage };
      }
    }
  }

  /**
   * Ask the host file about a data range: for raw images the file's answer
   * is the answer (a hole is zero, not data); for qemu's RECURSE case a hole
   * adds the zero flag to data.
   */
  private async fileStatus(st: LayerStatus, storage: Storage, hostOffset: number, recurse: boolean): Promise<LayerStatus> {
    const fileSize = await storage.size();
    if (hostOffset >= fileSize) return recurse ? { ...st, zero: true } : { ...st, data: false, zero: true };
    if (!storage.allocation) return st;
    const a = await storage.allocation(hostOffset, Math.min(st.length, fileSize - hostOffset));
    const length = a.length;
    if (recurse) return { ...st, length, zero: !a.data };
    return { ...st, length, data: a.data, zero: !a.data };
  }

  async blockStatus(offset: number, length: number): Promise<Extent> {
    this.checkRange(offset, length);
    let layer: Image = this;
    let depth = 0;
    let len = length;
    for (;;) {
      const st = await layer.layerStatus(offset, len);
      len = st.length;
      if (st.data || st.zero || !layer.backing) {
        return {
          offset,
          length: len,
          depth,
          present: st.allocated,
          data: st.data,
          zero: st.zero,
          compressed: st.compressed,
          hostOffset: st.hostOffset,
          file: st.file,
        };
      }
      layer = layer.backing;
      depth++;
      len = Math.min(len, layer.size - offset);
    }
  }

  async info(): Promise<ImageInfo> {
    const d = await this.driver.info();
    const info: ImageInfo = {
      filename: this.filename,
      format: this.format,
      'virtual-size': this.size,
    };
    const actual = await this.driver.storage.allocatedSize?.();
    if (actual !== undefined) info['actual-size'] = actual;
    if (d.clusterSize !== undefined) info['cluster-size'] = d.clusterSize;
    if (d.encrypted) info.encrypted = true;
    if (d.dirty !== undefined) info['dirty-flag'] = d.dirty;
    const b = this.driver.backing;
    if (b) {
      info['backing-filename'] = b.name;
      if (this.backingPath !== undefined) info['full-backing-filename'] = this.backingPath;
      if (b.format !== undefined) info['backing-filename-format'] = b.format;
    }
    if (d.snapshots && d.snapshots.length > 0) info.snapshots = d.snapshots;
    if (d.formatSpecific) info['format-specific'] = d.formatSpecific;
    return info;
  }

  async flush(): Promise<void> {
    await this.driver.flush();
  }

  async close(): Promise<void> {
    try {
      await this.driver.close();
    } finally {
      await this.backing?.close();
    }
  }

  private checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new ImageError('bad-argument', `Request out of range: offset ${offset}, length ${length}, image size ${this.size}`);
    }
  }
}

/**
 * Every extent of [offset, offset+length) across the backing chain, one
 * blockStatus call at a time: runs of data, zero and unallocated space.
 *
 * @example
 * for await (const e of extents(img)) if (e.data) console.log(`data at ${e.offset}, ${e.length} bytes`);
 */
export async function* extents(image: Image, offset = 0, length = image.size - offset): AsyncGenerator<Extent> {
  const end = offset + length;
  let pos = offset;
  while (pos < end) {
    const e = await image.blockStatus(pos, end - pos);
    yield e;
    pos += e.length;
  }
}

const alignUp = (n: number, a: number): number => Math.ceil(n / a) * a;
