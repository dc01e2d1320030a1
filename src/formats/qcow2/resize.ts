/**
 * qcow2 resize (qemu's qcow2_co_truncate): growing extends or moves the L1
 * table before the header's size says the image is bigger; shrinking unmaps
 * every cluster past the new end and releases the L2 tables no longer
 * reachable before the header's size says it is smaller. Either way a crash
 * leaves an image of the old or the new size that checks clean (at worst
 * with leaked clusters).
 *
 * The L1 table moves as the refcount table does: the new table is written
 * and synced into clusters already counted, then the header points at it
 * (synced), and only then are the old table's clusters freed.
 */
import type { BackingReader, Preallocation } from '../../block/driver.js';
import { writeZeroRange } from '../../block/zeros.js';
import { ImageError } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import { alignUp } from '../../units.js';
import * as C from './constants.js';
import { sizeToL1, type Qcow2Header } from './header.js';
import type { L2Mapper } from './mapping.js';
import type { RefcountStore } from './refcounts.js';
import type { Qcow2Writer } from './writer.js';

export interface ResizeParts {
  header: Qcow2Header;
  storage: Storage;
  /** The external data file, if the image has one. */
  dataFile: Storage | undefined;
  mapper: L2Mapper;
  refcounts: RefcountStore;
  writer: Qcow2Writer;
  backing: BackingReader | null;
  /** Current virtual size. */
  size: number;
}

const TWO_32 = 0x1_0000_0000;

/** qemu's refusals, before anything changes. */
export function checkQcow2Resize(p: ResizeParts, newSize: number, preallocation: Preallocation): void {
  const h = p.header;
  if (newSize % C.SECTOR_SIZE !== 0) throw new ImageError('bad-argument', 'The new size must be a multiple of 512');
  if (h.nbSnapshots > 0 && h.version < 3) throw new ImageError('unsupported', "Can't resize a v2 image which has snapshots");
  if (newSize < p.size && preallocation !== 'off') throw new ImageError('bad-argument', "Preallocation can't be used for shrinking an image");
  const l2Bits = h.clusterBits - Math.log2(entrySize(h));
  const l1 = sizeToL1(BigInt(newSize), h.clusterBits, l2Bits);
  if (l1 * BigInt(C.L1_ENTRY_SIZE) > BigInt(C.MAX_L1_SIZE)) throw new ImageError('bad-argument', 'Failed to grow the L1 table: File too large');
  // A longer backing file would show through the new area: qemu zeroes it, which v2 cannot.
  if (newSize > p.size && p.backing && p.backing.size > p.size && h.version < 3) {
    throw new ImageError('unsupported', 'Failed to zero out new clusters: Operation not supported');
  }
}

function entrySize(h: Qcow2Header): number {
  return Number(h.incompatibleFeatures) & C.INCOMPAT_EXTL2 ? C.L2_ENTRY_SIZE_EXTENDED : C.L2_ENTRY_SIZE;
}

function l1EntriesFor(h: Qcow2Header, size: number): number {
  return Number(sizeToL1(BigInt(size), h.clusterBits, h.clusterBits - Math.log2(entrySize(h))));
}

/** Grow the image to `newSize`; the caller updates its own size afterwards. */
export async function growQcow2(p: ResizeParts, newSize: number, preallocation: Preallocation): Promise<void> {
  const { header: h, writer } = p;
  const oldSize = p.size;
  await writer.exclusive(async () => {
    const needed = l1EntriesFor(h, newSize);
    if (needed > h.l1Size) await growL1(p, needed);
    writer.setGeometry({ size: newSize });
  });
  try {
    await fillNewArea(p, oldSize, newSize, preallocation);
    await writer.flush();
  } catch (e) {
    writer.setGeometry({ size: oldSize });
    throw e;
  }
  await writeSize(p, newSize);
}

/** What qemu puts into the grown area: preallocated clusters, and zeros where a backing file would show. */
async function fillNewArea(p: ResizeParts, oldSize: number, newSize: number, preallocation: Preallocation): Promise<void> {
  const { writer, dataFile } = p;
  if (dataFile) {
    if ((await dataFile.size()) < newSize) await dataFile.truncate(newSize);
    if (preallocation === 'full') await writeZeroRange(dataFile, oldSize, newSize);
  }
  if (preallocation !== 'off') {
    const hostEnd = await writer.preallocate(preallocation === 'full', oldSize);
    // The file covers every preallocated cluster (qemu's check counts any beyond its end as an error).
    if (!dataFile && (await p.storage.size()) < hostEnd) await p.storage.truncate(hostEnd);
  }
  if (p.backing && p.backing.size > oldSize) await writer.writeZeroes(oldSize, newSize - oldSize, false);
}

