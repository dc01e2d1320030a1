/**
 * A new refcount width (qemu-img amend -o refcount_bits=N). The new refcount
 * table and blocks are built in clusters the old structures count as used,
 * so until the header names them the old image stays valid (the new
 * clusters at worst leaked). The caller then switches the header in one
 * write and frees the old structures with freeOldRefcounts: a crash in
 * between leaves the new image valid with the old clusters leaked.
 *
 * The work is laid out as qemu lays it out (walks over the old refcount
 * table: allocation walks until nothing new is needed, then one that
 * writes), so the progress it reports moves as qemu's does.
 */
import { ImageError } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import * as C from './constants.js';
import type { Qcow2Header } from './header.js';
import { loadRefcountStore } from './refcount-open.js';
import { setEntryAt, type RefcountStore } from './refcounts.js';

const TWO_32 = 0x1_0000_0000;

/** Where the new structures are, and the old ones to free once the header names the new. */
export interface NewRefcounts {
  tableOffset: number;
  tableClusters: number;
  old: { tableOffset: number; tableClusters: number; blocks: number[] };
}

/** Progress of one walk: `done` of `total` units (qemu's status callback). */
export type WalkProgress = (done: number, total: number) => void;

/**
 * Build refcount structures of width 2^`newOrder` for the image whose
 * header is `h` (clean: no lazy refcounts pending). Nothing the old header
 * names changes except the old refcounts of the clusters taken. Throws
 * qemu's error, before anything is written, when a refcount does not fit.
 */
export async function buildRefcounts(storage: Storage, h: Qcow2Header, newOrder: number, progress?: WalkProgress): Promise<NewRefcounts> {
  const cs = h.clusterSize;
  // A copy: a growth of the old table updates it (and the header on disk) as usual.
  const cur: Qcow2Header = { ...h };
  const store = await loadRefcountStore(storage, cur);
  const perNewBlock = 2 ** (h.clusterBits + 3 - newOrder);
  const blocks: number[] = [];
  let table = { offset: 0, clusters: 0 };
  const walkUnits = (): number => (cur.refcountTableClusters * cs) / C.REFTABLE_ENTRY_SIZE;
  const report = (walk: number, walks: number): void => {
    // One step per old table entry, then the walk's end, as qemu reports them.
    const units = walkUnits();
    if (!progress) return;
    for (let i = 0; i < units; i++) progress(walk * units + i, walks * units);
    progress((walk + 1) * units, walks * units);
  };
  const tooBig = await firstOverflow(store, h, newOrder);
  if (tooBig !== undefined) {
    // qemu finds it during its first walk, having reported the walk up to there.
    const units = walkUnits();
    const upTo = Math.floor(tooBig.cluster / 2 ** (h.clusterBits + 3 - h.refcountOrder));
    for (let i = 0; i <= upTo && i < units; i++) progress?.(i, 3 * units);
    const at = tooBig.cluster * cs;
    throw new ImageError(
      'bad-argument',
      `Cannot decrease refcount entry width to ${2 ** newOrder} bits: Cluster at offset ${at === 0 ? '0' : `0x${at.toString(16)}`} has a refcount of ${tooBig.refcount}`,
    );
  }
  let walk = 0;
  for (;;) {
    const walks = Math.max(walk + 2, 3);
    let allocated = false;
    // The end moves as clusters are taken: the walk sees its own allocations.
    for (let nb = 0; nb * perNewBlock < (await store.endCluster()); nb++) {
      if ((blocks[nb] ?? 0) !== 0) continue;
      if (await anyInUse(store, nb * perNewBlock, perNewBlock)) {
        blocks[nb] = await store.allocate(1);
        allocated = true;
      }
    }
    report(walk++, walks);
    if (!allocated) break;
    if (table.clusters > 0) await store.update(table.offset, table.clusters * cs, -1);
    const clusters = Math.ceil((blocks.length * C.REFTABLE_ENTRY_SIZE) / cs);
    table = { offset: await store.allocate(clusters), clusters };
  }
  // The old refcounts that count the new clusters reach the disk first.
  await store.flushBlocks();
  await storage.flush();
  const end = await store.endCluster();
  for (let nb = 0; nb < blocks.length; nb++) {
    const at = blocks[nb] ?? 0;
    if (at === 0) continue;
    const b = new Uint8Array(cs);
    for (let j = 0; j < perNewBlock && nb * perNewBlock + j < end; j++) {
      const v = await store.get(nb * perNewBlock + j);
      if (v !== 0) setEntryAt(b, j, newOrder, v);
    }
    await storage.write(b, at);
  }
  report(walk, walk + 1);
  const bytes = new Uint8Array(table.clusters * cs);
  const v = new DataView(bytes.buffer);
  blocks.forEach((off, i) => {
    v.setUint32(i * 8, Math.floor((off ?? 0) / TWO_32), false);
    v.setUint32(i * 8 + 4, (off ?? 0) >>> 0, false);
  });
  await storage.write(bytes, table.offset);
  await storage.flush();
  const oldTable = store.tableLocation;
  return {
    tableOffset: table.offset,
    tableClusters: table.clusters,
    old: { tableOffset: oldTable.offset, tableClusters: oldTable.clusters, blocks: await readTable(storage, oldTable.offset, oldTable.clusters * cs) },
  };
}

/**
 * Once the header names the new structures (`h`): the old table and blocks
 * are free. A crash before this leaves them leaked, nothing worse.
 */
export async function freeOldRefcounts(storage: Storage, h: Qcow2Header, old: NewRefcounts['old']): Promise<void> {
  const store = await loadRefcountStore(storage, { ...h });
  for (const off of old.blocks) if (off !== 0) await store.update(off, h.clusterSize, -1);
  await store.update(old.tableOffset, old.tableClusters * h.clusterSize, -1);
  await store.flushBlocks();
  await storage.flush();
}

/** The first cluster whose refcount the new width cannot hold (qemu refuses the change). */
async function firstOverflow(store: RefcountStore, h: Qcow2Header, newOrder: number): Promise<{ cluster: number; refcount: number } | undefined> {
  if (newOrder >= h.refcountOrder) return undefined;
  const limit = 2 ** 2 ** newOrder;
  const end = await store.endCluster();
  for (let c = 0; c < end; c++) {
    const n = await store.get(c);
    if (n >= limit) return { cluster: c, refcount: n };
  }
  return undefined;
}

async function anyInUse(store: RefcountStore, start: number, count: number): Promise<boolean> {
  for (let c = start; c < start + count; c++) if ((await store.get(c)) !== 0) return true;
  return false;
}

async function readTable(storage: Storage, offset: number, bytes: number): Promise<number[]> {
  const b = new Uint8Array(bytes);
  await storage.read(b, offset);
  const v = new DataView(b.buffer);
  const out: number[] = [];
  for (let i = 0; i < bytes; i += 8) out.push(v.getUint32(i, false) * TWO_32 + ((v.getUint32(i + 4, false) & C.REFT_OFFSET_MASK_LO) >>> 0));
  return out;
}
