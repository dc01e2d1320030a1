/**
 * qimg's portable core: images in any Storage (memory, a browser file, an
 * HTTP range source), every operation, no Node APIs. `qimg/node` adds files
 * on disk, Node's codecs and Node streams.
 */
import './formats/index.js';

// Errors
export { ImageError, isImageError, type ImageErrorCode } from './errors.js';
export { strerror } from './errno.js';

// Bytes and codecs
export type { Storage } from './io/storage.js';
export { MemoryStorage } from './io/memory.js';
export type { Codecs } from './block/codecs.js';
export { type CacheMode, parseCacheMode, dropsFlushes, flushesEachWrite } from './io/cache.js';

// Images
export { BlockImage, extents, type Image, type Extent, type LayerStatus } from './block/image.js';
export type { ImageInfo, SnapshotInfo, FormatSpecific } from './block/info.js';
export {
  openImage,
  openStorageImage,
  registerOverlayFormat,
  type Host,
  type OpenOptions,
  type OpenStorageOptions,
  type OpenPolicy,
} from './block/open.js';
export { probeFormat, parseFormatName, PROBE_BYTES } from './block/probe.js';
export { imagePermissions, type Permissions, type PermissionRequest } from './block/perms.js';

// Formats
export type { FormatDriver, Mapping, ImageFormat, BackingRef, BackingReader, DriverContext, DriverOpener } from './block/driver.js';
export {
  registerFormat,
  findFormat,
  formatDescriptor,
  registeredFormats,
  type FormatDescriptor,
  type CreateContext,
  type MeasureResult,
} from './block/format.js';

// Creating
export type { CreateImageOptions, Qcow2CreateImageOptions, QedCreateImageOptions, RawCreateImageOptions } from './formats/create-types.js';
export { createImageOn, createFormattedOn, type CreateOnHostRequest } from './block/create.js';
export {
  parseCreateOptions,
  createOptionHelp,
  hasHelpOption,
  optionsToBag,
  allCreateOptions,
  FILE_PROTOCOL_OPTIONS,
  type OptionSpec,
  type OptionType,
} from './block/create-options.js';
export { OptionBag, parseOptionList } from './block/options.js';
import { createImage as createAnyImage } from './block/create.js';
import type { CreateImageOptions } from './formats/create-types.js';
import type { Storage } from './io/storage.js';
import type { CreateContext } from './block/format.js';

/**
 * Write a new, empty image into `storage` (whatever it held is discarded).
 *
 * @example
 * const storage = new MemoryStorage();
 * await createImage(storage, { format: 'qcow2', size: 64 << 20, clusterSize: 65536 });
 */
export const createImage: (storage: Storage, options: CreateImageOptions, ctx?: Partial<CreateContext>) => Promise<void> = createAnyImage;

// Checking
export {
  checkImageStorage,
  checkJson,
  checkExitCode,
  emptyCounts,
  CheckNotSupportedError,
  type CheckResult,
  type CheckCounts,
  type RepairMode,
} from './block/check.js';

// Whole-image operations
export type { OperationOptions } from './ops/operation.js';
export { measureImage, measure, type MeasureImageOptions } from './ops/measure.js';
export { convertImages, ConvertError, totalSize, type ConvertTarget, type ConvertOptions } from './ops/convert.js';
export { imageTarget, storageTarget } from './ops/convert-targets.js';
export { writethroughTarget } from './ops/writethrough.js';
export { rateLimited } from './ops/ratelimit.js';
export { compareImages, CompareFailure, type CompareResult, type CompareOptions } from './ops/compare.js';
export { mapImage, type MapEntry, type MapOptions } from './ops/map.js';
export { bench, type BenchOptions } from './ops/bench.js';
export {
  imageReadableStream,
  imageExtentStream,
  imageWritableStream,
  type ImageChunk,
  type ImageReadOptions,
  type ImageWriteOptions,
} from './ops/streams.js';
export { parseSize } from './units.js';
export {
  convertToStream,
  streamFormats,
  type StreamConvertOptions,
  type StreamWriter,
  type StreamInput,
  type StreamTargetOptions,
} from './ops/convert-stream.js';

