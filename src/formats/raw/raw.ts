/**
 * raw: the guest bytes are the file's bytes. The virtual size is the file
 * size rounded up to 512 bytes (qemu counts whole sectors; the tail of the
 * last sector reads as zero).
 */
import type { DriverContext, FormatDriver, Mapping, ResizeRequest } from '../../block/driver.js';
import type { DriverInfo } from '../../block/info.js';
import type { Storage } from '../../io/storage.js';
import { alignUp } from '../../units.js';
import { ImageError } from '../../errors.js';
import { Mutex } from '../../block/locks.js';
import { probeAsQemu } from '../../block/probe.js';
import { writeZeroRange } from '../../block/zeros.js';

export const SECTOR = 512;

export class RawDriver implements FormatDriver {
  readonly format = 'raw' as const;
  size: number;
  readonly storage: Storage;
  readonly writable: boolean;
  /**
   * The format was guessed. As in qemu's raw driver, a write may then not
   * make the first sector look like another format: that is how a guest
   * would get the host to open its disk as, say, a qcow2 with a backing file
   * of the guest's choosing. Writes to sector 0 run one at a time, so the
   * sector checked is the sector written.
   */
  private readonly probed: boolean;
  private readonly sectorZero = new Mutex();

  constructor(storage: Storage, size: number, writable: boolean, probed = false) {
    this.storage = storage;
    this.size = size;
    this.writable = writable;
    this.probed = probed;
  }

  async getMapping(offset: number, maxLength: number): Promise<Mapping> {
    return { kind: 'data', length: maxLength, storage: this.storage, hostOffset: offset };
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    if (!this.probed || offset >= SECTOR || data.length === 0) return this.storage.write(data, offset);
    return this.sectorZero.run(async () => {
      const sector = new Uint8Array(SECTOR);
      await this.storage.read(sector, 0);
      sector.set(data.subarray(0, SECTOR - offset), offset);
      if (probeAsQemu(sector) !== 'raw') throw new ImageError('not-permitted', 'Operation not permitted');
      await this.storage.write(data, offset);
    });
  }

  /** With mayUnmap (qemu-io write -z -u) the file gets a hole where the host can punch one. */
  async writeZeroes(offset: number, length: number, opts: { mayUnmap: boolean } = { mayUnmap: false }): Promise<void> {
    if (this.storage.writeZeroes) return this.storage.writeZeroes(offset, length, { mayUnmap: opts.mayUnmap });
    const chunk = new Uint8Array(Math.min(length, 1 << 20));
    for (let pos = 0; pos < length; pos += chunk.length) {
      await this.storage.write(chunk.subarray(0, Math.min(chunk.length, length - pos)), offset + pos);
    }
  }

  /** As qemu's file driver: a hole is punched where the host can; elsewhere discard does nothing. */
  async discard(offset: number, length: number): Promise<void> {
    await this.storage.punchHole?.(offset, length);
  }

  /**
   * The file takes the new length exactly (the size reads it back rounded up
   * to a sector); falloc allocates the new area, full writes its zeros.
   */
  async resize(newSize: number, req: ResizeRequest): Promise<void> {
    if (req.preallocation === 'metadata') throw new ImageError('unsupported', 'Unsupported preallocation mode: metadata');
    const old = await this.storage.size();
    if (newSize < old && req.preallocation !== 'off') throw new ImageError('bad-argument', 'Cannot use preallocation for shrinking files');
    await this.storage.truncate(newSize);
    // falloc allocates without writing where the host can (fallocate); full, and falloc elsewhere, write zeros.
    const allocated = req.preallocation === 'falloc' && newSize > old && (await this.storage.allocate?.(old, newSize - old));
    if (req.preallocation !== 'off' && newSize > old && !allocated) await writeZeroRange(this.storage, old, newSize);
    this.size = alignUp(newSize, SECTOR);
  }

  async info(): Promise<DriverInfo> {
    // qemu-img 7.2 prints dirty-flag false for raw images too, where the protocol answers (not over HTTP).
    return this.storage.noBlockInfo ? {} : { dirty: false };
  }

  async flush(): Promise<void> {
    if (this.writable) await this.storage.flush();
  }

  async close(): Promise<void> {
    await this.storage.close();
  }
}

export async function openRaw(ctx: DriverContext): Promise<FormatDriver> {
  const size = alignUp(await ctx.storage.size(), SECTOR);
  return new RawDriver(ctx.storage, size, ctx.writable, ctx.probed === true);
}
