/**
 * The QED table walk on images built in memory: every geometry including
 * table_size 1 (which QEMU 7.2 cannot open), run merging, invalid entries,
 * and bounded metadata reads for huge sparse images.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { MemoryStorage } from '../../src/io/memory.js';
import type { Storage } from '../../src/io/storage.js';
import type { DriverContext } from '../../src/block/driver.js';
import type { Codecs } from '../../src/block/codecs.js';
import { BlockImage, extents, type Image } from '../../src/block/image.js';
import { isImageError } from '../../src/errors.js';
import { openQed } from '../../src/formats/qed/qed.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

type Cluster = { kind: 'unallocated' } | { kind: 'zero' } | { kind: 'data'; fill: number; gapBefore: boolean };

interface Built {
  bytes: Uint8Array;
  /** Guest contents. */
  model: Uint8Array;
  /** Host offset of each data cluster. */
  hosts: Map<number, number>;
}

const dataByte = (guest: number, fill: number): number => (fill + (guest >>> 9) * 13) & 0xff;

function header(cs: number, ts: number, headerSize: number, l1: number, size: number, features = 0n): Uint8Array {
  const b = new Uint8Array(64);
  const v = new DataView(b.buffer);
  v.setUint32(0, 0x00444551, true);
  v.setUint32(4, cs, true);
  v.setUint32(8, ts, true);
  v.setUint32(12, headerSize, true);
  v.setBigUint64(16, features, true);
  v.setBigUint64(40, BigInt(l1), true);
  v.setBigUint64(48, BigInt(size), true);
  return b;
}

/**
 * Lay out a QED image: header, L1, then per L1 entry its L2 table and data
 * clusters in guest order (or, with `tablesFirst`, every L2 table before any data).
 */
function build(cs: number, ts: number, size: number, clusters: Cluster[], headerSize = 1, tablesFirst = false): Built {
  const entries = (ts * cs) / 8;
  const tableBytes = ts * cs;
  const l1Offset = headerSize * cs;
  let end = l1Offset + tableBytes;
  const writes: Array<[number, Uint8Array]> = [[0, header(cs, ts, headerSize, l1Offset, size)]];
  const model = new Uint8Array(size);
  const hosts = new Map<number, number>();
  const l1 = new DataView(new ArrayBuffer(tableBytes));
  const groups: Array<[number, Cluster[]]> = [];
  for (let l1i = 0; l1i * entries < clusters.length; l1i++) {
    const group = clusters.slice(l1i * entries, (l1i + 1) * entries);
    if (!group.every((c) => c.kind === 'unallocated')) groups.push([l1i, group]);
  }
  const l2Offsets = new Map<number, number>();
  if (tablesFirst) {
    for (const [l1i] of groups) {
      l2Offsets.set(l1i, end);
      end += tableBytes;
    }
  }
  for (const [l1i, group] of groups) {
    if (!tablesFirst) {
      l2Offsets.set(l1i, end);
      end += tableBytes;
    }
    const l2Offset = l2Offsets.get(l1i)!;
    l1.setBigUint64(l1i * 8, BigInt(l2Offset), true);
    const l2 = new DataView(new ArrayBuffer(tableBytes));
    group.forEach((c, j) => {
      const guest = (l1i * entries + j) * cs;
      if (c.kind === 'zero') l2.setBigUint64(j * 8, 1n, true);
      if (c.kind !== 'data') return;
      if (c.gapBefore) end += cs;
      const host = end;
      end += cs;
      hosts.set(guest, host);
      l2.setBigUint64(j * 8, BigInt(host), true);
      const data = new Uint8Array(cs);
      for (let k = 0; k < cs; k++) data[k] = dataByte(guest + k, c.fill);
      writes.push([host, data]);
      model.set(data.subarray(0, Math.max(0, Math.min(cs, size - guest))), guest);
    });
    writes.push([l2Offset, new Uint8Array(l2.buffer)]);
  }
  writes.push([l1Offset, new Uint8Array(l1.buffer)]);
  const bytes = new Uint8Array(end);
  for (const [at, w] of writes) bytes.set(w, at);
  return { bytes, model, hosts };
}

function ctx(storage: Storage): DriverContext {
  return {
    storage,
    writable: false,
    codecs: {} as Codecs,
    metadataOnly: false,
    openDataFile: async () => {
      throw new Error('no data files');
    },
  };
}

