/**
 * measure: how large an image of a given format would be, for a virtual
 * size or for the contents of a source image, with qemu-img's algorithm
 * (the target format's own measure, through its descriptor).
 */
import { ImageError } from '../errors.js';
import type { Image } from '../block/image.js';
import { optionsToBag } from '../block/create-options.js';
import { formatDescriptor, type MeasureResult } from '../block/format.js';
import { OptionBag } from '../block/options.js';
import type { OperationOptions } from './operation.js';
import { throwIfAborted } from './operation.js';

export type { MeasureResult } from '../block/format.js';

/**
 * `opts` are the target's -o options (the format's own; protocol options
 * such as nocow are the caller's to drop); `size` is --size; `source` an
 * open image (with its backing chain).
 */
export async function measure(targetFormat: string, opts: OptionBag, size: number | undefined, source?: Image): Promise<MeasureResult> {
  const d = formatDescriptor(targetFormat);
  if (!d.measure) throw new ImageError('unsupported', `Block driver '${targetFormat}' does not support size measurement`);
  if (size !== undefined) opts.set('size', String(size));
  return d.measure(opts, source);
}

export interface MeasureImageOptions extends Pick<OperationOptions, 'signal'> {
  /** The target format. */
  format: string;
  /** An empty image of this virtual size (qemu-img measure --size); or give `source`. */
  size?: number;
  /** An open image whose contents the target would hold. */
  source?: Image;
  /** The target's creation options, typed as for createImage (clusterSize, refcountBits, ...). */
  options?: Readonly<Record<string, unknown>>;
}

/**
 * How many bytes an image of `format` needs: `required` for the source's
 * contents (or an empty image of `size`), `fully-allocated` when every
 * cluster is allocated, and `bitmaps` for a source's persistent bitmaps.
 *
 * @example
 * const { required } = await measureImage({ format: 'qcow2', source: img, options: { clusterSize: 65536 } });
 */
export async function measureImage(req: MeasureImageOptions): Promise<MeasureResult> {
  throwIfAborted(req.signal);
  if ((req.size === undefined) === (req.source === undefined)) throw new ImageError('bad-argument', 'Either size or source must be given');
  const bag = optionsToBag(req.format, req.options ?? {});
  return measure(req.format, bag, req.size, req.source);
}
