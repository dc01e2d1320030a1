/**
 * qemu-img check for qcow2 (QEMU 7.2's qcow2_co_check: snapshot table,
 * refcounts, OFLAG_COPIED) on the raw image file, with its repair modes,
 * its per-problem messages and its counts.
 *
 * checkQcow2 is one pass (bdrv_check); checkImage is what qemu-img check
 * does with it: repair, then check again without fixing.
 */
import { ImageError, isImageError } from '../../errors.js';
import { strerror } from '../../errno.js';
import type { Storage } from '../../io/storage.js';
import * as C from './constants.js';
import { parseHeader, type Qcow2Header } from './header.js';
import { clusterType, Cluster } from './l2.js';
import { entryAt } from './refcount.js';
import {
  calculateRefcounts,
  CheckFailure,
  CheckState,
  DiskRefcounts,
  hex64,
  readSnapshotRefs,
  RefcountArray,
  type FixMode,
} from './check-refs.js';
import { checkExitCode, emptyCounts, type CheckCounts, type CheckResult } from '../../block/check.js';
import { rebuildRefcountStructure } from './repair.js';
import { clearUnknownAutoclearBits } from './autoclear-open.js';

export type { FixMode } from './check-refs.js';
export type { CheckCounts } from '../../block/check.js';

export interface CheckReport extends CheckCounts {
  /** The lines QEMU prints to stderr during the check, in order. */
  messages: string[];
  /** The refcount structure was found broken beyond per-cluster repair. */
  rebuildNeeded: boolean;
  /** The check stopped (QEMU's negative return): the strerror text for "Check failed: ...". */
  failed?: string;
  /** Error lines QEMU prints with its program name in front (error_report), before "Check failed". */
  errors: string[];
  /** Messages beyond the first 100000, counted but not kept. */
  messagesDropped: number;
}

export interface CheckOptions {
  fix: FixMode;
  /**
   * Most bytes the computed refcounts may take (default 1 GiB). Memory
   * follows the clusters the image references, not the file's length; an
   * image that needs more fails the check with "Cannot allocate memory",
   * as QEMU's does when its allocation fails.
   */
  refcountMemoryLimit?: number;
}

const TWO_32 = 0x1_0000_0000;

/**
 * The header as a check-mode open sees it: no refcount table is allowed
 * and the snapshot table pointer is left to the check to validate.
 */
async function readCheckHeader(storage: Storage): Promise<Qcow2Header> {
  const head = new Uint8Array(C.HEADER_V3_LENGTH);
  await storage.read(head, 0);
  const hv = new DataView(head.buffer);
  const bits = hv.getUint32(20, false);
  if (hv.getUint32(0, false) !== C.QCOW2_MAGIC || bits < C.MIN_CLUSTER_BITS || bits > C.MAX_CLUSTER_BITS) {
    return parseHeader(head);
  }
  const buf = new Uint8Array(2 ** bits);
  await storage.read(buf, 0);
  const v = new DataView(buf.buffer);
  const reftableClusters = v.getUint32(56, false);
  const nbSnapshots = v.getUint32(60, false);
  const snapshotsOffset = v.getBigUint64(64, false);
  if (reftableClusters === 0) v.setUint32(56, 1, false);
  v.setUint32(60, 0, false);
  v.setBigUint64(64, 0n, false);
  const h = parseHeader(buf);
  h.refcountTableClusters = reftableClusters;
  h.nbSnapshots = nbSnapshots;
  h.snapshotsOffset = snapshotsOffset > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(snapshotsOffset);
  return h;
}

/** qcow2_check_read_snapshot_table (the part that does not repair). */
async function readSnapshotTable(st: CheckState): Promise<void> {
  const h = st.header;
  const nb = h.nbSnapshots;
  const off = h.snapshotsOffset;
  let err: [string, string] | undefined;
  if (nb > C.MAX_SNAPSHOTS) err = ['snapshot table too large', 'File too large'];
  else if (off % st.clusterSize !== 0 || off + nb * C.SNAPSHOT_HEADER_SIZE > Number.MAX_SAFE_INTEGER) err = ['snapshot table offset invalid', 'Invalid argument'];
  if (err) {
    st.res.checkErrors++;
    st.errors.push(`ERROR ${err[0]}`);
    throw new CheckFailure(err[1]);
  }
  try {
    await readSnapshotRefs(st, off, nb);
  } catch (e) {
    if (!(e instanceof ImageError)) throw e;
    st.res.checkErrors++;
    st.errors.push(`ERROR failed to read the snapshot table: ${e.message}`);
    throw new CheckFailure('File too large');
  }
}

