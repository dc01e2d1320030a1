/**
 * The qcow2 header (spec: Header) and its extensions (spec: Header
 * extensions): parsing with QEMU's validation rules and messages
 * (qcow2_do_open, qcow2_read_extensions), and serialisation in QEMU's
 * layout (qcow2_update_header) so the header round-trips.
 */
import { ImageError } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import * as C from './constants.js';
import { cString } from './text.js';

export interface FeatureName {
  type: number;
  bit: number;
  name: string;
}

export interface BitmapsExtension {
  nbBitmaps: number;
  directorySize: number;
  directoryOffset: number;
}

export interface CryptoHeaderExtension {
  offset: number;
  length: number;
}

export interface UnknownExtension {
  magic: number;
  data: Uint8Array;
}

export interface Qcow2Extensions {
  backingFormat?: string;
  /** Absent when the image has no feature name table. */
  featureTable?: FeatureName[];
  bitmaps?: BitmapsExtension;
  /** The bitmaps extension exists but autoclear bit 0 is clear: QEMU ignores it. */
  bitmapsInconsistent: boolean;
  cryptoHeader?: CryptoHeaderExtension;
  dataFile?: string;
  /** Extensions this reader does not know, kept in file order for rewriting. */
  unknown: UnknownExtension[];
}

export interface Qcow2Header {
  version: 2 | 3;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  clusterSize: number;
  /** The size field as stored (virtual size is this rounded down to 512). */
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
  refcountOrder: number;
  /** 72 for v2 (implicit), as stored for v3. */
  headerLength: number;
  compressionType: number;
  /** Header bytes past QEMU's 112-byte struct, kept verbatim. */
  unknownFields: Uint8Array;
  extensions: Qcow2Extensions;
  /** The backing file name; undefined if none (an empty name is none, as in QEMU). */
  backingFile?: string;
}

/**
 * The stored bytes of a parsed header's names (up to their NUL). Names that
 * are not valid UTF-8 do not survive decoding, so serializeHeader writes
 * these back while the decoded name is unchanged, as QEMU rewrites its C
 * strings. Kept beside the header object, which stays plain data.
 */
type RawNames = Partial<Record<'backingFile' | 'backingFormat' | 'dataFile', Uint8Array>>;
const rawNamesOf = new WeakMap<Qcow2Header, RawNames>();

/** The bytes of a C string (up to its first NUL). */
function cBytes(bytes: Uint8Array): Uint8Array {
  const nul = bytes.indexOf(0);
  return (nul < 0 ? bytes : bytes.subarray(0, nul)).slice();
}

const inval = (m: string): ImageError => new ImageError('invalid', m);
const unsup = (m: string): ImageError => new ImageError('unsupported', m);

const INT64_MAX = (1n << 63n) - 1n;
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** A u64 that passed QEMU's validation but that a JS number cannot hold exactly. */
function safe(v: bigint, what: string): number {
  if (v > MAX_SAFE) {
    throw unsup(`${what} is too large (0x${v.toString(16)}): offsets above 2^53 are not supported`);
  }
  return Number(v);
}

/** qcow2_validate_table: size cap, int64 overflow and cluster alignment. */
function validateTable(offset: bigint, entries: bigint, entryLen: bigint, maxBytes: bigint, clusterSize: number, name: string): void {
  if (entries > maxBytes / entryLen) throw inval(`${name} too large`);
  if (INT64_MAX - entries * entryLen < offset || offset % BigInt(clusterSize) !== 0n) {
    throw inval(`${name} offset invalid`);
  }
}

/** Number of L1 entries needed to map `size` bytes (QEMU's size_to_l1). */
export function sizeToL1(size: bigint, clusterBits: number, l2Bits: number): bigint {
  const shift = BigInt(clusterBits + l2Bits);
  return (size + (1n << shift) - 1n) >> shift;
}

/** Bytes of one L2 entry: 16 with extended L2 entries. */
export function l2EntrySize(incompat: bigint): number {
  return incompat & BigInt(C.INCOMPAT_EXTL2) ? C.L2_ENTRY_SIZE_EXTENDED : C.L2_ENTRY_SIZE;
}

/**
 * Parse the first cluster of an image (or at least its first 112 bytes:
 * missing bytes read as zero, as past the end of a file). `writable` only
 * decides whether a corrupt image may be opened.
 */
