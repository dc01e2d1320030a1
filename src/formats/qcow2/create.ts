/**
 * Creating qcow2 images as qemu-img does (qcow2_co_create): header in
 * cluster 0, a one-cluster refcount table in cluster 1, refcount block 0 in
 * cluster 2, then the L1 table, exactly as long as the virtual size needs;
 * extensions (backing format, data file, feature names) in qemu's order;
 * preallocation through the regular write path.
 */
import type { SecretMap } from '../../block/secrets.js';
import type { CryptoProvider } from '../../crypto/provider.js';
import { LUKS_CREATE_KEYS, luksHeaderBytes, planEncryption } from './create-encryption.js';
import type { Codecs } from '../../block/codecs.js';
import type { OptionBag } from '../../block/options.js';
import { ImageError } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import { alignUp, divCeil, isPowerOfTwo } from '../../units.js';
import * as C from './constants.js';
import type { Qcow2CreateOptions } from './create-options.js';
import { serializeHeader, type Qcow2Header } from './header.js';
import { l1TooLarge } from './measure.js';
import { openQcow2, type Qcow2Driver } from './qcow2.js';
import { RefcountStore, setEntryAt } from './refcounts.js';

export type { Qcow2CreateOptions } from './create-options.js';

const bad = (msg: string) => new ImageError('bad-argument', msg);

/** Feature names qemu writes into v3 headers (type, bit, name). */
export const FEATURE_NAMES: Array<[number, number, string]> = [
  [0, 0, 'dirty bit'],
  [0, 1, 'corrupt bit'],
  [0, 2, 'external data file'],
  [0, 3, 'compression type'],
  [0, 4, 'extended L2 entries'],
  [1, 0, 'lazy refcounts'],
  [2, 0, 'bitmaps'],
  [2, 1, 'raw external data'],
];

/**
 * Typed parsing of the create options (bad types fail here, before qemu
 * prints its Formatting line); the semantic checks come in createQcow2.
 */
export function parseQcow2CreateOptions(bag: OptionBag): Qcow2CreateOptions & { given: Set<string> } {
  const given = new Set<string>();
  const seen = <T>(key: string, v: T): T => {
    if (bag.has(key)) given.add(key);
    return v;
  };
  const encryption = seen('encryption', bag.bool('encryption', false));
  const encryptFormat = seen('encrypt.format', bag.string('encrypt.format')) ?? (encryption ? 'aes' : undefined);
  const encryptKeySecret = seen('encrypt.key-secret', bag.string('encrypt.key-secret'));
  const encryptOptions: Record<string, string> = {};
  for (const k of LUKS_CREATE_KEYS) {
    const v = seen(`encrypt.${k}`, bag.string(`encrypt.${k}`));
    if (v !== undefined) encryptOptions[k] = v;
  }
  const clusterSize = seen('cluster_size', bag.size('cluster_size', 65536));
  const extendedL2 = seen('extended_l2', bag.bool('extended_l2', false));
  const preallocation = seen('preallocation', bag.string('preallocation') ?? 'off');
  const compressionType = seen('compression_type', bag.string('compression_type') ?? 'zlib');
  const size = seen('size', bag.size('size'));
  const backingFile = seen('backing_file', bag.string('backing_file'));
  const backingFmt = seen('backing_fmt', bag.string('backing_fmt'));
  const dataFile = seen('data_file', bag.string('data_file'));
  const dataFileRaw = seen('data_file_raw', bag.bool('data_file_raw', false));
  const compat = seen('compat', bag.string('compat'));
  const lazyRefcounts = seen('lazy_refcounts', bag.bool('lazy_refcounts', false));
  const refcountBits = seen('refcount_bits', bag.number('refcount_bits', 16));
  bag.assertAllUsed();
  return {
    given,
    size,
    version: compat === '0.10' ? 2 : 3,
    compat,
    clusterSize,
    refcountBits,
    lazyRefcounts,
    extendedL2,
    compressionType: compressionType as 'zlib',
    preallocation: preallocation as 'off',
    backingFile,
    backingFmt,
    dataFile,
    dataFileRaw,
    encryptFormat,
    encryptKeySecret,
    encryptOptions,
  } as Qcow2CreateOptions & { given: Set<string> };
}

