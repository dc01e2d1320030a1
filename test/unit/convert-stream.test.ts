/**
 * The streamed qcow2's layout arithmetic (refcount sizing at block and
 * table boundaries, payload placement under narrow refcounts, the kept
 * payload arena) and convertToStream's cancellation, on in-memory images.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import '../../src/formats/index.js';
import type { Image } from '../../src/block/image.js';
import { isImageError } from '../../src/errors.js';
import { nodeCodecs } from '../../src/io/codecs.js';
import { convertToStream } from '../../src/ops/convert-stream.js';
import { AllocationList, computeLayout, PlacementWalker } from '../../src/formats/qcow2/stream-layout.js';
import { KeptPayloads } from '../../src/formats/qcow2/stream-scan.js';
import { parseHeader } from '../../src/formats/qcow2/header.js';
import { bytesImage } from '../helpers/tools.js';

const divCeil = (a: number, b: number) => Math.ceil(a / b);

test('refcount blocks and table cover every host cluster, and no fewer would', () => {
  for (const [cs, bits] of [[512, 64], [512, 16], [4096, 64], [65536, 16]] as const) {
    const perBlock = (cs * 8) / bits;
    // Data sizes around the points where one more cluster needs one more refcount block
    // (and, for small clusters, one more refcount table cluster).
    const probes = new Set<number>();
    for (let k = 0; k < 40; k++) for (let d = -4; d <= 4; d++) probes.add(Math.max(0, k * perBlock + d));
    for (const k of [63, 64, 65, 127, 128, 129]) for (let d = -3; d <= 3; d++) probes.add(Math.max(0, k * perBlock + d));
    for (const dataClusters of probes) {
      const l2Tables = Math.min(3, dataClusters);
      const size = Math.max(512, dataClusters * cs);
      const l = computeLayout({ clusterSize: cs, size, refcountBits: bits, l2Tables, dataClusters });
      const what = `cs=${cs} bits=${bits} data=${dataClusters}`;
      assert.equal(l.refcountsPerBlock, perBlock);
      assert.equal(l.totalClusters, 1 + l.refcountTableClusters + l.refcountBlocks + l.l1Clusters + l2Tables + dataClusters, what);
      assert.ok(l.refcountBlocks * perBlock >= l.totalClusters, `blocks cover the file: ${what}`);
      assert.ok(l.refcountTableClusters * (cs / 8) >= l.refcountBlocks, `table covers the blocks: ${what}`);
      // Least fixed point: with one block fewer (and the table that needs), the file would not be covered.
      const fewer = l.refcountBlocks - 1;
      const fewerTable = Math.max(1, divCeil(fewer * 8, cs));
      const fixed = 1 + l.l1Clusters + l2Tables + dataClusters;
      assert.ok(fewer * perBlock < fixed + fewerTable + fewer, `minimal: ${what}`);
      assert.equal(l.dataCluster, 1 + l.refcountTableClusters + l.refcountBlocks + l.l1Clusters + l2Tables);
    }
  }
});

test('compressed payloads pack byte-tight, across cluster boundaries, but never past the refcount limit', () => {
  const cs = 4096;
  const sizes = [100, 3000, 1500, 4000, 50, 50, 50, 0, 2000, 4095, 10];
  const place = (maxRef: number) => {
    const alloc = new AllocationList(true);
    sizes.forEach((s, i) => alloc.push(i, s));
    const w = new PlacementWalker(alloc, cs, maxRef);
    const out = [];
    for (let p = w.next(); p; p = w.next()) out.push(p);
    return out;
  };
  const refs = (ps: ReturnType<typeof place>) => {
    const m = new Map<number, number>();
    for (const p of ps) for (let c = Math.floor(p.offset / cs); c <= Math.floor((p.offset + p.length - 1) / cs); c++) m.set(c, (m.get(c) ?? 0) + 1);
    return m;
  };
  const wide = place(65535);
  // Tight: each compressed payload starts where the previous ended; the plain one starts on a boundary.
  for (let i = 1; i < wide.length; i++) {
    const prev = wide[i - 1]!;
    const p = wide[i]!;
    if (!p.compressed) assert.equal(p.offset % cs, 0);
    else assert.equal(p.offset, prev.compressed ? prev.offset + prev.length : prev.offset + cs);
  }
  assert.deepEqual(wide.map((p) => p.length), sizes.map((s) => s || cs));
  for (const maxRef of [1, 3]) {
    const ps = place(maxRef);
    for (const [c, n] of refs(ps)) assert.ok(n <= maxRef, `cluster ${c} has ${n} references, limit ${maxRef}`);
    // Payloads never overlap.
    for (let i = 1; i < ps.length; i++) assert.ok(ps[i]!.offset >= ps[i - 1]!.offset + ps[i - 1]!.length);
  }
  assert.ok(Math.max(...refs(wide).values()) > 3, 'the wide case really shares clusters');
});

test('kept payloads come back in order, byte for byte; the budget keeps a prefix', () => {
  const kept = new KeptPayloads(10_000, 4096);
  const payloads = Array.from({ length: 30 }, (_, i) => new Uint8Array(100 + ((i * 379) % 900)).fill(i + 1));
  payloads.forEach((p, i) => kept.offer(i, i === 4 ? undefined : p));
  assert.ok(kept.upTo > 5 && kept.upTo < 30, `a prefix is kept (${kept.upTo})`);
  assert.ok(kept.heldBytes <= 10_000);
  for (let i = 0; i < kept.upTo; i++) {
    if (i === 4) continue;
    assert.deepEqual(kept.take(payloads[i]!.length), payloads[i]);
  }
  const dropped = new KeptPayloads(1 << 20, 4096);
  dropped.offer(1, payloads[0]); // index 0 was never offered: nothing after a gap is kept
  assert.equal(dropped.upTo, 0);
});

test('the stream starts with a qcow2 header for the options given', async () => {
  const src = bytesImage(new Uint8Array(3 * 65536 + 512).fill(9));
  const reader = convertToStream([src], { clusterSize: 4096, version: 2, codecs: nodeCodecs }).getReader();
  const first = (await reader.read()).value!;
  const h = parseHeader(first);
  assert.equal(h.version, 2);
  assert.equal(h.clusterSize, 4096);
  assert.equal(h.size, 3 * 65536 + 512);
  await reader.cancel();
});

/** An image whose reads are counted and can be made to wait. */
function countingImage(size: number): { img: Image; reads: () => number } {
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i += 4096) bytes[i] = (i / 4096) & 0xff | 1;
  const inner = bytesImage(bytes);
  let reads = 0;
  const img = Object.create(inner) as Image;
  img.read = async (offset, into) => {
    reads++;
    await new Promise((r) => setTimeout(r, 1));
    return inner.read(offset, into);
  };
  return { img, reads: () => reads };
}