export function parseHeader(input: Uint8Array, opts: { writable?: boolean } = {}): Qcow2Header {
  let buf = input;
  if (buf.length < C.HEADER_V3_LENGTH) {
    buf = new Uint8Array(C.HEADER_V3_LENGTH);
    buf.set(input);
  }
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const u32 = (p: number): number => v.getUint32(p, false);
  const u64 = (p: number): bigint => v.getBigUint64(p, false);

  if (u32(0) !== C.QCOW2_MAGIC) throw inval('Image is not in qcow2 format');
  const version = u32(4);
  if (version < 2 || version > 3) throw unsup(`Unsupported qcow2 version ${version}`);
  const clusterBits = u32(20);
  if (clusterBits < C.MIN_CLUSTER_BITS || clusterBits > C.MAX_CLUSTER_BITS) {
    throw inval(`Unsupported cluster size: 2^${clusterBits}`);
  }
  const clusterSize = 2 ** clusterBits;

  let incompat = 0n;
  let compat = 0n;
  let autoclear = 0n;
  let refcountOrder = 4;
  let headerLength: number = C.HEADER_V2_LENGTH;
  if (version === 3) {
    incompat = u64(72);
    compat = u64(80);
    autoclear = u64(88);
    refcountOrder = u32(96);
    headerLength = u32(100);
    if (headerLength < C.HEADER_V3_MIN_LENGTH) throw inval('qcow2 header too short');
  }
  if (headerLength > clusterSize) throw inval('qcow2 header exceeds cluster size');
  if (buf.length < clusterSize) {
    // Everything below may look anywhere in the first cluster.
    const full = new Uint8Array(clusterSize);
    full.set(buf);
    buf = full;
  }
  const unknownFields = headerLength > C.HEADER_V3_LENGTH ? buf.slice(C.HEADER_V3_LENGTH, headerLength) : new Uint8Array(0);

  const backingFileOffset = u64(8);
  if (backingFileOffset > BigInt(clusterSize)) throw inval('Invalid backing file offset');
  const extEnd = backingFileOffset !== 0n ? Number(backingFileOffset) : clusterSize;

  const unknownIncompat = incompat & ~C.INCOMPAT_KNOWN_MASK;
  if (unknownIncompat !== 0n) {
    let table: FeatureName[] | undefined;
    try {
      table = readExtensions(buf, headerLength, extEnd, { featureTableOnly: true, cryptMethod: 0, autoclear, version, clusterSize }).featureTable;
    } catch {
      // QEMU reads the table with errors ignored.
    }
    throw unsup(unsupportedFeatureMessage(table, unknownIncompat));
  }
  const inc = Number(incompat);
  if (inc & C.INCOMPAT_CORRUPT && opts.writable) {
    throw new ImageError('corrupt', 'qcow2: Image is corrupt; cannot be opened read/write');
  }
  if (inc & C.INCOMPAT_EXTL2) {
    const sub = clusterSize / C.SUBCLUSTERS_PER_CLUSTER;
    if (sub < 2 ** C.MIN_CLUSTER_BITS) throw inval(`Unsupported subcluster size: ${sub}`);
  }
  if (refcountOrder > 6) throw inval('Reference count entry width too large; may not exceed 64 bits');

  const compressionType = headerLength > C.HEADER_COMPRESSION_TYPE_OFFSET ? buf[C.HEADER_COMPRESSION_TYPE_OFFSET]! : C.COMPRESSION_ZLIB;
  if (compressionType !== C.COMPRESSION_ZLIB && compressionType !== C.COMPRESSION_ZSTD) {
    throw unsup(`qcow2: unknown compression type: ${compressionType}`);
  }
  if (compressionType === C.COMPRESSION_ZLIB && inc & C.INCOMPAT_COMPRESSION) {
    throw inval('qcow2: Compression type incompatible feature bit must not be set');
  }
  if (compressionType !== C.COMPRESSION_ZLIB && !(inc & C.INCOMPAT_COMPRESSION)) {
    throw inval('qcow2: Compression type incompatible feature bit must be set');
  }

  const cryptMethod = u32(32);
  const l2Bits = clusterBits - Math.log2(l2EntrySize(incompat));

  const refcountTableOffset = u64(48);
  const refcountTableClusters = u32(56);
  if (refcountTableClusters === 0) throw inval('Image does not contain a reference count table');
  validateTable(refcountTableOffset, BigInt(refcountTableClusters), BigInt(clusterSize), BigInt(C.MAX_REFTABLE_SIZE), clusterSize, 'Reference count table');

  const nbSnapshots = u32(60);
  const snapshotsOffset = u64(64);
  validateTable(snapshotsOffset, BigInt(nbSnapshots), BigInt(C.SNAPSHOT_HEADER_SIZE), BigInt(C.SNAPSHOT_HEADER_SIZE * C.MAX_SNAPSHOTS), clusterSize, 'Snapshot table');

  const l1Size = u32(36);
  const l1TableOffset = u64(40);
  validateTable(l1TableOffset, BigInt(l1Size), BigInt(C.L1_ENTRY_SIZE), BigInt(C.MAX_L1_SIZE), clusterSize, 'Active L1 table');
  const sizeField = u64(24);
  const l1Needed = sizeToL1(sizeField, clusterBits, l2Bits);
  if (l1Needed > 0x7fffffffn) throw new ImageError('unsupported', 'Image is too big');
  if (BigInt(l1Size) < l1Needed) throw inval('L1 table is too small');

  if (cryptMethod !== C.CRYPT_NONE && cryptMethod !== C.CRYPT_AES && cryptMethod !== C.CRYPT_LUKS) {
    throw unsup(`Unsupported encryption method ${cryptMethod | 0}`);
  }


  const { rawNames, ...extensions } = readExtensions(buf, headerLength, extEnd, { featureTableOnly: false, cryptMethod, autoclear, version, clusterSize });

  let backingFile: string | undefined;
  const backingFileSize = u32(16);
  if (backingFileOffset !== 0n) {
    const off = Number(backingFileOffset);
    if (backingFileSize > Math.min(C.MAX_BACKING_FILE_NAME, clusterSize - off)) throw inval('Backing file name too long');
    const name = cString(buf.subarray(off, off + backingFileSize));
    if (name !== '') {
      backingFile = name;
      rawNames.backingFile = cBytes(buf.subarray(off, off + backingFileSize));
    }
  }

  const header: Qcow2Header = {
    version: version as 2 | 3,
    backingFileOffset: Number(backingFileOffset),
    backingFileSize,
    clusterBits,
    clusterSize,
    size: safe(sizeField, 'Image size'),
    cryptMethod,
    l1Size,
    l1TableOffset: safe(l1TableOffset, 'L1 table offset'),
    refcountTableOffset: safe(refcountTableOffset, 'Refcount table offset'),
    refcountTableClusters,
    nbSnapshots,
    snapshotsOffset: safe(snapshotsOffset, 'Snapshot table offset'),
    incompatibleFeatures: incompat,
    compatibleFeatures: compat,
    autoclearFeatures: autoclear,
    refcountOrder,
    headerLength,
    compressionType,
    unknownFields,
    extensions,
    backingFile,
  };
  rawNamesOf.set(header, rawNames);
  return header;
}

