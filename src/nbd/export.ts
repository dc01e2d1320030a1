/**
 * What the server exports: one image under a name, with the choices that
 * shape its transmission flags and metadata contexts.
 */
import type { Image } from '../block/image.js';
import type { BitmapBits } from '../block/bitmaps.js';
import { TF } from './protocol.js';

/** A persistent dirty bitmap offered as `qemu:dirty-bitmap:NAME`. */
export interface ExportedBitmap {
  readonly name: string;
  readonly bits: BitmapBits;
}

export interface NbdExport {
  readonly name: string;
  readonly description: string | undefined;
  readonly image: Image;
  /** Advertised size: the image's, aligned down to 512 as qemu-nbd does. */
  readonly size: number;
  readonly readOnly: boolean;
  /** Several clients may connect (qemu-nbd's --shared != 1): CAN_MULTI_CONN. */
  readonly multiConn: boolean;
  /** `qemu:allocation-depth` is offered (qemu-nbd -A). */
  readonly allocationDepth: boolean;
  readonly bitmaps: readonly ExportedBitmap[];
  /** The image's request alignment: INFO_BLOCK_SIZE's minimum when the client asks for block sizes. */
  readonly alignment: number;
  /** TRIM discards and WRITE_ZEROES may release space (qemu's --discard=unmap); otherwise TRIM does nothing. */
  readonly unmap: boolean;
  /** qemu's --detect-zeroes: all-zero writes become write-zeroes (unmap: may release space). */
  readonly detectZeroes: 'off' | 'on' | 'unmap';
  /** Every write-type request is flushed before its reply (writethrough cache modes). */
  readonly flushEachWrite: boolean;
}

/** The export's transmission flags for one client. */
export function transmissionFlags(exp: NbdExport, structured: boolean): number {
  let f = TF.HAS_FLAGS | TF.SEND_FLUSH | TF.SEND_FUA | TF.SEND_CACHE;
  if (exp.readOnly) f |= TF.READ_ONLY;
  else f |= TF.SEND_TRIM | TF.SEND_WRITE_ZEROES | TF.SEND_FAST_ZERO;
  if (exp.multiConn) f |= TF.CAN_MULTI_CONN;
  if (structured) f |= TF.SEND_DF;
  return f;
}
