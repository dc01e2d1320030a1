/**
 * qemu's metadata overlap check ("cached" template): before guest data is
 * written into the image file, make sure the target range holds no
 * metadata. A hit means the tables point where they must not: the image
 * is marked corrupt instead of being damaged further.
 */
import * as C from './constants.js';

type Range = { start: number; end: number };

export interface OverlapSources {
  clusterSize: number;
  l1: () => Range;
  isL2Table: (cluster: number) => boolean;
  refcountTable: () => Range;
  isRefcountBlock: (cluster: number) => boolean;
  snapshotTable: Range | undefined;
  inactiveL1: Range[];
  bitmapDirectory: Range | undefined;
}

const hits = (r: Range | undefined, start: number, end: number): boolean => r !== undefined && r.start < end && start < r.end;

/** The name qemu gives the first metadata structure [start, end) overlaps, if any. */
export function overlappingMetadata(s: OverlapSources, start: number, end: number): string | undefined {
  const cs = s.clusterSize;
  if (start < cs) return 'qcow2_header';
  if (hits(s.l1(), start, end)) return 'active L1 table';
  const first = Math.floor(start / cs);
  const last = Math.floor((end - 1) / cs);
  for (let c = first; c <= last; c++) if (s.isL2Table(c)) return 'active L2 table';
  if (hits(s.refcountTable(), start, end)) return 'refcount table';
  for (let c = first; c <= last; c++) if (s.isRefcountBlock(c)) return 'refcount block';
  if (hits(s.snapshotTable, start, end)) return 'snapshot table';
  if (s.inactiveL1.some((r) => hits(r, start, end))) return 'inactive L1 table';
  if (hits(s.bitmapDirectory, start, end)) return 'bitmap directory';
  return undefined;
}

/** Bytes of a snapshot table entry: the fixed part, extra data, id and name, padded to 8. */
export function snapshotEntrySize(extraDataSize: number, idBytes: number, nameBytes: number): number {
  return Math.ceil((C.SNAPSHOT_HEADER_SIZE + extraDataSize + idBytes + nameBytes) / 8) * 8;
}