/**
 * compare_refcounts: stored against computed refcounts, fixing what `fix`
 * allows. Returns the highest cluster in use and whether a rebuild is needed.
 */
async function compareRefcounts(st: CheckState, fix: FixMode): Promise<{ highest: number; rebuild: boolean }> {
  const res = st.res;
  const per = st.perBlock;
  const order = st.header.refcountOrder;
  let highest = 0;
  let rebuild = false;
  const n = st.refs.size;
  // Only blocks with a stored refcount block or a computed reference can
  // differ; the holes of a sparse multi-TiB file are skipped, not walked.
  let nextDisk = 0;
  const nextBlock = (from: number): number => {
    if (nextDisk < from) nextDisk = from;
    while (nextDisk < st.disk.entries && st.disk.blockOffset(nextDisk) === 0) nextDisk++;
    const disk = nextDisk < st.disk.entries ? nextDisk : Infinity;
    return Math.min(disk, Math.floor(st.refs.nextPossiblyUsed(from * per) / per));
  };
  for (let bi = nextBlock(0); bi * per < n; bi = nextBlock(bi + 1)) {
    const start = bi * per;
    let block: Uint8Array | null = null;
    let broken = false;
    try {
      block = await st.disk.blockAt(bi);
    } catch (e) {
      if (!(e instanceof CheckFailure)) throw e;
      broken = true;
    }
    const end = Math.min(n, start + per);
    for (let i = start; i < end; i++) {
      if (broken) {
        st.msg(`Can't get refcount for cluster ${i}: Input/output error`);
        res.checkErrors++;
        continue;
      }
      const r1 = block ? entryAt(block, i - start, order) : 0;
      const r2 = st.refs.get(i);
      if (r1 > 0 || r2 > 0) highest = i;
      if (r1 === r2) continue;
      let fixed: 'leaksFixed' | 'corruptionsFixed' | undefined;
      if (r1 === 0) rebuild = true;
      else if (r1 > r2 && fix !== 'none') fixed = 'leaksFixed';
      else if (r1 < r2 && fix === 'all') fixed = 'corruptionsFixed';
      st.msg(`${fixed ? 'Repairing' : r1 < r2 ? 'ERROR' : 'Leaked'} cluster ${i} refcount=${r1} reference=${r2}`);
      if (fixed) {
        await st.disk.set(i, r2);
        res[fixed]++;
        continue;
      }
      if (r1 < r2) res.corruptions++;
      else res.leaks++;
    }
  }
  return { highest, rebuild };
}

