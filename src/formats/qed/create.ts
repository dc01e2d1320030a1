/**
 * Creating a QED image the way `qemu-img create -f qed` does: the header
 * (and the backing name right after it) in cluster 0, a zeroed L1 table in
 * the next table_size clusters, nothing else. Option parsing and validation
 * follow QEMU's order and messages.
 */
import type { OptionBag } from '../../block/options.js';
import { ImageError } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import { alignUp } from '../../units.js';
import {
  F_BACKING_FILE,
  F_BACKING_FORMAT_NO_PROBE,
  HEADER_BYTES,
  MAX_CLUSTER_SIZE,
  MAX_TABLE_SIZE,
  MIN_CLUSTER_SIZE,
  MIN_TABLE_SIZE,
  SECTOR_SIZE,
} from './constants.js';
import { isClusterSizeValid, isTableSizeValid, maxImageSize, serializeHeader, type QedHeader } from './header.js';

export const DEFAULT_CLUSTER_SIZE = 64 * 1024;
export const DEFAULT_TABLE_SIZE = 4;

export interface QedCreateOptions {
  /** Unrounded, as given; undefined only when a backing file may supply it. */
  size?: number;
  /** As given (QEMU keeps the low 32 bits). */
  clusterSize?: number;
  /** As given; undefined means the default and is left out of the create line. */
  tableSize?: number;
  backingFile?: string;
  backingFmt?: string;
}

/** QEMU 7.2's BlockdevDriver names in this build: the values backing_fmt accepts. */
const BLOCKDEV_DRIVERS = new Set([
  'blkdebug', 'blklogwrites', 'blkreplay', 'blkverify', 'bochs', 'cloop', 'compress', 'copy-before-write',
  'copy-on-read', 'dmg', 'file', 'snapshot-access', 'ftp', 'ftps', 'gluster', 'host_cdrom', 'host_device',
  'http', 'https', 'iscsi', 'luks', 'nbd', 'nfs', 'null-aio', 'null-co', 'nvme', 'parallels', 'preallocate',
  'qcow', 'qcow2', 'qed', 'quorum', 'raw', 'rbd', 'replication', 'ssh', 'throttle', 'vdi', 'vhdx', 'vmdk',
  'vpc', 'vvfat',
]);

const bad = (msg: string): ImageError => new ImageError('bad-argument', msg);

/**
 * Read qemu-img's QED options (size, backing_file, backing_fmt,
 * cluster_size, table_size) from `bag`, refusing any other key. When the
 * size is known the values are validated too (validateQedCreate); without
 * a size and without a backing file to take it from, creation is refused.
 */
export function parseQedCreateOptions(bag: OptionBag): QedCreateOptions {
  const opts: QedCreateOptions = {};
  const size = bag.size('size');
  const backingFile = bag.string('backing_file');
  const backingFmt = bag.string('backing_fmt');
  opts.clusterSize = bag.size('cluster_size', DEFAULT_CLUSTER_SIZE);
  const tableSize = bag.size('table_size');
  bag.assertAllUsed();
  if (size !== undefined) opts.size = size;
  if (backingFile !== undefined) opts.backingFile = backingFile;
  if (backingFmt !== undefined) opts.backingFmt = backingFmt;
  if (tableSize !== undefined) opts.tableSize = tableSize;
  if (backingFile === '') throw bad('Expected backing file name, got empty string');
  if (size === undefined) {
    if (backingFile === undefined) throw bad('Image creation needs a size parameter');
    return opts;
  }
  validateQedCreate({ ...opts, size });
  return opts;
}

export interface QedGeometryChoice {
  /** Rounded up to whole sectors, as QEMU stores it. */
  size: number;
  clusterSize: number;
  tableSize: number;
}

/**
 * QEMU's checks in its create order, on the values it really uses: the
 * size rounded up to 512 bytes and the sizes cut to 32 bits (so a
 * cluster_size of 4 GiB + 4 KiB means 4 KiB, as in QEMU).
 */
