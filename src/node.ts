/**
 * The Node entry point: everything the portable core has, plus image files
 * on disk (locked as qemu locks them), Node's zlib and zstd, and the file
 * operations qemu-img has. `openImageFile('disk.qcow2')` is all most
 * callers need.
 */
export * from './index.js';
export { nodeHost, resolveImplicitPath, createFileStorage } from './node/host.js';
export { openImageFile, type OpenFileOptions } from './node/open.js';
export { createImageFile, type CreateFileOptions } from './node/create.js';
export { checkImageFile, probedRawWarning, type CheckFileOptions, type CheckFileResult } from './node/check.js';
export { convertImageFile, type ConvertFileOptions } from './node/convert.js';
export { nodeCodecs } from './io/codecs.js';
export { FileStorage, type FileOpenOptions } from './io/file.js';
export { onLockWarning, lockingAvailable } from './io/locks.js';
export { imageNodeReadable, imageNodeWritable, type NodeStreamOptions } from './io/node-streams.js';
export { convertToStream } from './node/convert-stream.js';

// Resize (qemu-img resize)
export { resizeImageFile, type ResizeFileOptions } from './node/resize.js';
// Internal snapshots (qemu-img snapshot)
export { listSnapshotsFile, createSnapshotFile, deleteSnapshotFile, applySnapshotFile, type SnapshotFileOptions, type ListSnapshotsFileOptions } from './node/snapshot.js';
// rebase, dd, commit: file-level operations
export { rebaseImageFile, type RebaseFileOptions } from './node/rebase.js';
export { ddImageFile, type DdFileOptions } from './node/dd.js';
export { commitImageFile, type CommitFileOptions } from './node/commit.js';
// amend: options of an existing image changed in place (qemu-img amend)
export { amendImageFile, amendOptionHelp, amendOptionsToBag, type AmendOptions, type AmendFileOptions, type AmendFileResult } from './node/amend.js';

// Encryption: the Node crypto provider (OpenSSL where it has the algorithm)
export { nodeCrypto } from './io/crypto.js';
// Secrets and image options (--object secret, --image-opts)
export { imageAccess, type ImageAccessOptions } from './node/open.js';
// amend LUKS key slots: typed key-slot options for amendImageFile
export type { KeyslotAmendment } from './node/amend.js';
// CAST5: whether OpenSSL's legacy provider (node --openssl-legacy-provider) gives this process CAST5
export { cast5Available, legacyProviderRequested, LEGACY_PROVIDER_FLAG } from './io/cast5.js';

// NBD server (qemu-nbd): serve an image over NBD
export { serveNbd, type ServeNbdOptions, type NbdServerHandle, type NbdListen } from './nbd/server.js';
export type { TlsUpgrade as NbdTlsUpgrade } from './nbd/handshake.js';
export { nbdTls, type NbdTlsCredentials } from './nbd/tls.js';
