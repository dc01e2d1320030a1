/**
 * What a writable open of a v3 image does to autoclear bits it does not
 * know: clears them (the spec's rule for a program that does not maintain
 * the data they guard). qemu does it on every read-write open, so even a
 * repair that finds nothing to fix leaves them cleared.
 */
import type { Storage } from '../../io/storage.js';
import * as C from './constants.js';

/** Autoclear bits qimg maintains: the bitmaps extension and data-file-raw. */
const KNOWN_AUTOCLEAR = BigInt(C.AUTOCLEAR_BITMAPS | C.AUTOCLEAR_DATA_FILE_RAW);

/** Clear the unknown autoclear bits of the header in `storage` (v3 images); true when any were set. */
export async function clearUnknownAutoclearBits(storage: Storage): Promise<boolean> {
  const head = new Uint8Array(96);
  if ((await storage.size()) < head.length) return false;
  await storage.read(head, 0);
  const v = new DataView(head.buffer);
  if (v.getUint32(0, false) !== C.QCOW2_MAGIC || v.getUint32(4, false) < 3) return false;
  const autoclear = v.getBigUint64(88, false);
  if ((autoclear & ~KNOWN_AUTOCLEAR) === 0n) return false;
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, autoclear & KNOWN_AUTOCLEAR, false);
  await storage.write(b, 88);
  await storage.flush();
  return true;
}
