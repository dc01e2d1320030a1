/** Creating image files on Node, as qemu-img create does. */
import { createImageOn } from '../block/create.js';
import { optionsToBag } from '../block/create-options.js';
import type { CreateImageOptions } from '../formats/create-types.js';
import { nodeHost } from './host.js';
import type { SecretMap } from '../block/secrets.js';

export interface CreateFileOptions {
  /** Do not open the backing file (qemu-img create -u): its size must then be given. */
  backingUnsafe?: boolean;
  /** Receives qemu-img's "Formatting 'FILE', fmt=..." line. */
  onFormatting?: (line: string) => void;
  /** Secrets by id for encrypt.key-secret (as qemu's --object secret): id to passphrase. */
  secrets?: SecretMap;
}

/**
 * Create a new image file (an existing file is truncated, unless another
 * process holds it). With `backingFile` and no size, the backing file's size
 * is used, as qemu-img create does.
 *
 * @example
 * await createImageFile('disk.qcow2', { format: 'qcow2', size: 20 * 2 ** 30, compressionType: 'zstd' });
 * await createImageFile('overlay.qcow2', { format: 'qcow2', backingFile: 'disk.qcow2', backingFormat: 'qcow2' });
 */
export async function createImageFile(path: string, options: CreateImageOptions, opts: CreateFileOptions = {}): Promise<void> {
  const { size, ...rest } = options;
  await createImageOn(nodeHost, path, {
    format: options.format,
    options: optionsToBag(options.format, rest),
    size,
    backingUnsafe: opts.backingUnsafe,
    onFormatting: opts.onFormatting,
    secrets: opts.secrets,
  });
}
