/**
 * Metadata contexts for BLOCK_STATUS: `base:allocation` (holes and zeroes
 * across the backing chain), `qemu:allocation-depth` and
 * `qemu:dirty-bitmap:NAME`, with qemu-nbd's query matching and ids.
 */
import type { NbdExport } from './export.js';
import { MAX_EXTENTS, STATE_DIRTY, STATE_HOLE, STATE_ZERO } from './protocol.js';

export const ID_BASE_ALLOCATION = 0;
export const ID_ALLOCATION_DEPTH = 1;
export const ID_FIRST_BITMAP = 2;

/** Selected context ids, in the order replies go out. */
export type MetaSelection = number[];

const BITMAP_PREFIX = 'qemu:dirty-bitmap:';

/**
 * The contexts the queries select. `list`: LIST_META_CONTEXT, where empty
 * leaves select every context of a namespace and no query lists all.
 * Unknown namespaces and names select nothing (not an error).
 */
export function selectContexts(exp: NbdExport, queries: readonly string[], list: boolean): MetaSelection {
  const chosen = new Set<number>();
  const all = (): void => {
    chosen.add(ID_BASE_ALLOCATION);
    qemuAll();
  };
  const qemuAll = (): void => {
    if (exp.allocationDepth) chosen.add(ID_ALLOCATION_DEPTH);
    exp.bitmaps.forEach((_, i) => chosen.add(ID_FIRST_BITMAP + i));
  };
  if (list && queries.length === 0) all();
  for (const q of queries) {
    if (q.startsWith('base:')) {
      const leaf = q.slice(5);
      if (leaf === 'allocation' || (list && leaf === '')) chosen.add(ID_BASE_ALLOCATION);
    } else if (q.startsWith('qemu:')) {
      const leaf = q.slice(5);
      if (list && leaf === '') qemuAll();
      else if (leaf === 'allocation-depth') {
        if (exp.allocationDepth) chosen.add(ID_ALLOCATION_DEPTH);
      } else if (q.startsWith(BITMAP_PREFIX)) {
        const name = q.slice(BITMAP_PREFIX.length);
        exp.bitmaps.forEach((b, i) => {
          if ((list && name === '') || b.name === name) chosen.add(ID_FIRST_BITMAP + i);
        });
      }
    }
  }
  return [...chosen].sort((a, b) => a - b);
}

export function contextName(exp: NbdExport, id: number): string {
  if (id === ID_BASE_ALLOCATION) return 'base:allocation';
  if (id === ID_ALLOCATION_DEPTH) return 'qemu:allocation-depth';
  return BITMAP_PREFIX + exp.bitmaps[id - ID_FIRST_BITMAP]!.name;
}

/** [length, flags] pairs, adjacent runs with the same flags merged. */
export type ExtentList = Array<[number, number]>;

function push(out: ExtentList, length: number, flags: number): void {
  const last = out[out.length - 1];
  if (last && last[1] === flags) last[0] += length;
  else out.push([length, flags]);
}

/**
 * The extents of one context over [offset, offset+length): at most
 * MAX_EXTENTS (1 with `one`), the last one ending at or before the end.
 */
export async function contextExtents(exp: NbdExport, id: number, offset: number, length: number, one: boolean): Promise<ExtentList> {
  const max = one ? 1 : MAX_EXTENTS;
  const out: ExtentList = [];
  const end = offset + length;
  if (id >= ID_FIRST_BITMAP) return bitmapExtents(exp, id - ID_FIRST_BITMAP, offset, end, max);
  let pos = offset;
  while (pos < end) {
    const e = await exp.image.blockStatus(pos, end - pos);
    const n = Math.min(e.length, end - pos);
    if (n <= 0) break;
    const flags = id === ID_BASE_ALLOCATION ? (e.data ? 0 : STATE_HOLE) | (e.zero ? STATE_ZERO : 0) : e.present ? e.depth + 1 : 0;
    const last = out[out.length - 1];
    if (out.length === max && !(last && last[1] === flags)) break;
    push(out, n, flags);
    pos += n;
  }
  return out;
}

function bitmapExtents(exp: NbdExport, index: number, offset: number, end: number, max: number): ExtentList {
  const bits = exp.bitmaps[index]!.bits;
  const g = bits.granularity;
  const out: ExtentList = [];
  let pos = offset;
  while (pos < end) {
    const granule = Math.floor(pos / g);
    const next = Math.min(end, (granule + 1) * g);
    const flags = granule * g < bits.size && bits.isSet(granule) ? STATE_DIRTY : 0;
    const last = out[out.length - 1];
    if (out.length === max && !(last && last[1] === flags)) break;
    push(out, next - pos, flags);
    pos = next;
  }
  return out;
}