/** check_oflag_copied: COPIED must be set exactly when the refcount is 1 (active tables only). */
async function checkOflagCopied(st: CheckState, fix: FixMode): Promise<void> {
  const res = st.res;
  const repair = fix === 'all' || (fix === 'leaks' && !res.checkErrors && !res.corruptions && !res.leaks);
  const cs = st.clusterSize;
  const l1 = new DataView(st.l1.buffer, st.l1.byteOffset, st.l1.byteLength);
  const getRefcount = async (offset: number): Promise<number | undefined> => {
    try {
      return await st.disk.get(Math.floor(offset / cs));
    } catch (e) {
      if (e instanceof CheckFailure) return undefined;
      throw e;
    }
  };
  for (let i = 0; i < st.l1.length >>> 3; i++) {
    const hi = l1.getUint32(8 * i, false);
    const lo = l1.getUint32(8 * i + 4, false);
    const l2Offset = (hi & C.OFFSET_MASK_HI) * TWO_32 + ((lo & C.OFFSET_MASK_LO) >>> 0);
    if (l2Offset === 0) continue;
    const refcount = await getRefcount(l2Offset);
    if (refcount === undefined) continue;
    const copied = (hi & C.OFLAG_COPIED_HI) !== 0;
    if ((refcount === 1) !== copied) {
      res.corruptions++;
      st.msg(`${repair ? 'Repairing' : 'ERROR'} OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${hex64(hi, lo)} refcount=${refcount}`);
      if (repair) {
        l1.setUint32(8 * i, refcount === 1 ? (hi | C.OFLAG_COPIED_HI) >>> 0 : hi & ~C.OFLAG_COPIED_HI, false);
        try {
          await st.overlapCheck(st.header.l1TableOffset + 8 * i, 8, ['active L1 table']);
        } catch (e) {
          if (e instanceof CheckFailure) res.checkErrors++;
          throw e;
        }
        await st.storage.write(st.l1.subarray(8 * i, 8 * i + 8), st.header.l1TableOffset + 8 * i);
        await st.storage.flush();
        res.corruptions--;
        res.corruptionsFixed++;
      }
    }

    const table = await st.readTable(l2Offset, cs);
    const v = new DataView(table.buffer);
    let dirty = 0;
    for (let j = 0; j < st.l2Entries; j++) {
      const p = j * st.l2EntryBytes;
      const ehi = v.getUint32(p, false);
      const elo = v.getUint32(p + 4, false);
      const t = clusterType(ehi, elo, st.extL2, st.hasDataFile);
      if (t !== Cluster.NORMAL && t !== Cluster.ZERO_ALLOC) continue;
      let rc: number | undefined = 1;
      if (!st.hasDataFile) {
        rc = await getRefcount((ehi & C.OFFSET_MASK_HI) * TWO_32 + ((elo & C.OFFSET_MASK_LO) >>> 0));
        if (rc === undefined) continue;
      }
      if ((rc === 1) !== ((ehi & C.OFLAG_COPIED_HI) !== 0)) {
        res.corruptions++;
        st.msg(`${repair ? 'Repairing' : 'ERROR'} OFLAG_COPIED data cluster: l2_entry=${hex64(ehi, elo)} refcount=${rc}`);
        if (repair) {
          v.setUint32(p, rc === 1 ? (ehi | C.OFLAG_COPIED_HI) >>> 0 : ehi & ~C.OFLAG_COPIED_HI, false);
          dirty++;
        }
      }
    }
    if (dirty > 0) {
      try {
        await st.overlapCheck(l2Offset, cs, ['active L2 table']);
      } catch (e) {
        if (!(e instanceof CheckFailure)) throw e;
        st.msg(`ERROR: Could not write L2 table; metadata overlap check failed: ${e.strerror}`);
        res.checkErrors++;
        throw e;
      }
      await st.storage.write(table, l2Offset);
      res.corruptions -= dirty;
      res.corruptionsFixed += dirty;
    }
  }
}

/** qcow2_check_refcounts. Returns whether a rebuild was found necessary. */
async function checkRefcounts(st: CheckState, fix: FixMode): Promise<boolean> {
  const h = st.header;
  const cs = st.clusterSize;
  st.fileSize = await st.storage.size();
  st.resetBudget();
  const nbClusters = st.clustersOf(st.fileSize);
  if (nbClusters > 0x7fffffff) {
    st.res.checkErrors++;
    throw new CheckFailure('File too large');
  }
  st.res.totalClusters = st.clustersOf(h.size - (h.size % C.SECTOR_SIZE));
  st.refs = new RefcountArray(h.refcountOrder, nbClusters, st.memoryLimit);
  st.disk = await DiskRefcounts.load(st, h.refcountTableOffset, h.refcountTableClusters);
  st.l1 = await st.readTable(h.l1TableOffset, h.l1Size * C.L1_ENTRY_SIZE);

  let rebuild = await calculateRefcounts(st, fix);
  const pre = { ...st.res };
  let cmp = await compareRefcounts(st, 'none');
  rebuild ||= cmp.rebuild;
  let highest = cmp.highest;
  const needed = rebuild;

  if (rebuild && fix === 'all') {
    const old = { ...st.res };
    st.msg('Rebuilding refcount structure');
    await rebuildRefcountStructure(st);
    st.res.corruptions = 0;
    st.res.leaks = 0;
    st.refs.clear();
    await calculateRefcounts(st, 'none');
    // The old structures are leaked now; leaks left after this came from the rebuild itself.
    const saved = st.res;
    st.res = emptyCounts();
    cmp = await compareRefcounts(st, 'leaks');
    highest = cmp.highest;
    if (cmp.rebuild) st.msg('ERROR rebuilt refcount structure is still broken');
    const fresh = st.res.leaks;
    st.res = saved;
    if (st.res.corruptions < old.corruptions) st.res.corruptionsFixed += old.corruptions - st.res.corruptions;
    if (st.res.leaks < old.leaks) st.res.leaksFixed += old.leaks - st.res.leaks;
    st.res.leaks += fresh;
  } else if (fix !== 'none') {
    if (rebuild) {
      st.msg('ERROR need to rebuild refcount structures');
      st.res.checkErrors++;
      throw new CheckFailure('Input/output error');
    }
    if (st.res.leaks || st.res.corruptions) {
      st.res = pre;
      cmp = await compareRefcounts(st, fix);
      highest = cmp.highest;
    }
  }

  await checkOflagCopied(st, fix);
  st.res.imageEndOffset = (highest + 1) * cs;
  return needed;
}

