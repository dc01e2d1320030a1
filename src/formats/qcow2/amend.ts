/**
 * qemu-img amend for qcow2 (QEMU 7.2's qcow2_amend_options): the options
 * an existing image may change, with qemu's refusals and messages. Header
 * fields change in one write of the first cluster, so a crash leaves either
 * the old header or the new one; a new refcount width is built beside the
 * old structures first (refcount-order.ts), a new size goes through the
 * format's resize, and a downgrade comes last (downgrade.ts).
 */
import type { AmendContext } from '../../block/format.js';
import type { OptionBag } from '../../block/options.js';
import { ImageError } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import { repairDirty } from './check.js';
import * as C from './constants.js';
import { FEATURE_NAMES } from './create.js';
import { checkDowngrade, checkSnapshotsForDowngrade, downgradeQcow2 } from './downgrade.js';
import { readHeader, serializeHeader, type Qcow2Header } from './header.js';
import { AmendProgress } from './amend-progress.js';
import { amendQcow2Keyslots } from './amend-keyslots.js';
import { readLuksAmendText, type LuksAmendText } from '../luks/amend.js';
import { buildRefcounts, freeOldRefcounts, type NewRefcounts } from './refcount-order.js';

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
  /** qemu's compat text (0.10, v2, 1.1, v3), checked once the amendment starts. */
  compat?: string;
  lazyRefcounts?: boolean;
  /** Checked once the amendment starts (a power of two up to 64). */
  refcountBits?: number;
  backingFile?: string;
  backingFormat?: string;
  dataFile?: string;
  dataFileRaw?: boolean;
  /** 0 means unchanged, as in qemu. */
  size?: number;
  /** The key-slot options given (`encrypt.` removed), number syntax checked. */
  encryption?: LuksAmendText;
}

/**
 * The -o list read as qemu's option parser reads it: names and value types.
 * The values' meaning is checked by amendQcow2, as qemu checks it after its
 * progress meter starts.
 */
export function parseQcow2Amendments(bag: OptionBag): Qcow2Amendments {
  const known = new Set(QCOW2_AMEND_HELP.map(([k]) => k));
  for (const k of bag.unused()) {
    if (known.has(k)) continue;
    const hint = CREATE_ONLY.has(k) ? 'This option is only supported for image creation' : undefined;
    throw new ImageError('bad-argument', `Invalid parameter '${k}'`, { hint });
  }
  const a: Qcow2Amendments = {};
  a.compat = bag.string('compat');
  if (bag.has('size')) a.size = bag.size('size', 0);
  if (bag.has('backing_file')) a.backingFile = bag.string('backing_file');
  if (bag.has('backing_fmt')) a.backingFormat = bag.string('backing_fmt');
  const encryption = readLuksAmendText(bag, 'encrypt.');
  if (encryption) a.encryption = encryption;
  if (bag.has('lazy_refcounts')) a.lazyRefcounts = bag.bool('lazy_refcounts', false);
  if (bag.has('refcount_bits')) a.refcountBits = bag.number('refcount_bits', 16);
  if (bag.has('data_file')) a.dataFile = bag.string('data_file');
  if (bag.has('data_file_raw')) a.dataFileRaw = bag.bool('data_file_raw', false);
  return a;
}

/** qemu's reading of the compat text. */
function versionOf(compat: string | undefined): 2 | 3 | undefined {
  if (compat === undefined) return undefined;
  if (compat === 'v2' || compat === '0.10') return 2;
  if (compat === 'v3' || compat === '1.1') return 3;
  throw bad(`Unknown compatibility level ${compat}`);
}

/**
 * Apply `a` to the qcow2 image in `storage` (opened writable), as
 * qcow2_amend_options does and in its order: upgrade, refcount width,
 * header fields, size, downgrade. Each step leaves a valid image behind
 * it, so a failure or crash part way keeps the steps before it.
 */
