/**
 * qemu-img amend for qcow2 (QEMU 7.2's qcow2_amend_options): the options
 * an existing image may change, with qemu's refusals and messages. Every
 * change here is a header rewrite: one write of the first cluster, so a
 * crash leaves either the old header or the new one.
 */
import type { OptionBag } from '../../block/options.js';
import { ImageError } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import { checkQcow2File } from './check.js';
import * as C from './constants.js';
import { FEATURE_NAMES } from './create.js';
import { checkDowngrade, downgradeQcow2 } from './downgrade.js';
import { readHeader, serializeHeader, type Qcow2Header } from './header.js';

/** The options qemu lets amend change, in the order of its `-o help`. */
export const QCOW2_AMEND_HELP: ReadonlyArray<[string, string, string]> = [
  ['backing_file', 'str', 'File name of a base image'],
  ['backing_fmt', 'str', 'Image format of the base image'],
  ['compat', 'str', 'Compatibility level (v2 [0.10] or v3 [1.1])'],
  ['data_file', 'str', 'File name of an external data file'],
  ['data_file_raw', 'bool (on/off)', 'The external data file must stay valid as a raw image'],
  ['encrypt.iter-time', 'num', 'Time to spend in PBKDF in milliseconds'],
  ['encrypt.keyslot', 'num', 'Select a single keyslot to modify explicitly'],
  ['encrypt.new-secret', 'str', 'New secret to set in the matching keyslots. Empty string to erase'],
  ['encrypt.old-secret', 'str', 'Select all keyslots that match this password'],
  ['encrypt.state', 'str', 'Select new state of affected keyslots (active/inactive)'],
  ['lazy_refcounts', 'bool (on/off)', 'Postpone refcount updates'],
  ['refcount_bits', 'num', 'Width of a reference count entry in bits'],
  ['size', 'size', 'Virtual disk size'],
];

/** Create options qemu knows for qcow2 but refuses to amend. */
const CREATE_ONLY = new Set([
  'encryption', 'encrypt.format', 'encrypt.key-secret', 'encrypt.cipher-alg', 'encrypt.cipher-mode',
  'encrypt.ivgen-alg', 'encrypt.ivgen-hash-alg', 'encrypt.hash-alg', 'cluster_size', 'extended_l2',
  'preallocation', 'compression_type', 'nocow', 'extent_size_hint',
]);

const bad = (m: string): ImageError => new ImageError('bad-argument', m);
const unsupported = (m: string): ImageError => new ImageError('unsupported', m);

/** The typed amendments, as amendImageFile takes them. */
export interface Qcow2Amendments {
  version?: 2 | 3;
  lazyRefcounts?: boolean;
  refcountBits?: number;
  backingFile?: string;
  backingFormat?: string;
  dataFile?: string;
  dataFileRaw?: boolean;
  size?: number;
}

/** The -o list read with qemu's checks, in the order qemu reports them. */
export function parseQcow2Amendments(bag: OptionBag): Qcow2Amendments {
  const known = new Set(QCOW2_AMEND_HELP.map(([k]) => k));
  for (const k of bag.unused()) {
    if (known.has(k)) continue;
    const hint = CREATE_ONLY.has(k) ? 'This option is only supported for image creation' : undefined;
    throw new ImageError('bad-argument', `Invalid parameter '${k}'`, { hint });
  }
  const a: Qcow2Amendments = {};
  const compat = bag.string('compat');
  if (compat !== undefined) {
    if (compat === 'v2' || compat === '0.10') a.version = 2;
    else if (compat === 'v3' || compat === '1.1') a.version = 3;
    else throw bad(`Unknown compatibility level ${compat}`);
  }
  if (bag.has('size')) a.size = bag.size('size', 0);
  if (bag.has('backing_file')) a.backingFile = bag.string('backing_file');
  if (bag.has('backing_fmt')) a.backingFormat = bag.string('backing_fmt');
  for (const k of ['encrypt.iter-time', 'encrypt.keyslot', 'encrypt.new-secret', 'encrypt.old-secret', 'encrypt.state']) {
    if (bag.has(k)) throw unsupported('Changing the encryption keyslots is not supported');
  }
  if (bag.has('lazy_refcounts')) a.lazyRefcounts = bag.bool('lazy_refcounts', false);
  if (bag.has('refcount_bits')) {
    const v = bag.number('refcount_bits', 16);
    if (v > 64 || v === 0 || (v & (v - 1)) !== 0) throw bad('Refcount width must be a power of two and may not exceed 64 bits');
    a.refcountBits = v;
  }
  if (bag.has('data_file')) a.dataFile = bag.string('data_file');
  if (bag.has('data_file_raw')) a.dataFileRaw = bag.bool('data_file_raw', false);
  return a;
}

