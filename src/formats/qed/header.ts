/**
 * The QED header: parsing and validation, in QEMU's order and with its
 * messages, so that a bad image fails the way qemu-img reports it.
 */
import { ImageError, invalid, unsupported } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import { isPowerOfTwo, readU64, readU64Big, writeU64 } from '../../units.js';
import {
  ENTRY_BYTES,
  FEATURE_MASK,
  F_BACKING_FILE,
  F_BACKING_FORMAT_NO_PROBE,
  F_NEED_CHECK,
  HEADER,
  HEADER_BYTES,
  MAX_BACKING_NAME_BYTES,
  MAX_CLUSTER_SIZE,
  MAX_TABLE_SIZE,
  MIN_CLUSTER_SIZE,
  MIN_TABLE_SIZE,
  QED_MAGIC,
  SECTOR_SIZE,
} from './constants.js';
import { isValidTableOffset, makeGeometry, type QedGeometry } from './table.js';

const U32_MAX = 0xffff_ffff;
const U64_MASK = (1n << 64n) - 1n;

export interface QedHeader {
  clusterSize: number;
  /** In clusters. */
  tableSize: number;
  /** In clusters. */
  headerSize: number;
  features: bigint;
  compatFeatures: bigint;
  autoclearFeatures: bigint;
  l1TableOffset: number;
  imageSize: number;
  backingFilenameOffset: number;
  backingFilenameSize: number;
}

export const hasFeature = (h: QedHeader, bit: bigint): boolean => (h.features & bit) !== 0n;
export const needsCheck = (h: QedHeader): boolean => hasFeature(h, F_NEED_CHECK);

export const isClusterSizeValid = (v: number): boolean =>
  v >= MIN_CLUSTER_SIZE && v <= MAX_CLUSTER_SIZE && isPowerOfTwo(v);
export const isTableSizeValid = (v: number): boolean => v >= MIN_TABLE_SIZE && v <= MAX_TABLE_SIZE && isPowerOfTwo(v);

/**
 * The largest image the tables can address, computed as QEMU does in u64:
 * for the biggest geometries the product wraps (to 0 for 64 MiB clusters),
 * and QEMU then refuses every non-empty size, so this does too.
 */
export function maxImageSize(clusterSize: number, tableSize: number): bigint {
  const entries = BigInt((tableSize * clusterSize) / ENTRY_BYTES);
  return (entries * BigInt(clusterSize) * entries) & U64_MASK;
}

/**
 * Parse and validate the first HEADER_BYTES of an image whose file is
 * `storageSize` bytes long.
 */
export function parseHeader(bytes: Uint8Array, storageSize: number): { header: QedHeader; geometry: QedGeometry } {
  if (bytes.length < HEADER_BYTES) throw invalid('Image not in QED format');
  const v = new DataView(bytes.buffer, bytes.byteOffset, HEADER_BYTES);
  if (v.getUint32(HEADER.magic, true) !== QED_MAGIC) throw invalid('Image not in QED format');

  const features = readU64Big(v, HEADER.features, true);
  const unknown = features & ~FEATURE_MASK;
  if (unknown !== 0n) throw unsupported(`Unsupported QED features: ${unknown.toString(16)}`);

  const clusterSize = v.getUint32(HEADER.clusterSize, true);
  if (!isClusterSizeValid(clusterSize)) throw invalid('QED cluster size is invalid');

  const tableSize = v.getUint32(HEADER.tableSize, true);
  if (!isTableSizeValid(tableSize)) throw invalid('QED table size is invalid');

  const imageSizeBig = readU64Big(v, HEADER.imageSize, true);
  if (imageSizeBig % BigInt(SECTOR_SIZE) !== 0n || imageSizeBig > maxImageSize(clusterSize, tableSize)) {
    throw invalid('QED image size is invalid');
  }

  const headerSize = v.getUint32(HEADER.headerSize, true);
  const geometry = makeGeometry(clusterSize, tableSize, headerSize, storageSize);
  const l1Big = readU64Big(v, HEADER.l1TableOffset, true);
  // Beyond 2^53 an offset is past any file, hence invalid like any other.
  if (l1Big > BigInt(Number.MAX_SAFE_INTEGER) || !isValidTableOffset(geometry, Number(l1Big))) {
    throw invalid('QED table offset is invalid');
  }

  if (headerSize > Math.floor(U32_MAX / clusterSize)) throw invalid('QED header size is too large');

  const header: QedHeader = {
    clusterSize,
    tableSize,
    headerSize,
    features,
    compatFeatures: readU64Big(v, HEADER.compatFeatures, true),
    autoclearFeatures: readU64Big(v, HEADER.autoclearFeatures, true),
    l1TableOffset: Number(l1Big),
    // Valid for QED but possibly beyond what a JS number holds exactly: refused there.
    imageSize: readU64(v, HEADER.imageSize, true, 'QED image size'),
    backingFilenameOffset: v.getUint32(HEADER.backingFilenameOffset, true),
    backingFilenameSize: v.getUint32(HEADER.backingFilenameSize, true),
  };

  if (hasFeature(header, F_BACKING_FILE)) {
    if (header.backingFilenameOffset + header.backingFilenameSize > geometry.headerBytes) {
      throw invalid('QED backing filename offset is invalid');
    }
    if (header.backingFilenameSize >= MAX_BACKING_NAME_BYTES) throw invalid('Failed to read backing filename');
  }
  return { header, geometry };
}

export interface QedBacking {
  name: string;
  /** 'raw' when the image forbids probing; otherwise the block layer probes. */
  format?: 'raw';
}

/**
 * The backing file the header names, if any. Like QEMU, the name ends at
 * its first NUL, and an empty name means no backing file.
 */
export async function readBacking(storage: Storage, header: QedHeader): Promise<QedBacking | undefined> {
  if (!hasFeature(header, F_BACKING_FILE)) return undefined;
  // parseHeader bounded the size below MAX_BACKING_NAME_BYTES.
  const raw = new Uint8Array(header.backingFilenameSize);
  try {
    await storage.read(raw, header.backingFilenameOffset);
  } catch (e) {
    throw new ImageError('io', 'Failed to read backing filename', { cause: e });
  }
  const nul = raw.indexOf(0);
  const name = new TextDecoder().decode(nul < 0 ? raw : raw.subarray(0, nul));
  if (name === '') return undefined;
  return hasFeature(header, F_BACKING_FORMAT_NO_PROBE) ? { name, format: 'raw' } : { name };
}

/** The HEADER_BYTES QEMU writes for `h` (qed_header_cpu_to_le). */
export function serializeHeader(h: QedHeader): Uint8Array {
  const out = new Uint8Array(HEADER_BYTES);
  const v = new DataView(out.buffer);
  v.setUint32(HEADER.magic, QED_MAGIC, true);
  v.setUint32(HEADER.clusterSize, h.clusterSize, true);
  v.setUint32(HEADER.tableSize, h.tableSize, true);
  v.setUint32(HEADER.headerSize, h.headerSize, true);
  v.setBigUint64(HEADER.features, h.features & U64_MASK, true);
  v.setBigUint64(HEADER.compatFeatures, h.compatFeatures & U64_MASK, true);
  v.setBigUint64(HEADER.autoclearFeatures, h.autoclearFeatures & U64_MASK, true);
  writeU64(v, HEADER.l1TableOffset, h.l1TableOffset, true);
  writeU64(v, HEADER.imageSize, h.imageSize, true);
  v.setUint32(HEADER.backingFilenameOffset, h.backingFilenameOffset, true);
  v.setUint32(HEADER.backingFilenameSize, h.backingFilenameSize, true);
  return out;
}