/** Clear incompatible feature bits (dirty, corrupt) in the header, if set. */
async function clearIncompatible(st: CheckState, bits: number): Promise<void> {
  const h = st.header;
  if (h.version !== 3 || (Number(h.incompatibleFeatures & 0xffn) & bits) === 0) return;
  await st.storage.flush();
  h.incompatibleFeatures &= ~BigInt(bits);
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, h.incompatibleFeatures, false);
  await st.storage.write(b, 72);
  await st.storage.flush();
}

/**
 * One check pass over a qcow2 image file (qcow2_co_check), fixing what
 * `fix` allows. Throws ImageError only when the header cannot be parsed
 * (QEMU cannot open the image); everything else is in the report.
 */
export async function checkQcow2(storage: Storage, opts: CheckOptions): Promise<CheckReport> {
  const fix = opts.fix;
  const header = await readCheckHeader(storage);
  const messages: string[] = [];
  const st = new CheckState(storage, header, messages);
  st.fix = fix;
  if (opts.refcountMemoryLimit !== undefined) st.memoryLimit = opts.refcountMemoryLimit;
  let rebuildNeeded = false;
  let failed: string | undefined;
  try {
    st.fileSize = await storage.size();
    st.resetBudget();
    await readSnapshotTable(st);
    rebuildNeeded = await checkRefcounts(st, fix);
    await st.disk.flush();
    if (fix !== 'none' && st.res.checkErrors === 0 && st.res.corruptions === 0) {
      await clearIncompatible(st, C.INCOMPAT_DIRTY);
      await clearIncompatible(st, C.INCOMPAT_CORRUPT);
    }
    await storage.flush();
  } catch (e) {
    // A storage failure (a full or failing disk) stops the check as QEMU's -errno does.
    if (!(e instanceof CheckFailure) && !isImageError(e, 'io')) throw e;
    failed = e instanceof CheckFailure ? e.strerror : strerror(e);
    // Closing the image writes cached refcounts back, unless it was marked corrupt.
    if (!st.fatal && st.disk) {
      try {
        await st.disk.flush();
        await storage.flush();
      } catch (again) {
        // The check has failed already; that failure is the one to report.
        if (!isImageError(again, 'io')) throw again;
      }
    }
  }
  return { ...st.res, messages, errors: st.errors, messagesDropped: st.dropped, rebuildNeeded, failed };
}

/**
 * qemu-img check [-r leaks|all] on a qcow2 image file (img_check): a
 * repairing pass, then, if it repaired anything, a plain second pass whose
 * counts are reported with the first pass's *Fixed numbers.
 */
export async function checkQcow2File(storage: Storage, fix: FixMode = 'none'): Promise<CheckResult & { report: CheckReport }> {
  // -r opens the image read-write, and that open alone clears unknown autoclear bits.
  if (fix !== 'none') await clearUnknownAutoclearBits(storage);
  const first = await checkQcow2(storage, { fix });
  let report = first;
  let repaired: CheckResult['repaired'];
  const messages = [...first.messages];
  if (!first.failed && (first.corruptionsFixed || first.leaksFixed)) {
    repaired = { leaksFixed: first.leaksFixed, corruptionsFixed: first.corruptionsFixed };
    report = await checkQcow2(storage, { fix: 'none' });
    report.leaksFixed = first.leaksFixed;
    report.corruptionsFixed = first.corruptionsFixed;
    messages.push(...report.messages);
  }
  const out: CheckResult & { report: CheckReport } = {
    report,
    counts: report,
    messages,
    errors: report.errors,
    exitCode: checkExitCode(report, report.failed),
  };
  if (report.failed !== undefined) out.failed = report.failed;
  if (repaired) out.repaired = repaired;
  return out;
}

/**
 * What a writable open of an image left dirty (lazy refcounts) does first,
 * as qemu's does: check -r all, which also clears the dirty bit. qemu prints
 * each repair as it makes it; those lines go to `onWarning`, each ending in
 * a newline.
 */
export async function repairDirty(storage: Storage, onWarning?: (message: string) => void): Promise<void> {
  const r = await checkQcow2(storage, { fix: 'all' });
  if (r.failed !== undefined || r.checkErrors > 0) throw new ImageError('corrupt', `Could not repair dirty image: ${r.failed ?? 'Input/output error'}`);
  if (r.messages.length > 0) onWarning?.(r.messages.map((m) => `${m}\n`).join(''));
}