/** report_unsupported_feature: named bits from the table first, the rest as one hex mask. */
export function unsupportedFeatureMessage(table: FeatureName[] | undefined, mask: bigint): string {
  const parts: string[] = [];
  let rest = mask;
  for (const f of table ?? []) {
    if (f.type !== C.FEATURE_TYPE_INCOMPATIBLE || f.bit >= 64) continue;
    const bit = 1n << BigInt(f.bit);
    if (rest & bit) {
      parts.push(f.name);
      rest &= ~bit;
    }
  }
  if (rest !== 0n) parts.push(`Unknown incompatible feature: ${rest.toString(16)}`);
  return `Unsupported qcow2 feature(s): ${parts.join(', ')}`;
}

interface ExtOptions {
  featureTableOnly: boolean;
  cryptMethod: number;
  autoclear: bigint;
  version: number;
  clusterSize: number;
}

/** qcow2_read_extensions over [start, end) of the first cluster. */
function readExtensions(buf: Uint8Array, start: number, end: number, o: ExtOptions): Qcow2Extensions & { rawNames: RawNames } {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const out: Qcow2Extensions & { rawNames: RawNames } = { bitmapsInconsistent: false, unknown: [], rawNames: {} };
  let offset = start;
  while (offset < end) {
    // Bytes past the buffer read as zero (an end marker), as past EOF.
    const magic = offset + 8 <= buf.length ? v.getUint32(offset, false) : 0;
    const len = offset + 8 <= buf.length ? v.getUint32(offset + 4, false) : 0;
    offset += 8;
    if (offset > end || len > end - offset) throw inval('Header extension too large');
    const data = buf.subarray(offset, offset + len);
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    switch (magic) {
      case C.EXT_END:
        return out;
      case C.EXT_BACKING_FORMAT:
        if (o.featureTableOnly) break;
        if (len >= C.MAX_BACKING_FORMAT_LENGTH) {
          throw inval(`ERROR: ext_backing_format: len=${len} too large (>=${C.MAX_BACKING_FORMAT_LENGTH})`);
        }
        out.backingFormat = cString(data);
        out.rawNames.backingFormat = cBytes(data);
        break;
      case C.EXT_FEATURE_TABLE: {
        // QEMU reads the table into a zero-padded buffer and stops at the first empty name.
        const table: FeatureName[] = [];
        for (let p = 0; p < len; p += C.FEATURE_ENTRY_SIZE) {
          const e = new Uint8Array(C.FEATURE_ENTRY_SIZE);
          e.set(data.subarray(p, Math.min(len, p + C.FEATURE_ENTRY_SIZE)));
          if (e[2] === 0) break;
          table.push({ type: e[0]!, bit: e[1]!, name: cString(e.subarray(2, 2 + C.FEATURE_NAME_LENGTH)) });
        }
        out.featureTable = table;
        break;
      }
      case C.EXT_CRYPTO_HEADER: {
        if (o.featureTableOnly) break;
        if (o.cryptMethod !== C.CRYPT_LUKS) throw inval('CRYPTO header extension only expected with LUKS encryption method');
        if (len !== C.CRYPTO_HEADER_EXT_SIZE) {
          throw inval(`CRYPTO header extension size ${len}, but expected size ${C.CRYPTO_HEADER_EXT_SIZE}`);
        }
        const off = dv.getBigUint64(0, false);
        const length = dv.getBigUint64(8, false);
        if (off % BigInt(o.clusterSize) !== 0n) {
          throw inval(`Encryption header offset '${off}' is not a multiple of cluster size '${o.clusterSize}'`);
        }
        out.cryptoHeader = { offset: safe(off, 'Encryption header offset'), length: safe(length, 'Encryption header length') };
        break;
      }
      case C.EXT_BITMAPS: {
        if (o.featureTableOnly) break;
        if (len !== C.BITMAPS_EXT_SIZE) throw inval('bitmaps_ext: Invalid extension length');
        if (!(o.autoclear & BigInt(C.AUTOCLEAR_BITMAPS))) {
          // Modified by a program without bitmap support: QEMU ignores the bitmaps.
          out.bitmapsInconsistent = true;
          break;
        }
        const nb = dv.getUint32(0, false);
        if (dv.getUint32(4, false) !== 0) throw inval('bitmaps_ext: Reserved field is not zero');
        const dirSize = dv.getBigUint64(8, false);
        const dirOffset = dv.getBigUint64(16, false);
        if (nb > C.MAX_BITMAPS) {
          throw inval(`bitmaps_ext: Image has ${nb} bitmaps, exceeding the QEMU supported maximum of ${C.MAX_BITMAPS}`);
        }
        if (nb === 0) throw inval('found bitmaps extension with zero bitmaps');
        if (dirOffset % BigInt(o.clusterSize) !== 0n) throw inval('bitmaps_ext: invalid bitmap directory offset');
        if (dirSize > BigInt(C.MAX_BITMAP_DIRECTORY_SIZE)) {
          throw inval(`bitmaps_ext: bitmap directory size (${dirSize}) exceeds the maximum supported size (${C.MAX_BITMAP_DIRECTORY_SIZE})`);
        }
        out.bitmaps = { nbBitmaps: nb, directorySize: Number(dirSize), directoryOffset: safe(dirOffset, 'Bitmap directory offset') };
        break;
      }
      case C.EXT_DATA_FILE:
        if (o.featureTableOnly) break;
        out.dataFile = cString(data);
        out.rawNames.dataFile = cBytes(data);
        break;
      default:
        if (!o.featureTableOnly) out.unknown.push({ magic, data: data.slice() });
        break;
    }
    offset += (len + 7) & ~7;
  }
  return out;
}

