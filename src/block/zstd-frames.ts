/**
 * Where zstd frames end, read from their headers alone (RFC 8878, section 3.1).
 *
 * A compressed qcow2 cluster holds one frame followed by padding up to the
 * next sector. Whole-buffer decoders (asynchronous bindings, small browser
 * decoders) reject those trailing bytes, so the frame is cut out first: the
 * walk reads the frame header and the 3-byte block headers, never the
 * compressed data, and costs a few steps per 128 KiB block.
 */

const ZSTD_MAGIC = 0xfd2fb528;
const SKIPPABLE_MASK = 0xfffffff0;
const SKIPPABLE_MAGIC = 0x184d2a50;
const FCS_FIELD_SIZES = [0, 2, 4, 8] as const;
const DICT_ID_SIZES = [0, 1, 2, 4] as const;

export interface ZstdFrame {
  /** Offset of the frame's magic number in the buffer. */
  start: number;
  /** Offset just past the frame (after its checksum, if any). */
  end: number;
  /** False for a skippable frame, which holds no data. */
  data: boolean;
  /** The frame's decompressed size when its header records it. */
  contentSize?: number;
}

function u32(src: Uint8Array, at: number): number {
  return (src[at]! | (src[at + 1]! << 8) | (src[at + 2]! << 16) | (src[at + 3]! << 24)) >>> 0;
}

/** The frame starting at `start`, or null if none starts there or it runs past the buffer. */
export function zstdFrameAt(src: Uint8Array, start: number): ZstdFrame | null {
  if (start + 4 > src.length) return null;
  const magic = u32(src, start);
  if ((magic & SKIPPABLE_MASK) >>> 0 === SKIPPABLE_MAGIC) {
    if (start + 8 > src.length) return null;
    const end = start + 8 + u32(src, start + 4);
    return end <= src.length ? { start, end, data: false } : null;
  }
  if (magic !== ZSTD_MAGIC) return null;
  let at = start + 4;
  if (at >= src.length) return null;
  const fhd = src[at++]!;
  if (fhd & 0x08) return null; // reserved bit
  const singleSegment = (fhd >> 5) & 1;
  const fcsSize = FCS_FIELD_SIZES[fhd >> 6]! || (singleSegment ? 1 : 0);
  at += singleSegment ? 0 : 1; // window descriptor
  at += DICT_ID_SIZES[fhd & 3]!;
  if (at + fcsSize > src.length) return null;
  let contentSize: number | undefined;
  if (fcsSize === 1) contentSize = src[at]!;
  else if (fcsSize === 2) contentSize = (src[at]! | (src[at + 1]! << 8)) + 256;
  else if (fcsSize === 4) contentSize = u32(src, at);
  else if (fcsSize === 8) contentSize = u32(src, at) + u32(src, at + 4) * 2 ** 32;
  at += fcsSize;
  for (;;) {
    if (at + 3 > src.length) return null;
    const header = src[at]! | (src[at + 1]! << 8) | (src[at + 2]! << 16);
    const last = header & 1;
    const type = (header >> 1) & 3;
    const size = header >>> 3;
    if (type === 3) return null; // reserved block type
    at += 3 + (type === 1 ? 1 : size); // an RLE block stores one byte
    if (at > src.length) return null;
    if (last) break;
  }
  if (fhd & 0x04) at += 4; // content checksum
  if (at > src.length) return null;
  return { start, end: at, data: true, contentSize };
}