async function openBytes(bytes: Uint8Array | Storage): Promise<Image> {
  const storage = bytes instanceof Uint8Array ? new MemoryStorage(bytes, { writable: false }) : bytes;
  return new BlockImage({ driver: await openQed(ctx(storage)), filename: 'mem', backing: null });
}

interface Run {
  start: number;
  length: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

function pushMerged(out: Run[], r: Run): void {
  const last = out[out.length - 1];
  if (
    last &&
    last.start + last.length === r.start &&
    last.present === r.present &&
    last.zero === r.zero &&
    last.data === r.data &&
    (last.offset === undefined) === (r.offset === undefined) &&
    (last.offset === undefined || last.offset + last.length === r.offset)
  ) {
    last.length += r.length;
  } else out.push({ ...r });
}

async function mapOf(img: Image): Promise<Run[]> {
  const out: Run[] = [];
  for await (const e of extents(img)) {
    const r: Run = { start: e.offset, length: e.length, present: e.present, zero: e.zero, data: e.data };
    if (e.hostOffset !== undefined) r.offset = e.hostOffset;
    pushMerged(out, r);
  }
  return out;
}

function expectedMap(cs: number, size: number, clusters: Cluster[], hosts: Map<number, number>): Run[] {
  const out: Run[] = [];
  for (let start = 0; start < size; start += cs) {
    const c = clusters[start / cs] ?? { kind: 'unallocated' };
    const length = Math.min(cs, size - start);
    if (c.kind === 'data') pushMerged(out, { start, length, present: true, zero: false, data: true, offset: hosts.get(start)! });
    else if (c.kind === 'zero') pushMerged(out, { start, length, present: true, zero: true, data: false });
    else pushMerged(out, { start, length, present: false, zero: true, data: false });
  }
  return out;
}

const clusterArb: fc.Arbitrary<Cluster> = fc.oneof(
  { weight: 3, arbitrary: fc.constant<Cluster>({ kind: 'unallocated' }) },
  { weight: 1, arbitrary: fc.constant<Cluster>({ kind: 'zero' }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('data' as const), fill: fc.integer({ min: 0, max: 255 }), gapBefore: fc.boolean() }) },
);

test('random images of every small geometry read and map as built', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.constantFrom(4 * KiB, 8 * KiB),
      fc.constantFrom(1, 2, 4),
      fc.array(clusterArb, { minLength: 1, maxLength: 3000 }),
      fc.integer({ min: 0, max: 7 }),
      fc.array(fc.tuple(fc.nat(), fc.nat({ max: 100_000 })), { maxLength: 8 }),
      fc.boolean(),
      async (cs, ts, clusters, shave, reads, tablesFirst) => {
        const size = Math.max(512, clusters.length * cs - shave * 512);
        const built = build(cs, ts, size, clusters, 1, tablesFirst);
        const img = await openBytes(built.bytes);
        const all = new Uint8Array(size);
        await img.read(0, all);
        assert.ok(Buffer.from(all).equals(Buffer.from(built.model)), 'whole image');
        for (const [at, len] of reads) {
          const off = at % size;
          const part = new Uint8Array(Math.min(len, size - off));
          await img.read(off, part);
          assert.ok(Buffer.from(part).equals(Buffer.from(built.model.subarray(off, off + part.length))), `read ${off}+${part.length}`);
        }
        assert.deepEqual(await mapOf(img), expectedMap(cs, size, clusters, built.hosts));
      },
    ),
    { numRuns: 60 },
  );
});

test('table_size 1: L1 boundaries every 2 MiB with 4K clusters', async () => {
  const cs = 4 * KiB;
  const perTable = 512;
  const clusters: Cluster[] = [];
  for (let i = 0; i < 4 * perTable; i++) {
    // Data runs across each table boundary, zero clusters, holes.
    const k = i % perTable;
    if (k >= perTable - 2 || k < 2) clusters.push({ kind: 'data', fill: i & 0xff, gapBefore: false });
    else if (k === 100) clusters.push({ kind: 'zero' });
    else clusters.push({ kind: 'unallocated' });
  }
  const size = clusters.length * cs;
  const built = build(cs, 1, size, clusters);
  const img = await openBytes(built.bytes);
  const all = new Uint8Array(size);
  await img.read(0, all);
  assert.ok(Buffer.from(all).equals(Buffer.from(built.model)));
  const map = await mapOf(img);
  assert.deepEqual(map, expectedMap(cs, size, clusters, built.hosts));
  // Tables sit between the data clusters, so runs break at table boundaries on the host.
  assert.ok(map.filter((r) => r.data).length >= 4);
});

