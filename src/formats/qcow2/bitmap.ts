/**
 * The persistent dirty bitmap directory (spec: Bitmaps), read for info as
 * QEMU's bitmap_list_load does, with its checks and messages.
 */
import { ImageError } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import * as C from './constants.js';
import type { BitmapsExtension } from './header.js';
import { utf8 } from './text.js';

export interface BitmapEntry {
  name: string;
  tableOffset: number;
  tableSize: number;
  flags: number;
  type: number;
  granularityBits: number;
}

/** What qemu-img info prints per bitmap. */
export interface BitmapInfo {
  name: string;
  granularity: number;
  flags: string[];
}

const inval = (m: string): ImageError => new ImageError('invalid', m);

export async function readBitmapDirectory(
  storage: Storage,
  ext: BitmapsExtension,
  clusterSize: number,
  imageSize: number,
): Promise<BitmapEntry[]> {
  if (ext.directorySize === 0) throw inval('Requested bitmap directory size is zero');
  if (ext.directorySize > C.MAX_BITMAP_DIRECTORY_SIZE) throw inval('Requested bitmap directory size is too big');
  const dir = new Uint8Array(ext.directorySize);
  await storage.read(dir, ext.directoryOffset);
  const v = new DataView(dir.buffer);
  const out: BitmapEntry[] = [];
  let p = 0;
  const broken = (): ImageError => inval('Broken bitmap directory');
  while (p < dir.length) {
    if (p + C.BITMAP_DIR_ENTRY_SIZE > dir.length) throw broken();
    if (out.length + 1 > ext.nbBitmaps) throw inval('More bitmaps found than specified in header extension');
    const tableOffset = v.getBigUint64(p, false);
    const tableSize = v.getUint32(p + 8, false);
    const flags = v.getUint32(p + 12, false);
    const type = dir[p + 16]!;
    const granularityBits = dir[p + 17]!;
    const nameSize = v.getUint16(p + 18, false);
    const extra = v.getUint32(p + 20, false);
    const next = p + ((C.BITMAP_DIR_ENTRY_SIZE + extra + nameSize + 7) & ~7);
    if (next > dir.length) throw broken();
    const nameStart = p + C.BITMAP_DIR_ENTRY_SIZE + extra;
    const name = utf8(dir.subarray(nameStart, nameStart + nameSize));
    if (extra !== 0) throw inval('Bitmap extra data is not supported');
    const bad =
      tableSize === 0 ||
      tableOffset === 0n ||
      tableOffset % BigInt(clusterSize) !== 0n ||
      granularityBits > C.BME_MAX_GRANULARITY_BITS ||
      granularityBits < C.BME_MIN_GRANULARITY_BITS ||
      (flags & C.BME_RESERVED_FLAGS) !== 0 ||
      nameSize > C.BME_MAX_NAME_SIZE ||
      type !== C.BITMAP_TYPE_DIRTY_TRACKING ||
      tableSize * clusterSize > C.BME_MAX_PHYS_SIZE ||
      imageSize > tableSize * clusterSize * 8 * 2 ** granularityBits;
    if (bad) throw inval(`Bitmap '${name}' doesn't satisfy the constraints`);
    out.push({ name, tableOffset: Number(tableOffset), tableSize, flags, type, granularityBits });
    p = next;
  }
  if (out.length !== ext.nbBitmaps) throw inval('Less bitmaps found than specified in header extension');
  return out;
}

export function bitmapInfo(b: BitmapEntry): BitmapInfo {
  const flags: string[] = [];
  if (b.flags & C.BME_FLAG_IN_USE) flags.push('in-use');
  if (b.flags & C.BME_FLAG_AUTO) flags.push('auto');
  return { name: b.name, granularity: 2 ** b.granularityBits, flags };
}

/** The directory as the spec lays it out: each entry, its name, padding to 8 bytes. */
export function serializeBitmapDirectory(entries: readonly BitmapEntry[]): Uint8Array {
  const enc = new TextEncoder();
  const names = entries.map((e) => enc.encode(e.name));
  let size = 0;
  for (const n of names) size += (C.BITMAP_DIR_ENTRY_SIZE + n.length + 7) & ~7;
  const out = new Uint8Array(size);
  const v = new DataView(out.buffer);
  let p = 0;
  entries.forEach((e, i) => {
    const name = names[i]!;
    v.setBigUint64(p, BigInt(e.tableOffset), false);
    v.setUint32(p + 8, e.tableSize, false);
    v.setUint32(p + 12, e.flags, false);
    out[p + 16] = e.type;
    out[p + 17] = e.granularityBits;
    v.setUint16(p + 18, name.length, false);
    v.setUint32(p + 20, 0, false);
    out.set(name, p + C.BITMAP_DIR_ENTRY_SIZE);
    p += (C.BITMAP_DIR_ENTRY_SIZE + name.length + 7) & ~7;
  });
  return out;
}