// Resize (qemu-img resize, qemu-io truncate)
export { resizeImage, parsePreallocation, type ResizeOptions, type Preallocation } from './ops/resize.js';
// Internal snapshots (qemu-img snapshot, convert -l)
export {
  listSnapshots,
  listSnapshotsOn,
  createSnapshotOn,
  deleteSnapshotOn,
  applySnapshotOn,
  SnapshotError,
  SnapshotLoadError,
  type SnapshotOps,
  type InternalSnapshotRef,
} from './block/snapshot.js';

// Persistent dirty bitmaps
export {
  listBitmaps,
  addBitmap,
  removeBitmap,
  clearBitmap,
  enableBitmap,
  disableBitmap,
  mergeBitmap,
  supportsPersistentBitmaps,
  type DirtyBitmapInfo,
  type AddBitmapOptions,
  type MergeBitmapOptions,
} from './ops/bitmaps.js';
// rebase, dd, commit: whole-image operations
export { rebaseImage, type RebaseOptions } from './ops/rebase.js';
export { ddImage, planDd, type DdOptions, type DdPlan } from './ops/dd.js';
export { commitImage, type CommitOptions } from './ops/commit.js';

// Encryption: the portable crypto core (LUKS1, legacy qcow2 AES, sector ciphers)
export { portableCrypto } from './crypto/portable.js';
export { HASH_ALGS, digestLength, type CryptoProvider, type HashAlg } from './crypto/provider.js';
export {
  CIPHER_ALGS,
  CIPHER_MODES,
  IVGEN_ALGS,
  cipherKeyLength,
  type CipherAlg,
  type CipherMode,
  type IvGenAlg,
  type CipherSpec,
  type SectorCipher,
} from './crypto/sector-cipher.js';
export {
  parseLuksHeader,
  serializeLuksHeader,
  unlockLuks,
  createLuks,
  amendLuksSlots,
  luksAlgorithms,
  MAX_PBKDF2_ITERATIONS,
  type LuksHeader,
  type LuksKeySlot,
  type LuksCreateOptions,
  type CreatedLuks,
  type UnlockedLuks,
  type LuksAmendOptions,
  type LuksAmendResult,
  type ReadAt,
} from './crypto/luks.js';
export { isLuksHeader, LUKS_HEADER_SIZE } from './crypto/luks-header.js';
export { legacyAesCipher } from './crypto/legacy-aes.js';

// amend refcount_bits and size: what a format's amend hook gets from its caller
export type { AmendContext } from './block/format.js';
// Secrets and image options (--object secret, --image-opts)
export { parseOptions, type OptionSyntax, type ParsedOptions } from './block/options.js';
export { parseOpenTarget, openTargetFromOptions, type OpenTarget, type LockingMode } from './block/open-target.js';
export { lookupSecret, requireEncryptionKey, secretBytes, type SecretMap } from './block/secrets.js';
// amend LUKS key slots: a passphrase or how to get it, for amendLuksSlots
export type { LuksSecretSource } from './crypto/luks-amend.js';
// compression levels (a qimg extension) and zstd frame boundaries
export { checkCompressionLevel, parseCompressionLevel, splitCompressionLevel, withCompressionLevel, type CompressionType } from './block/compression-level.js';
export { zstdFrameAt, type ZstdFrame } from './block/zstd-frames.js';
// CAST5: a provider's cipher checked before anything is derived or written; erase passes of a key slot
export { checkCipherAvailable } from './crypto/luks.js';
export { LUKS_ERASE_PASSES } from './crypto/luks-amend.js';

// qemu-io: filename syntaxes (json:, file:) and open options (copy-on-read, discard)
export { parseImageFilename, jsonFilenameOptions, isSyntacticFilename } from './block/open-target.js';
export type { DiscardMode } from './block/open.js';
// remote images: HTTP range storage
export { HttpStorage, httpStats, type HttpStorageOptions, type HttpStats } from './io/http-storage.js';
export { HttpError, type HttpFailure } from './io/http-errors.js';
export { isRemoteName } from './block/open.js';