test('a data run spanning two L2 tables is one mapping when host-contiguous', async () => {
  const cs = 4 * KiB;
  const clusters: Cluster[] = Array.from({ length: 1024 }, () => ({ kind: 'unallocated' }) as Cluster);
  for (let i = 500; i < 524; i++) clusters[i] = { kind: 'data', fill: 1, gapBefore: false };
  const contiguous = await openBytes(build(cs, 1, 1024 * cs, clusters, 1, true).bytes);
  const m = await contiguous.driver.getMapping(500 * cs, 24 * cs);
  assert.deepEqual({ kind: m.kind, length: m.length }, { kind: 'data', length: 24 * cs });
  // With the second table between the two halves on the host, the run stops at the table boundary.
  const split = await openBytes(build(cs, 1, 1024 * cs, clusters).bytes);
  const n = await split.driver.getMapping(500 * cs + 100, 24 * cs);
  assert.deepEqual({ kind: n.kind, length: n.length }, { kind: 'data', length: 12 * cs - 100 });
});

test('unallocated L1 entries are skipped in one step', async () => {
  const cs = 64 * KiB;
  const size = 1024 * GiB;
  const bytes = new Uint8Array(cs * 5);
  bytes.set(header(cs, 4, 1, cs, size));
  const img = await openBytes(bytes);
  const m = await img.driver.getMapping(0, size);
  assert.deepEqual(m, { kind: 'unallocated', length: size });
  assert.deepEqual(await mapOf(img), [{ start: 0, length: size, present: false, zero: true, data: false }]);
});

/** Storage that is mostly holes and remembers the largest read. */
class SparseStorage implements Storage {
  readonly name = 'sparse';
  readonly writable = false;
  largestRead = 0;
  reads = 0;
  constructor(private readonly length: number, private readonly parts: Array<[number, Uint8Array]>) {}
  async size(): Promise<number> {
    return this.length;
  }
  async read(into: Uint8Array, offset: number): Promise<void> {
    this.reads++;
    this.largestRead = Math.max(this.largestRead, into.length);
    into.fill(0);
    for (const [at, bytes] of this.parts) {
      const s = Math.max(at, offset);
      const e = Math.min(at + bytes.length, offset + into.length);
      if (s < e) into.set(bytes.subarray(s - at, e - at), s - offset);
    }
  }
  async write(): Promise<void> {
    throw new Error('read-only');
  }
  async truncate(): Promise<void> {}
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}

const u64 = (v: number): Uint8Array => {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(v), true);
  return b;
};

test('16 MiB tables are read in small pieces, and cached', async () => {
  const cs = MiB;
  const ts = 16;
  const size = 1024 * GiB;
  const l1 = cs;
  const l2 = l1 + ts * cs;
  const data = l2 + ts * cs;
  // Guest cluster 700 GiB / 1 MiB = 716800 sits in L1 entry 0 (each covers 2 TiB).
  const index = (700 * GiB) / cs;
  const storage = new SparseStorage(data + 2 * cs, [
    [0, header(cs, ts, 1, l1, size)],
    [l1, u64(l2)],
    [l2 + index * 8, u64(data)],
    [l2 + (index + 1) * 8, u64(data + cs)],
    [data, new Uint8Array(2 * cs).fill(9)],
  ]);
  const img = await openBytes(storage);
  const map = await mapOf(img);
  assert.deepEqual(map, [
    { start: 0, length: 700 * GiB, present: false, zero: true, data: false },
    { start: 700 * GiB, length: 2 * cs, present: true, zero: false, data: true, offset: data },
    { start: 700 * GiB + 2 * cs, length: size - 700 * GiB - 2 * cs, present: false, zero: true, data: false },
  ]);
  assert.ok(storage.largestRead <= 64 * KiB, `largest metadata read ${storage.largestRead}`);
  const before = storage.reads;
  await img.driver.getMapping(700 * GiB, cs);
  assert.equal(storage.reads, before, 'L2 piece served from the cache');
});