/** Read and parse the header of `storage`: 112 bytes first, then the whole first cluster. */
export async function readHeader(storage: Storage, opts: { writable?: boolean } = {}): Promise<Qcow2Header> {
  const head = new Uint8Array(C.HEADER_V3_LENGTH);
  await storage.read(head, 0);
  // Validates magic, version and cluster_bits before sizing the next read by them.
  const v = new DataView(head.buffer);
  if (v.getUint32(0, false) !== C.QCOW2_MAGIC) return parseHeader(head, opts);
  const bits = v.getUint32(20, false);
  if (bits < C.MIN_CLUSTER_BITS || bits > C.MAX_CLUSTER_BITS) return parseHeader(head, opts);
  const cluster = new Uint8Array(2 ** bits);
  await storage.read(cluster, 0);
  return parseHeader(cluster, opts);
}

/**
 * The first cluster as QEMU's qcow2_update_header writes it: fixed header,
 * unknown header fields, extensions in QEMU's order, end marker, backing
 * file name. Throws if it does not fit in one cluster.
 */
export function serializeHeader(h: Qcow2Header): Uint8Array {
  const cs = h.clusterSize;
  const buf = new Uint8Array(cs);
  const v = new DataView(buf.buffer);
  const fixed = h.version === 2 ? C.HEADER_V2_LENGTH : C.HEADER_V3_LENGTH;
  v.setUint32(0, C.QCOW2_MAGIC, false);
  v.setUint32(4, h.version, false);
  v.setUint32(20, h.clusterBits, false);
  v.setBigUint64(24, BigInt(h.size), false);
  v.setUint32(32, h.cryptMethod, false);
  v.setUint32(36, h.l1Size, false);
  v.setBigUint64(40, BigInt(h.l1TableOffset), false);
  v.setBigUint64(48, BigInt(h.refcountTableOffset), false);
  v.setUint32(56, h.refcountTableClusters, false);
  v.setUint32(60, h.nbSnapshots, false);
  v.setBigUint64(64, BigInt(h.snapshotsOffset), false);
  let pos = fixed;
  if (h.version === 3) {
    v.setBigUint64(72, h.incompatibleFeatures, false);
    v.setBigUint64(80, h.compatibleFeatures, false);
    v.setBigUint64(88, h.autoclearFeatures, false);
    v.setUint32(96, h.refcountOrder, false);
    v.setUint32(100, C.HEADER_V3_LENGTH + h.unknownFields.length, false);
    buf[C.HEADER_COMPRESSION_TYPE_OFFSET] = h.compressionType;
    buf.set(h.unknownFields, pos);
    pos += h.unknownFields.length;
  }
  const enc = new TextEncoder();
  const put = (magic: number, data: Uint8Array): void => {
    const padded = (data.length + 7) & ~7;
    if (pos + 8 + padded > cs) throw new ImageError('unsupported', 'Header extensions do not fit in the first cluster');
    v.setUint32(pos, magic, false);
    v.setUint32(pos + 4, data.length, false);
    buf.set(data, pos + 8);
    pos += 8 + padded;
  };
  // Names as read, byte for byte, unless changed since (see rawNames).
  const nameBytes = (key: keyof RawNames, name: string): Uint8Array => {
    const raw = rawNamesOf.get(h)?.[key];
    return raw && cString(raw) === name ? raw : enc.encode(name);
  };
  const e = h.extensions;
  if (e.backingFormat !== undefined) put(C.EXT_BACKING_FORMAT, nameBytes('backingFormat', e.backingFormat));
  if (e.dataFile !== undefined) put(C.EXT_DATA_FILE, nameBytes('dataFile', e.dataFile));
  if (e.cryptoHeader) {
    const d = new Uint8Array(16);
    const dv = new DataView(d.buffer);
    dv.setBigUint64(0, BigInt(e.cryptoHeader.offset), false);
    dv.setBigUint64(8, BigInt(e.cryptoHeader.length), false);
    put(C.EXT_CRYPTO_HEADER, d);
  }
  if (e.featureTable && e.featureTable.length > 0) {
    const d = new Uint8Array(e.featureTable.length * C.FEATURE_ENTRY_SIZE);
    e.featureTable.forEach((f, i) => {
      d[i * C.FEATURE_ENTRY_SIZE] = f.type;
      d[i * C.FEATURE_ENTRY_SIZE + 1] = f.bit;
      d.set(enc.encode(f.name).subarray(0, C.FEATURE_NAME_LENGTH), i * C.FEATURE_ENTRY_SIZE + 2);
    });
    put(C.EXT_FEATURE_TABLE, d);
  }
  if (e.bitmaps) {
    const d = new Uint8Array(C.BITMAPS_EXT_SIZE);
    const dv = new DataView(d.buffer);
    dv.setUint32(0, e.bitmaps.nbBitmaps, false);
    dv.setBigUint64(8, BigInt(e.bitmaps.directorySize), false);
    dv.setBigUint64(16, BigInt(e.bitmaps.directoryOffset), false);
    put(C.EXT_BITMAPS, d);
  }
  for (const u of e.unknown) put(u.magic, u.data);
  if (pos + 8 > cs) throw new ImageError('unsupported', 'Header extensions do not fit in the first cluster');
  pos += 8; // end marker: magic 0, length 0
  if (h.backingFile !== undefined) {
    const name = nameBytes('backingFile', h.backingFile);
    if (pos + name.length > cs) throw new ImageError('unsupported', 'Backing file name does not fit in the first cluster');
    buf.set(name, pos);
    v.setBigUint64(8, BigInt(pos), false);
    v.setUint32(16, name.length, false);
  }
  return buf;
}
