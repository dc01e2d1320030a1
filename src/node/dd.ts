/**
 * qemu-img dd on Node: the input image file opened read-only, the output
 * created in its format with default options and the size dd computes,
 * then ddImage.
 */
import { createFormattedOn } from '../block/create.js';
import { parseCreateOptions } from '../block/create-options.js';
import { findFormat } from '../block/format.js';
import type { Image } from '../block/image.js';
import { ImageError } from '../errors.js';
import { ddImage, planDd, type DdOptions } from '../ops/dd.js';
import { throwIfAborted } from '../ops/operation.js';
import { nodeHost } from './host.js';
import { openImageFile } from './open.js';
import type { SecretMap } from '../block/secrets.js';
import { couldNotOpen, namedFormat, prefixedError } from './errors.js';

export interface DdFileOptions extends DdOptions {
  /** Secrets by id (qemu's --object secret), for images whose options name one. */
  secrets?: SecretMap;
  /** The input's format (-f); probed when absent. */
  format?: string;
  /** The output's format (-O). Default raw. */
  outputFormat?: string;
  /** Read the input even while another process writes it (-U). */
  forceShare?: boolean;
  /** Receives qemu-img's warnings ("IN: cannot skip to specified offset"). */
  onWarning?: (message: string) => void;
}


/**
 * Copy the image file `input` into a new image file `output`, as qemu-img
 * dd does (bs=, count=, skip= are `blockSize`, `count`, `skip`). An
 * existing output is replaced.
 *
 * @example
 * await ddImageFile('disk.qcow2', 'first-mib.raw', { blockSize: 65536, count: 16 });
 */
export async function ddImageFile(input: string, output: string, opts: DdFileOptions = {}): Promise<void> {
  throwIfAborted(opts.signal);
  if (input === '') throw new ImageError('bad-argument', "Could not open '': The 'file' block driver requires a file name");
  const format = namedFormat(input, opts.format);
  let src: Image;
  try {
    src = await openImageFile(input, { format, forceShare: opts.forceShare, secrets: opts.secrets });
  } catch (e) {
    throw couldNotOpen(input, e);
  }
  let dst: Image | undefined;
  try {
    const outFmt = opts.outputFormat ?? 'raw';
    const descriptor = findFormat(outFmt);
    if (!descriptor) throw new ImageError('bad-argument', 'Unknown file format');
    const plan = planDd(src.size, opts);
    try {
      await createFormattedOn(nodeHost, output, { format: descriptor.name, options: parseCreateOptions(descriptor.name, undefined), size: plan.outputSize });
    } catch (e) {
      throw prefixedError(`${output}: error while creating output image: `, e);
    }
    try {
      dst = await openImageFile(output, { format: descriptor.name, writable: true, secrets: opts.secrets });
    } catch (e) {
      throw couldNotOpen(output, e);
    }
    if (plan.skipPastEnd) opts.onWarning?.(`${input}: cannot skip to specified offset`);
    await ddImage(src, dst, opts);
    const closing = dst;
    dst = undefined;
    await closing.close();
  } finally {
    await dst?.close().catch(() => {});
    await src.close().catch(() => {});
  }
}