/** qemu-img's "Formatting 'FILE', fmt=qcow2 ..." line: given options plus the printed defaults. */
export function qcow2CreateLine(filename: string, o: Qcow2CreateOptions & { given?: Set<string>; compat?: string }, size: number): string {
  const given = o.given ?? new Set<string>();
  const esc = (v: string) => v.replace(/,/g, ',,');
  const parts: string[] = [];
  const put = (key: string, value: string | undefined, always = false) => {
    if (value !== undefined && (always || given.has(key))) parts.push(`${key}=${esc(value)}`);
  };
  put('encryption', given.has('encryption') ? (o.encryptFormat === 'aes' ? 'on' : 'off') : undefined);
  put('encrypt.format', o.encryptFormat);
  put('encrypt.key-secret', o.encryptKeySecret);
  for (const k of LUKS_CREATE_KEYS) {
    const v = o.encryptOptions?.[k];
    // A number option: qemu prints it as a signed 64-bit integer (2^64 - 1 as -1).
    put(`encrypt.${k}`, k === 'iter-time' && v !== undefined && /^\d+$/.test(v) ? String(BigInt.asIntN(64, BigInt(v))) : v);
  }
  put('cluster_size', String(o.clusterSize), true);
  put('extended_l2', o.extendedL2 ? 'on' : 'off', true);
  put('preallocation', o.preallocation);
  put('compression_type', o.compressionType, true);
  put('size', String(size), true);
  put('backing_file', o.backingFile, o.backingFile !== undefined);
  put('backing_fmt', o.backingFmt, o.backingFmt !== undefined);
  put('data_file', o.dataFile);
  put('data_file_raw', o.dataFileRaw ? 'on' : 'off');
  put('compat', o.compat);
  put('lazy_refcounts', o.lazyRefcounts ? 'on' : 'off', true);
  put('refcount_bits', String(o.refcountBits), true);
  return `Formatting '${filename}', fmt=qcow2 ${parts.join(' ')}`;
}

/** qemu's semantic checks, in qemu's order; returns the effective preallocation. */
export function validateQcow2Create(o: Qcow2CreateOptions): Qcow2CreateOptions['preallocation'] {
  const v3 = '(use version=v3 or greater)';
  const pre = preallocationFromString(o.preallocation);
  if (!['zlib', 'zstd'].includes(o.compressionType)) throw bad(`Parameter 'compression-type' does not accept value '${o.compressionType}'`);
  if (!isPow2(o.clusterSize) || o.clusterSize < 512 || o.clusterSize > 2 * 1024 * 1024) {
    throw bad('Cluster size must be a power of two between 512 and 2048k');
  }
  if (o.extendedL2) {
    if (o.version < 3) throw bad(`Extended L2 entries are only supported with compatibility level 1.1 and above ${v3}`);
    if (o.clusterSize < 16384) throw bad('Extended L2 entries are only supported with cluster sizes of at least 16384 bytes');
  }
  if (o.refcountBits > 64 || !isPow2(o.refcountBits)) throw bad('Refcount width must be a power of two and may not exceed 64 bits');
  if (o.version < 3 && o.refcountBits !== 16) {
    throw bad(`Different refcount widths than 16 bits require compatibility level 1.1 or above ${v3}`);
  }
  if (o.backingFile !== undefined && pre !== 'off' && !o.extendedL2) {
    throw bad('Backing file and preallocation can only be used at the same time if extended_l2 is on');
  }
  if (o.backingFmt !== undefined && o.backingFile === undefined) throw bad('Backing format cannot be used without backing file');
  if (o.version < 3 && o.lazyRefcounts) throw bad(`Lazy refcounts only supported with compatibility level 1.1 and above ${v3}`);
  if (o.version < 3 && o.dataFile !== undefined) throw bad(`External data files are only supported with compatibility level 1.1 and above ${v3}`);
  if (o.dataFileRaw && o.dataFile === undefined) throw bad('data-file-raw requires data-file');
  if (o.dataFileRaw && o.backingFile !== undefined) throw bad('Backing file and data-file-raw cannot be used at the same time');
  if (o.version < 3 && o.compressionType !== 'zlib') {
    throw bad(`Non-zlib compression type is only supported with compatibility level 1.1 and above ${v3}`);
  }
  // A raw external data file must stay a valid raw image: its metadata is always preallocated.
  return o.dataFileRaw && pre === 'off' ? 'metadata' : pre;
}