/**
 * An L1 table of `entries`: extended in place when its clusters have room,
 * else written elsewhere and switched to through the header.
 */
async function growL1(p: ResizeParts, entries: number): Promise<void> {
  const { header: h, storage, mapper, refcounts, writer } = p;
  const cs = h.clusterSize;
  const oldBytes = h.l1Size * C.L1_ENTRY_SIZE;
  const newBytes = entries * C.L1_ENTRY_SIZE;
  const table = new Uint8Array(newBytes);
  await storage.read(table.subarray(0, oldBytes), h.l1TableOffset);
  if (oldBytes > 0 && alignUp(newBytes, cs) === alignUp(oldBytes, cs)) {
    // Room in the clusters it has: the new entries are zeroed before the header counts them.
    await storage.write(table.subarray(oldBytes), h.l1TableOffset + oldBytes);
    await storage.flush();
    await writeL1Location(storage, h.l1TableOffset, entries);
    h.l1Size = entries;
    mapper.replaceL1(table, entries);
    return;
  }
  const old = { offset: h.l1TableOffset, bytes: oldBytes };
  const at = await refcounts.allocate(Math.ceil(newBytes / cs));
  // The new clusters' refcounts first, then the table, then the header that names it.
  await refcounts.flushBlocks();
  await storage.flush();
  const padded = new Uint8Array(alignUp(newBytes, cs));
  padded.set(table);
  await storage.write(padded, at);
  await storage.flush();
  await writeL1Location(storage, at, entries);
  h.l1TableOffset = at;
  h.l1Size = entries;
  mapper.replaceL1(table, entries);
  writer.setGeometry({ l1Offset: at });
  // Nothing names the old table any more.
  if (old.bytes > 0) await refcounts.update(old.offset, old.bytes, -1);
  await refcounts.flushBlocks();
  await storage.flush();
}

/** Header l1_size and l1_table_offset (bytes 36..47), synced. */
async function writeL1Location(storage: Storage, offset: number, entries: number): Promise<void> {
  const b = new Uint8Array(12);
  const v = new DataView(b.buffer);
  v.setUint32(0, entries, false);
  v.setUint32(4, Math.floor(offset / TWO_32), false);
  v.setUint32(8, offset >>> 0, false);
  await storage.write(b, 36);
  await storage.flush();
}

/** The header's size field (bytes 24..31), synced. */
async function writeSize(p: ResizeParts, newSize: number): Promise<void> {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(newSize), false);
  await p.storage.write(b, 24);
  await p.storage.flush();
  p.header.size = newSize;
}

/**
 * Shrink to `newSize`: clusters from the first whole cluster past the end
 * are unmapped, L2 tables past the new L1 range released (the L1 keeps its
 * length, its tail zero), the size written, and the file cut after the last
 * cluster still in use, as qemu does.
 */
export async function shrinkQcow2(p: ResizeParts, newSize: number): Promise<void> {
  const { header: h, writer, mapper, refcounts, storage } = p;
  const cs = h.clusterSize;
  const span = mapper.tableSpan;
  await writer.exclusive(async () => {
    const keepFrom = alignUp(newSize, cs);
    const lastTable = Math.ceil(keepFrom / span);
    if (keepFrom % span !== 0) {
      const i = Math.floor(keepFrom / span);
      if (mapper.l1Entry(i).hi !== 0 || mapper.l1Entry(i).lo !== 0) await writer.unmapTableTail(i, (keepFrom % span) / cs);
    }
    for (let i = lastTable; i < mapper.l1Size; i++) await writer.dropTable(i);
    writer.setGeometry({ size: newSize });
  });
  await writeSize(p, newSize);
  if (p.dataFile) await p.dataFile.truncate(newSize);
  const end = (await writer.exclusive(() => refcounts.endCluster())) * cs;
  if (end > 0 && end < (await storage.size())) await storage.truncate(end);
}