/**
 * Apply `a` to the qcow2 image in `storage` (opened writable), as
 * qcow2_amend_options does. Changes qimg cannot make yet are refused before
 * anything is written.
 */
export async function amendQcow2(storage: Storage, a: Qcow2Amendments, onProgress?: (done: number, total: number) => void): Promise<void> {
  let h = await readHeader(storage, { writable: true });
  if (h.incompatibleFeatures & BigInt(C.INCOMPAT_DIRTY)) {
    // A writable open of a dirty image repairs its refcounts first, as qemu's does.
    await checkQcow2File(storage, 'all');
    h = await readHeader(storage, { writable: true });
  }
  const oldVersion = h.version;
  const newVersion = a.version ?? oldVersion;
  const refcountBits = a.refcountBits ?? 1 << h.refcountOrder;
  const lazy = a.lazyRefcounts ?? (h.compatibleFeatures & BigInt(C.COMPAT_LAZY_REFCOUNTS)) !== 0n;
  const hasDataFile = (h.incompatibleFeatures & BigInt(C.INCOMPAT_DATA_FILE)) !== 0n;
  const dataFileIsRaw = (h.autoclearFeatures & BigInt(C.AUTOCLEAR_DATA_FILE_RAW)) !== 0n;

  if (a.backingFile !== undefined || a.backingFormat !== undefined) {
    // qemu compares both names as given (an absent one as none) with the image's.
    if (a.backingFile !== h.backingFile || a.backingFormat !== h.extensions.backingFormat) {
      throw new ImageError('bad-argument', 'Cannot amend the backing file', { hint: "You can use 'qemu-img rebase' instead." });
    }
  }
  if (a.dataFile !== undefined && !hasDataFile) throw bad('data-file can only be set for images that use an external data file');
  if (a.dataFileRaw && !dataFileIsRaw) throw bad('data-file-raw cannot be set on existing images');
  if (newVersion < 3 && a.refcountBits !== undefined && refcountBits !== 16) {
    throw bad('Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)');
  }
  if (newVersion < 3 && a.lazyRefcounts === true) {
    throw bad('Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)');
  }
  if (refcountBits !== 1 << h.refcountOrder) throw unsupported('Changing the refcount width is not supported by qimg yet');
  if (a.size !== undefined && a.size !== h.size) throw unsupported('Resizing with amend is not supported by qimg yet; use qimg resize');
  if (newVersion < oldVersion) await checkDowngrade(storage, h);

  const next: Qcow2Header = { ...h, extensions: { ...h.extensions } };
  if (newVersion > oldVersion) upgradeToV3(next);
  if (a.dataFile !== undefined) next.extensions.dataFile = a.dataFile;
  if (a.dataFileRaw === false) next.autoclearFeatures &= ~BigInt(C.AUTOCLEAR_DATA_FILE_RAW);
  if (lazy && newVersion >= 3) next.compatibleFeatures |= BigInt(C.COMPAT_LAZY_REFCOUNTS);
  else next.compatibleFeatures &= ~BigInt(C.COMPAT_LAZY_REFCOUNTS);
  // An upgrade reports two steps, as qemu's does (its meter prints 0, 50 and 100 for it).
  if (newVersion > oldVersion) onProgress?.(0, 2);
  if (newVersion > oldVersion) onProgress?.(1, 2);
  if (!sameHeader(h, next)) {
    await storage.write(serializeHeader(next), 0);
    await storage.flush();
  }
  if (newVersion > oldVersion) onProgress?.(2, 2);
  // Last, as qemu does: lazy refcounts are off and the image is clean by now.
  if (newVersion < oldVersion) await downgradeQcow2(storage, next, onProgress);
}

/** v2 → v3: the v3 fields at their defaults and qemu's feature name table. */
function upgradeToV3(h: Qcow2Header): void {
  h.version = 3;
  h.incompatibleFeatures = 0n;
  h.compatibleFeatures = 0n;
  h.autoclearFeatures = 0n;
  h.refcountOrder = 4;
  h.headerLength = C.HEADER_V3_LENGTH;
  h.compressionType = C.COMPRESSION_ZLIB;
  h.extensions.featureTable = FEATURE_NAMES.map(([type, bit, name]) => ({ type, bit, name }));
}

function sameHeader(a: Qcow2Header, b: Qcow2Header): boolean {
  const x = serializeHeader(a);
  const y = serializeHeader(b);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}