function preallocationFromString(p: string): Qcow2CreateOptions['preallocation'] {
  if (p === 'off' || p === 'metadata' || p === 'falloc' || p === 'full') return p;
  throw bad(`Parameter 'preallocation' does not accept value '${p}'`);
}

const isPow2 = isPowerOfTwo;

export interface CreateDeps {
  codecs: Codecs;
  /** Secrets by id, for encrypt.key-secret. */
  secrets?: SecretMap;
  /** Ciphers and key derivation for an encrypted image. */
  crypto?: CryptoProvider;
  /** Opens (creating if needed) the external data file named in the options. */
  openDataFile?: (name: string) => Promise<Storage>;
}

/**
 * Write a new qcow2 image into `storage` (its old contents are discarded),
 * creating the external data file if one is named, and preallocate as asked.
 * The caller keeps ownership of `storage`.
 */
export async function createQcow2(storage: Storage, o: Qcow2CreateOptions & { size: number }, deps: CreateDeps): Promise<void> {
  const pre = validateQcow2Create(o);
  const encryption = planEncryption(o.encryptFormat, o.encryptKeySecret, o.encryptOptions ?? {}, deps);
  const cs = o.clusterSize;
  const clusterBits = Math.log2(cs);
  const size = alignUp(o.size, 512);
  if (l1TooLarge(size, cs, o.extendedL2)) throw bad('L1 table is too big');
  const refcountOrder = Math.log2(o.refcountBits);

  // Clusters 0-2: header, refcount table, refcount block 0 counting all three.
  await storage.truncate(0);
  const table = new Uint8Array(cs);
  new DataView(table.buffer).setBigUint64(0, BigInt(2 * cs), false);
  const block = new Uint8Array(cs);
  for (let c = 0; c < 3; c++) setEntryAt(block, c, refcountOrder, 1);
  await storage.write(table, cs);
  await storage.write(block, 2 * cs);

  const header: Qcow2Header = emptyHeader(o, clusterBits, refcountOrder, cs);
  const refcounts = await RefcountStore.load({
    storage,
    clusterBits,
    refcountOrder,
    tableOffset: cs,
    tableClusters: 1,
    onTableMoved: async (offset, clusters) => {
      header.refcountTableOffset = offset;
      header.refcountTableClusters = clusters;
      await storage.write(serializeHeader(header), 0);
    },
  });

  // The L1 table: exactly as many entries as the size needs, not padded.
  const l2Entries = cs / (o.extendedL2 ? C.L2_ENTRY_SIZE_EXTENDED : C.L2_ENTRY_SIZE);
  const l1Size = divCeil(divCeil(size, cs), l2Entries);
  if (l1Size > 0) {
    const bytes = l1Size * C.L1_ENTRY_SIZE;
    const offset = await refcounts.allocate(divCeil(bytes, cs));
    await storage.write(new Uint8Array(bytes), offset);
    header.l1Size = l1Size;
    header.l1TableOffset = offset;
  }
  header.size = size;
  if (encryption?.format === 'luks') {
    // The LUKS header and key material in clusters after the L1 table, zero-padded to a cluster (qemu's layout).
    const luks = await luksHeaderBytes(encryption, deps);
    const offset = await refcounts.allocate(divCeil(luks.length, cs));
    const area = new Uint8Array(divCeil(luks.length, cs) * cs);
    area.set(luks);
    await storage.write(area, offset);
    header.cryptMethod = C.CRYPT_LUKS;
    header.extensions.cryptoHeader = { offset, length: luks.length };
  } else if (encryption?.format === 'aes') {
    header.cryptMethod = C.CRYPT_AES;
  }
  await refcounts.flushBlocks();
  await storage.write(serializeHeader(header), 0);
  await storage.flush();

  let data: Storage | undefined;
  if (o.dataFile !== undefined) {
    if (!deps.openDataFile) throw new ImageError('unsupported', 'This host cannot create external data files');
    // qemu creates the data file as a raw image of the virtual size.
    data = await deps.openDataFile(o.dataFile);
    await data.truncate(0);
    await data.truncate(size);
  }
  try {
    if (pre !== 'off' && size > 0) await preallocate(storage, data, pre, deps, encryption?.passphrase);
  } finally {
    await data?.close();
  }
}

