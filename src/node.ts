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
// amend: options of an existing image changed in place (qemu-img amend)
export { amendImageFile, amendOptionHelp, amendOptionsToBag, type AmendOptions, type AmendFileOptions, type AmendFileResult } from './node/amend.js';