// ---- Invalid entries: EINVAL in QEMU, 'corrupt' here ----

async function rejectsCorrupt(p: Promise<unknown>): Promise<void> {
  await assert.rejects(p, (e: unknown) => isImageError(e, 'corrupt'));
}

function corruptible(): { built: Built; l1Offset: number; l2Offset: number; cs: number } {
  const cs = 4 * KiB;
  const clusters: Cluster[] = [
    { kind: 'data', fill: 1, gapBefore: false },
    { kind: 'data', fill: 2, gapBefore: false },
    { kind: 'data', fill: 3, gapBefore: false },
    { kind: 'zero' },
  ];
  // Second table (L1 entry 1) also holds data, so it can be broken separately.
  for (let i = 4; i < 512; i++) clusters.push({ kind: 'unallocated' });
  clusters.push({ kind: 'data', fill: 4, gapBefore: false });
  const built = build(cs, 1, 1024 * cs, clusters);
  return { built, l1Offset: cs, l2Offset: 2 * cs, cs };
}

function patch(bytes: Uint8Array, at: number, value: bigint): Uint8Array {
  const copy = bytes.slice();
  new DataView(copy.buffer).setBigUint64(at, value, true);
  return copy;
}

test('invalid L2 table offsets in the L1 table', async () => {
  const { built, l1Offset, cs } = corruptible();
  const fileSize = built.bytes.length;
  for (const bad of [1n, 2n, BigInt(cs + 8), 0x100000000n, BigInt(fileSize), 0xffffffffffff0000n]) {
    const img = await openBytes(patch(built.bytes, l1Offset, bad));
    await rejectsCorrupt(img.read(0, new Uint8Array(512)));
    await rejectsCorrupt(mapOf(img));
    // Other tables still read.
    const part = new Uint8Array(cs);
    await img.read(512 * cs, part);
    assert.ok(Buffer.from(part).equals(Buffer.from(built.model.subarray(512 * cs, 513 * cs))));
  }
  // A table inside the header area is refused too.
  const twoHeader = build(cs, 1, 1024 * cs, [{ kind: 'data', fill: 1, gapBefore: false }], 2);
  const img = await openBytes(patch(twoHeader.bytes, 2 * cs, BigInt(cs)));
  await rejectsCorrupt(img.read(0, new Uint8Array(512)));
});

test('invalid data cluster offsets in an L2 table', async () => {
  const { built, l2Offset, cs } = corruptible();
  const fileSize = built.bytes.length;
  for (const bad of [2n, BigInt(cs * 5 + 512), BigInt(fileSize), 0x100000000n, 0xffffffffffff0000n]) {
    // Third cluster broken: the first two still read, and a run stops before it.
    const img = await openBytes(patch(built.bytes, l2Offset + 2 * 8, bad));
    const m = await img.driver.getMapping(0, 4 * cs);
    assert.deepEqual({ kind: m.kind, length: m.length }, { kind: 'data', length: 2 * cs });
    const ok = new Uint8Array(2 * cs);
    await img.read(0, ok);
    assert.ok(Buffer.from(ok).equals(Buffer.from(built.model.subarray(0, 2 * cs))));
    await rejectsCorrupt(img.read(2 * cs, new Uint8Array(512)));
    await rejectsCorrupt(img.read(0, new Uint8Array(4 * cs)));
    await rejectsCorrupt(mapOf(img));
  }
  // A data cluster inside the header area.
  const twoHeader = build(cs, 1, 1024 * cs, [{ kind: 'data', fill: 1, gapBefore: false }], 2);
  const l2 = 3 * cs; // header (2) + L1 (1)
  const img = await openBytes(patch(twoHeader.bytes, l2, BigInt(cs)));
  await rejectsCorrupt(img.read(0, new Uint8Array(512)));
});

test('metadata-only open reads no tables', async () => {
  const { built } = corruptible();
  const storage = new SparseStorage(built.bytes.length, [[0, built.bytes]]);
  const d = await openQed({ ...ctx(storage), metadataOnly: true });
  assert.equal(storage.reads, 1);
  assert.equal(d.size, 1024 * 4 * KiB);
});
