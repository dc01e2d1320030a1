/**
 * QED (qed-spec.rst): a header, an L1 table, L2 tables and data clusters,
 * all cluster-aligned; no refcounts. This driver reads; it answers where a
 * guest range lives and leaves the I/O to the block layer.
 */
import type { BackingRef, DriverContext, FormatDriver, Mapping } from '../../block/driver.js';
import type { DriverInfo } from '../../block/info.js';
import type { Storage } from '../../io/storage.js';
import { HEADER_BYTES } from './constants.js';
import { needsCheck, parseHeader, readBacking, type QedHeader } from './header.js';
import { QedMapper } from './mapping.js';
import type { QedGeometry } from './table.js';

export class QedDriver implements FormatDriver {
  readonly format = 'qed' as const;
  readonly size: number;
  readonly storage: Storage;
  /** Writing QED is not supported yet: always opened read-only. */
  readonly writable = false;
  readonly backing?: BackingRef;
  readonly header: QedHeader;
  readonly geometry: QedGeometry;
  private readonly mapper: QedMapper;

  constructor(storage: Storage, header: QedHeader, geometry: QedGeometry, backing: BackingRef | undefined) {
    this.storage = storage;
    this.header = header;
    this.geometry = geometry;
    this.size = header.imageSize;
    if (backing) this.backing = backing;
    this.mapper = new QedMapper(storage, geometry, header.l1TableOffset, header.imageSize);
  }

  /**
   * The image was not closed cleanly. A read-only open proceeds as it is
   * (QEMU checks and repairs only on a read-write open).
   */
  get needsCheck(): boolean {
    return needsCheck(this.header);
  }

  /** Read the L1 table now, so that an unreadable one fails the open. */
  async load(): Promise<void> {
    await this.mapper.loadL1();
  }

  getMapping(offset: number, maxLength: number): Promise<Mapping> {
    return this.mapper.getMapping(offset, maxLength);
  }

  async info(): Promise<DriverInfo> {
    // QEMU 7.2's QED driver does not report NEED_CHECK: qemu-img info prints
    // dirty-flag false for QED whatever the header says.
    return { clusterSize: this.geometry.clusterSize, dirty: false };
  }

  async flush(): Promise<void> {}

  async close(): Promise<void> {
    this.mapper.clear();
    await this.storage.close();
  }
}

export async function openQed(ctx: DriverContext): Promise<FormatDriver> {
  const { storage } = ctx;
  const head = new Uint8Array(HEADER_BYTES);
  await storage.read(head, 0);
  const { header, geometry } = parseHeader(head, await storage.size());
  const backing = await readBacking(storage, header);
  const driver = new QedDriver(storage, header, geometry, backing);
  if (!ctx.metadataOnly) await driver.load();
  return driver;
}