export function validateQedCreate(opts: QedCreateOptions & { size: number }): QedGeometryChoice {
  if (opts.backingFmt !== undefined && !BLOCKDEV_DRIVERS.has(opts.backingFmt)) {
    throw bad(`Parameter 'backing-fmt' does not accept value '${opts.backingFmt}'`);
  }
  const clusterSize = (opts.clusterSize ?? DEFAULT_CLUSTER_SIZE) % 2 ** 32;
  const tableSize = (opts.tableSize ?? DEFAULT_TABLE_SIZE) % 2 ** 32;
  const size = alignUp(opts.size, SECTOR_SIZE);
  if (!isClusterSizeValid(clusterSize)) {
    throw bad(`QED cluster size must be within range [${MIN_CLUSTER_SIZE}, ${MAX_CLUSTER_SIZE}] and power of 2`);
  }
  if (!isTableSizeValid(tableSize)) {
    throw bad(`QED table size must be within range [${MIN_TABLE_SIZE}, ${MAX_TABLE_SIZE}] and power of 2`);
  }
  const max = maxImageSize(clusterSize, tableSize);
  if (BigInt(size) > max) {
    throw bad(`QED image size must be a non-zero multiple of cluster size and less than ${max} bytes`);
  }
  return { size, clusterSize, tableSize };
}

/** A value in qemu's option syntax: commas doubled. */
const optionValue = (v: string): string => v.replaceAll(',', ',,');

/**
 * The line qemu-img create prints before creating: options in QEMU's
 * create_opts order, the size as given, cluster_size always (it has a
 * default), table_size only when given.
 */
export function qedCreateLine(filename: string, opts: QedCreateOptions & { size: number }): string {
  let line = `Formatting '${filename}', fmt=qed size=${opts.size}`;
  if (opts.backingFile !== undefined) line += ` backing_file=${optionValue(opts.backingFile)}`;
  if (opts.backingFmt !== undefined) line += ` backing_fmt=${optionValue(opts.backingFmt)}`;
  line += ` cluster_size=${opts.clusterSize ?? DEFAULT_CLUSTER_SIZE}`;
  if (opts.tableSize !== undefined) line += ` table_size=${opts.tableSize}`;
  return line;
}

/** Write a new, empty QED image over whatever `storage` holds. */
export async function createQed(
  storage: Storage,
  opts: { size: number; clusterSize?: number; tableSize?: number; backingFile?: string; backingFmt?: string },
): Promise<void> {
  const { size, clusterSize, tableSize } = validateQedCreate(opts);
  const name = opts.backingFile === undefined ? undefined : new TextEncoder().encode(opts.backingFile);
  const l1Offset = opts.clusterSize ?? DEFAULT_CLUSTER_SIZE;
  let features = 0n;
  if (name) {
    features |= F_BACKING_FILE;
    if (opts.backingFmt === 'raw') features |= F_BACKING_FORMAT_NO_PROBE;
  }
  const header: QedHeader = {
    clusterSize,
    tableSize,
    headerSize: 1,
    features,
    compatFeatures: 0n,
    autoclearFeatures: 0n,
    // QEMU takes this from the option before cutting it to 32 bits.
    l1TableOffset: l1Offset,
    imageSize: size,
    backingFilenameOffset: name ? HEADER_BYTES : 0,
    backingFilenameSize: name ? name.length : 0,
  };
  const l1End = l1Offset + tableSize * clusterSize;

  await storage.truncate(0);
  await storage.write(serializeHeader(header), 0);
  // QEMU writes the name whole, even when it runs into the L1 table (the
  // image then fails to open); the zeroed L1 written after it wins.
  if (name && name.length > 0) await storage.write(name, HEADER_BYTES);
  const nameEnd = HEADER_BYTES + (name?.length ?? 0);
  if (nameEnd > l1Offset) await writeZeros(storage, l1Offset, Math.min(nameEnd, l1End) - l1Offset);
  // The zeroed L1 table: extending the file gives the same bytes without
  // writing up to 1 GiB of zeros.
  if ((await storage.size()) < l1End) await storage.truncate(l1End);
  await storage.flush();
}

async function writeZeros(storage: Storage, offset: number, length: number): Promise<void> {
  const chunk = new Uint8Array(Math.min(length, 1 << 20));
  for (let pos = 0; pos < length; pos += chunk.length) {
    await storage.write(chunk.subarray(0, Math.min(chunk.length, length - pos)), offset + pos);
  }
}
