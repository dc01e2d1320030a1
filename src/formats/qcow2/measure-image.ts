/**
 * qemu-img measure for qcow2 targets (qcow2_measure): metadata for the
 * virtual size, plus the clusters a source's contents would allocate.
 */
import type { MeasureResult } from '../../block/format.js';
import type { Image } from '../../block/image.js';
import type { OptionBag } from '../../block/options.js';
import { ImageError } from '../../errors.js';
import { alignUp } from '../../units.js';
import { parseMeasureOptions } from './create-options.js';
import { bitmapsSize, l1TooLarge, preallocSize } from './measure.js';

export async function measureQcow2(bag: OptionBag, source?: Image): Promise<MeasureResult> {
  const o = parseMeasureOptions(bag);
  bag.assertAllUsed();
  let virtualSize = alignUp(o.size ?? 0, o.clusterSize);
  if (l1TooLarge(virtualSize, o.clusterSize, o.extendedL2)) {
    throw new ImageError('bad-argument', 'The image size is too large (try using a larger cluster size)');
  }
  let required = 0;
  if (source) {
    virtualSize = alignUp(source.size, o.clusterSize);
    if (o.backingFile !== undefined) {
      // The new image's backing file may share nothing with the source: count everything.
      required = virtualSize;
    } else {
      required = await allocatedDataBytes(source, o.clusterSize);
    }
  }
  if (o.preallocation === 'full' || o.preallocation === 'falloc') required = virtualSize;
  const refcountOrder = Math.log2(o.refcountBits);
  const fully = luksPayload(o) + preallocSize(virtualSize, o.clusterSize, refcountOrder, o.extendedL2);
  const result: MeasureResult = { required: fully - virtualSize + required, 'fully-allocated': fully };
  const sourceBitmaps = o.version >= 3 && source ? await persistentBitmaps(source) : undefined;
  if (sourceBitmaps) result.bitmaps = bitmapsSize(sourceBitmaps, source!.size, o.clusterSize);
  return result;
}

/**
 * Bytes of clusters that hold data in the source, as qemu counts them:
 * zero runs are skipped; a data run is extended to the end of its cluster.
 */
async function allocatedDataBytes(source: Image, clusterSize: number): Promise<number> {
  let required = 0;
  let offset = 0;
  while (offset < source.size) {
    const e = await source.blockStatus(offset, source.size - offset);
    let pnum = e.length;
    if (!e.zero && e.data && e.present) {
      pnum = alignUp(offset + pnum, clusterSize) - offset;
      required += (offset % clusterSize) + pnum;
    }
    offset += pnum;
  }
  return required;
}

/** LUKS headers are not measured yet: encrypted targets are refused at create. */
function luksPayload(o: { encryptFormat?: string }): number {
  if (o.encryptFormat === 'luks') throw new ImageError('unsupported', 'Measuring LUKS-encrypted targets is not supported');
  return 0;
}

/** The persistent bitmaps of a qcow2 v3 source, or undefined if it cannot hold any. */
async function persistentBitmaps(source: Image): Promise<{ name: string; granularity: number }[] | undefined> {
  if (source.format !== 'qcow2') return undefined;
  const info = await source.info();
  const data = info['format-specific']?.data;
  if (!data || data.compat !== '1.1') return undefined;
  const list = (data.bitmaps ?? []) as { name: string; granularity: number }[];
  return list;
}