test('abort: the stream errors with ImageError aborted and no read starts afterwards', async () => {
  const { img, reads } = countingImage(64 << 20);
  const ac = new AbortController();
  const reader = convertToStream([img], { signal: ac.signal, codecs: nodeCodecs, parallel: 2 }).getReader();
  const pending = reader.read();
  // Let the first pass get going, then cancel.
  while (reads() < 3) await new Promise((r) => setTimeout(r, 1));
  ac.abort();
  await assert.rejects(pending, (e: unknown) => isImageError(e, 'aborted'));
  await assert.rejects(reader.read(), (e: unknown) => isImageError(e, 'aborted'));
  const atAbort = reads();
  await new Promise((r) => setTimeout(r, 100));
  // Reads already in flight when the signal fired may finish; none starts afterwards.
  assert.ok(reads() <= atAbort + 2, `reads went on after the abort: ${atAbort} -> ${reads()}`);
  assert.ok(reads() < 64, 'the conversion did not run to the end');
});

test('abort before the first pull: nothing is read', async () => {
  const { img, reads } = countingImage(1 << 20);
  const ac = new AbortController();
  ac.abort();
  const reader = convertToStream([img], { signal: ac.signal }).getReader();
  await assert.rejects(reader.read(), (e: unknown) => isImageError(e, 'aborted'));
  assert.equal(reads(), 0);
});

test('unsupported options and formats error the stream cleanly', async () => {
  const src = bytesImage(new Uint8Array(4096));
  const err = async (opts: Parameters<typeof convertToStream>[1], code: string) => {
    await assert.rejects(convertToStream([src], opts).getReader().read(), (e: unknown) => isImageError(e) && e.code === code);
  };
  await err({ format: 'qed' }, 'unsupported');
  await err({ clusterSize: 1000 }, 'bad-argument');
  await err({ version: 2, compressionType: 'zstd' }, 'bad-argument');
  await err({ compress: true, codecs: { inflateRaw: async () => true, zstdDecompress: async () => true } }, 'unsupported');
  await err({ format: 'raw', compress: true }, 'unsupported');
});

test('progress reaches its total, once per pass in order', async () => {
  const src = bytesImage(new Uint8Array(1 << 20).fill(3));
  const seen: [number, number][] = [];
  const reader = convertToStream([src], { onProgress: (d, t) => seen.push([d, t]) }).getReader();
  while (!(await reader.read()).done);
  assert.ok(seen.length > 1);
  for (let i = 1; i < seen.length; i++) assert.ok(seen[i]![0] >= seen[i - 1]![0], 'monotonic');
  const [d, t] = seen[seen.length - 1]!;
  assert.equal(d, t);
});