/** Storage whose close() does nothing: the caller owns the real one. */
function borrowed(s: Storage): Storage {
  return new Proxy(s, { get: (t, k) => (k === 'close' ? async () => {} : Reflect.get(t, k, t)) }) as Storage;
}

/**
 * Allocate every guest cluster (and the L2 tables) as qemu's preallocation
 * does; `full` also writes the zeros, the other modes leave the file sparse
 * (Node has no fallocate).
 */
async function preallocate(storage: Storage, data: Storage | undefined, mode: 'metadata' | 'falloc' | 'full', deps: CreateDeps, key: Uint8Array | undefined): Promise<void> {
  const driver = (await openQcow2({
    storage: borrowed(storage),
    writable: true,
    codecs: deps.codecs,
    crypto: deps.crypto,
    encryptionKey: key,
    metadataOnly: false,
    dataFile: data ? borrowed(data) : undefined,
    openDataFile: async () => {
      throw new ImageError('invalid', 'no data file');
    },
  })) as Qcow2Driver;
  try {
    const end = await driver.preallocate(mode === 'full');
    const target = data ?? storage;
    if ((await target.size()) < end) await target.truncate(end);
  } finally {
    await driver.close();
  }
}

function emptyHeader(o: Qcow2CreateOptions, clusterBits: number, refcountOrder: number, cs: number): Qcow2Header {
  let incompatible = 0n;
  if (o.dataFile !== undefined) incompatible |= BigInt(C.INCOMPAT_DATA_FILE);
  if (o.compressionType === 'zstd') incompatible |= BigInt(C.INCOMPAT_COMPRESSION);
  if (o.extendedL2) incompatible |= BigInt(C.INCOMPAT_EXTL2);
  const featureTable =
    o.version === 3 && cs > 4096 ? FEATURE_NAMES.map(([type, bit, name]) => ({ type, bit, name })) : undefined;
  const h = {
    version: o.version,
    backingFileOffset: 0,
    backingFileSize: 0,
    clusterBits,
    clusterSize: cs,
    size: 0,
    cryptMethod: C.CRYPT_NONE,
    l1Size: 0,
    l1TableOffset: 0,
    refcountTableOffset: cs,
    refcountTableClusters: 1,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatibleFeatures: incompatible,
    compatibleFeatures: o.lazyRefcounts ? BigInt(C.COMPAT_LAZY_REFCOUNTS) : 0n,
    autoclearFeatures: o.dataFileRaw ? BigInt(C.AUTOCLEAR_DATA_FILE_RAW) : 0n,
    refcountOrder,
    headerLength: o.version === 3 ? C.HEADER_V3_LENGTH : C.HEADER_V2_LENGTH,
    compressionType: o.compressionType === 'zstd' ? C.COMPRESSION_ZSTD : C.COMPRESSION_ZLIB,
    unknownFields: new Uint8Array(0),
    backingFile: o.backingFile,
    extensions: {
      backingFormat: o.backingFile !== undefined ? o.backingFmt : undefined,
      featureTable,
      bitmapsInconsistent: false,
      dataFile: o.dataFile,
      unknown: [],
    },
  };
  return h as unknown as Qcow2Header;
}