export async function amendQcow2(storage: Storage, a: Qcow2Amendments, ctx: AmendContext = {}): Promise<void> {
  ctx.onStart?.();
  let h = await readHeader(storage, { writable: true });
  if (h.incompatibleFeatures & BigInt(C.INCOMPAT_DIRTY)) {
    await repairDirty(storage, ctx.onWarning);
    h = await readHeader(storage, { writable: true });
  }
  const oldVersion = h.version;
  const newVersion = versionOf(a.compat) ?? oldVersion;
  if (a.encryption && h.cryptMethod === C.CRYPT_NONE) throw bad("Can't amend encryption options - encryption not present");
  if (a.encryption && h.cryptMethod !== C.CRYPT_LUKS) throw unsupported('Only LUKS encryption options can be amended');
  const oldBits = 2 ** h.refcountOrder;
  const refcountBits = a.refcountBits ?? (newVersion > oldVersion ? 16 : oldBits);
  if (a.refcountBits !== undefined && (refcountBits > 64 || refcountBits <= 0 || (refcountBits & (refcountBits - 1)) !== 0)) {
    throw bad('Refcount width must be a power of two and may not exceed 64 bits');
  }
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
  const newOrder = Math.log2(refcountBits);
  const resize = a.size !== undefined && a.size !== 0 ? a.size : undefined;
  if (newVersion < oldVersion) {
    await checkDowngrade(storage, { ...h, refcountOrder: newOrder });
    // A resize first changes what the snapshots are compared with: checked after it.
    if (resize === undefined) await checkSnapshotsForDowngrade(storage, h);
  }
  if (resize !== undefined && !ctx.resize) throw unsupported('Resizing this image is not supported here');

  const upgrading = newVersion > oldVersion;
  const changingWidth = newOrder !== h.refcountOrder;
  // The key-slot step counts as one of qemu's steps but reports no progress of its own.
  const progress = new AmendProgress(Number(newVersion !== oldVersion) + Number(changingWidth) + Number(a.encryption !== undefined), ctx.onProgress);
  const next: Qcow2Header = { ...h, extensions: { ...h.extensions } };
  let onDisk = serializeHeader(h);
  if (upgrading) {
    upgradeToV3(next);
    // qemu's upgrade reports two steps (its meter prints 0, 50 and 100 for it).
    const up = progress.step('upgrade');
    up(0, 2);
    up(1, 2);
    onDisk = await writeHeaderIfChanged(storage, onDisk, next);
    up(2, 2);
  }
  if (a.encryption) await amendQcow2Keyslots(storage, next, a.encryption, ctx);
  let oldRefcounts: NewRefcounts['old'] | undefined;
  if (changingWidth) {
    const built = await buildRefcounts(storage, next, newOrder, progress.step('refcount-width'));
    next.refcountTableOffset = built.tableOffset;
    next.refcountTableClusters = built.tableClusters;
    next.refcountOrder = newOrder;
    oldRefcounts = built.old;
  }
  if (a.dataFile !== undefined) next.extensions.dataFile = a.dataFile;
  if (a.dataFileRaw === false) next.autoclearFeatures &= ~BigInt(C.AUTOCLEAR_DATA_FILE_RAW);
  if (lazy && newVersion >= 3) next.compatibleFeatures |= BigInt(C.COMPAT_LAZY_REFCOUNTS);
  else next.compatibleFeatures &= ~BigInt(C.COMPAT_LAZY_REFCOUNTS);
  // One header write switches to the new refcounts together with the other fields.
  await writeHeaderIfChanged(storage, onDisk, next);
  if (oldRefcounts) await freeOldRefcounts(storage, next, oldRefcounts);
  if (resize !== undefined) await ctx.resize!(resize);
  // Last, as qemu does: lazy refcounts are off and the image is clean by now.
  if (newVersion < oldVersion) {
    const current = resize !== undefined ? await readHeader(storage, { writable: true }) : next;
    if (resize !== undefined) await checkSnapshotsForDowngrade(storage, current);
    await downgradeQcow2(storage, current, progress.step('downgrade'));
  }
}

/** Write `h` over the header when it differs from `onDisk`; returns what is on disk now. */
async function writeHeaderIfChanged(storage: Storage, onDisk: Uint8Array, h: Qcow2Header): Promise<Uint8Array> {
  const bytes = serializeHeader(h);
  if (bytes.length === onDisk.length && bytes.every((v, i) => v === onDisk[i])) return onDisk;
  await storage.write(bytes, 0);
  await storage.flush();
  return bytes;
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
