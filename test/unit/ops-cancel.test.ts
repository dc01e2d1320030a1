/**
 * Cancellation and byte progress of convert, compare and map: an abort
 * before the start, after N reads, and from inside onProgress rejects with
 * ImageError 'aborted'; requests already issued finish before the promise
 * settles, so nothing reaches the target afterwards; progress only grows
 * and ends at the total.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Image } from '../../src/block/image.js';
import { isImageError } from '../../src/errors.js';
import { compareImages } from '../../src/ops/compare.js';
import { convertImages, totalSize, type ConvertOptions, type ConvertTarget } from '../../src/ops/convert.js';
import { mapImage } from '../../src/ops/map.js';
import { segImage, type Seg } from '../helpers/tools.js';

const K = 1024;

const random = (n: number, seed: number): Uint8Array => {
  const b = new Uint8Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
};

/** 64 data segments of 32 KiB at scattered host offsets (so each is its own extent), with zero and unallocated runs between some. */
function source(seed: number): { image: Image; host: Uint8Array } {
  const host = random(64 * 32 * K, seed);
  const segs: Seg[] = [];
  for (let i = 0; i < 64; i++) {
    segs.push({ kind: 'data', length: 32 * K, host: ((i * 37) % 64) * 32 * K });
    if (i % 8 === 3) segs.push({ kind: 'zero', length: 16 * K });
    if (i % 8 === 6) segs.push({ kind: 'unallocated', length: 48 * K });
  }
  return { image: segImage(segs, host), host };
}

/** `image` with every read and block status query counted; `onRead` runs before a read is issued. */
function counted(image: Image, hooks: { onRead?: (n: number) => void; onStatus?: (n: number) => void } = {}): Image & { reads: () => number; statuses: () => number } {
  let reads = 0;
  let statuses = 0;
  return new Proxy(image, {
    get(target, key) {
      if (key === 'reads') return () => reads;
      if (key === 'statuses') return () => statuses;
      if (key === 'read') {
        return async (offset: number, into: Uint8Array) => {
          hooks.onRead?.(++reads);
          await sleep(1); // keep requests in flight long enough for an abort to land among them
          return target.read(offset, into);
        };
      }
      if (key === 'blockStatus') {
        return (offset: number, length: number) => {
          hooks.onStatus?.(++statuses);
          return target.blockStatus(offset, length);
        };
      }
      const v = Reflect.get(target, key) as unknown;
      return typeof v === 'function' ? v.bind(target) : v;
    },
  }) as Image & { reads: () => number; statuses: () => number };
}

/** A target that records when each write lands, and whether that was after the operation had settled. */
class WatchedTarget implements ConvertTarget {
  bytes: Uint8Array;
  writes = 0;
  lateWrites = 0;
  flushes = 0;
  settled = false;
  constructor(size: number) {
    this.bytes = new Uint8Array(size);
  }
  private async land(): Promise<void> {
    await sleep(2);
    if (this.settled) this.lateWrites++;
    this.writes++;
  }
  async write(offset: number, data: Uint8Array): Promise<void> {
    const copy = data.slice();
    await this.land();
    this.bytes.set(copy, offset);
  }
  async writeCompressed(offset: number, data: Uint8Array): Promise<void> {
    await this.write(offset, data);
  }
  async writeZeroes(offset: number, length: number): Promise<void> {
    await this.land();
    this.bytes.fill(0, offset, offset + length);
  }
  async flush(): Promise<void> {
    if (this.settled) this.lateWrites++;
    this.flushes++;
  }
  async close(): Promise<void> {}
}

/** Runs `p`, marks the target settled, and gives stray requests time to show up. */
async function settle(p: Promise<unknown>, target?: WatchedTarget): Promise<unknown> {
  let error: unknown;
  try {
    await p;
  } catch (e) {
    error = e;
  }
  if (target) target.settled = true;
  await sleep(30);
  return error;
}

const assertAborted = (e: unknown): void => assert.ok(isImageError(e, 'aborted'), `expected ImageError 'aborted', got ${String(e)}`);

/** Progress reports only grow, never pass the total, and the last one is the total. */
function assertProgress(reports: [number, number][], total: number): void {
  assert.ok(reports.length > 0, 'progress was reported');
  let last = 0;
  for (const [done, t] of reports) {
    assert.equal(t, total);
    assert.ok(done >= last && done <= total, `progress ${done} after ${last} of ${total}`);
    last = done;
  }
  assert.equal(last, total);
}

const convertModes: [string, ConvertOptions][] = [
  ['parallel', { parallel: 4, chunkSize: 16 * K }],
  ['in order', { parallel: 4, chunkSize: 16 * K, inOrder: true }],
  ['not a zero target', { parallel: 3, chunkSize: 16 * K, targetIsZero: false }],
  ['compressed', { parallel: 4, compressClusterSize: 16 * K }],
];

for (const [mode, base] of convertModes) {
  test(`convert (${mode}): byte progress grows to the total and the copy is exact`, async () => {
    const { image } = source(1);
    const t = new WatchedTarget(image.size);
    const reports: [number, number][] = [];
    const pct: number[] = [];
    await convertImages([image], t, { ...base, onProgress: (d, n) => reports.push([d, n]), progress: (p) => pct.push(p) });
    assertProgress(reports, totalSize([image]));
    // qemu-img's percentage is still reported alongside.
    assert.ok(pct.length > 0 && Math.abs(pct[pct.length - 1]! - 100) < 1e-9);
    const expected = new Uint8Array(image.size);
    await image.read(0, expected);
    assert.deepEqual(t.bytes, expected);
    assert.equal(t.flushes, 1);
  });

  test(`convert (${mode}): aborted before the start reads and writes nothing`, async () => {
    const img = counted(source(2).image);
    const t = new WatchedTarget(img.size);
    const ac = new AbortController();
    ac.abort();
    assertAborted(await settle(convertImages([img], t, { ...base, signal: ac.signal }), t));
    assert.equal(img.reads(), 0);
    assert.equal(t.writes, 0);
    assert.equal(t.flushes, 0);
  });

  for (const n of [1, 5, 17]) {
    test(`convert (${mode}): aborted at read ${n} stops, lets in-flight requests finish, writes nothing afterwards`, async () => {
      const ac = new AbortController();
      const img = counted(source(3).image, { onRead: (i) => i === n && ac.abort() });
      const t = new WatchedTarget(img.size);
      const e = await settle(convertImages([img], t, { ...base, signal: ac.signal }), t);
      assertAborted(e);
      // The reads already in flight (at most one per worker) may finish; no new ones start.
      assert.ok(img.reads() < n + (base.parallel ?? 8), `${img.reads()} reads after an abort at read ${n}`);
      assert.equal(t.lateWrites, 0, 'a write or flush landed after the promise settled');
      assert.equal(t.flushes, 0, 'an aborted copy is not flushed');
      const readsThen = img.reads();
      await sleep(30);
      assert.equal(img.reads(), readsThen);
    });
  }

  test(`convert (${mode}): aborted from onProgress halfway`, async () => {
    const ac = new AbortController();
    const img = counted(source(4).image);
    const t = new WatchedTarget(img.size);
    let seen = 0;
    const e = await settle(
      convertImages([img], t, {
        ...base,
        signal: ac.signal,
        onProgress: (d, total) => {
          seen = d;
          if (d >= total / 2) ac.abort();
        },
      }),
      t,
    );
    assertAborted(e);
    assert.ok(seen < img.size, 'the copy stopped before the end');
    assert.equal(t.lateWrites, 0);
  });
}

test('convert: the abort reason is kept as the cause', async () => {
  const ac = new AbortController();
  const reason = new Error('user pressed stop');
  ac.abort(reason);
  const e = await settle(convertImages([source(5).image], new WatchedTarget(source(5).image.size), { signal: ac.signal }));
  assertAborted(e);
  assert.equal((e as Error).cause, reason);
  assert.match((e as Error).message, /user pressed stop/);
});

test('compare: byte progress grows to the larger size; aborts before the start, after N reads and from onProgress', async () => {
  const a = source(6).image;
  const b = source(6).image;
  const reports: [number, number][] = [];
  assert.equal((await compareImages(a, b, { onProgress: (d, n) => reports.push([d, n]) })).kind, 'identical');
  assertProgress(reports, a.size);

  const before = new AbortController();
  before.abort();
  const c0 = counted(a);
  assertAborted(await settle(compareImages(c0, b, { signal: before.signal })));
  assert.equal(c0.reads(), 0);

  for (const n of [1, 4, 9]) {
    const ac = new AbortController();
    const c = counted(a, { onRead: (i) => i === n && ac.abort() });
    assertAborted(await settle(compareImages(c, b, { signal: ac.signal })));
    // Compare reads one chunk at a time: the read that saw the abort is the last.
    assert.equal(c.reads(), n);
  }

  const ac = new AbortController();
  const c = counted(a);
  let calls = 0;
  assertAborted(
    await settle(
      compareImages(c, b, {
        signal: ac.signal,
        onProgress: () => {
          if (++calls === 3) ac.abort();
        },
      }),
    ),
  );
  assert.equal(calls, 3, 'no progress after the abort');
});

test('compare: progress covers the tail of a larger image', async () => {
  const small = source(7).image;
  const big = segImage([{ kind: 'data', length: small.size, host: 0 }, { kind: 'zero', length: 3 * 64 * K }], new Uint8Array(0));
  const smallZero = segImage([{ kind: 'unallocated', length: small.size }], new Uint8Array(0));
  const reports: [number, number][] = [];
  assert.equal((await compareImages(smallZero, big, { onProgress: (d, n) => reports.push([d, n]) })).kind, 'identical');
  assertProgress(reports, big.size);
});

test('map: byte progress over the range; aborts before the start, after N status queries and from onProgress', async () => {
  const img = source(8).image;
  const reports: [number, number][] = [];
  const all = [];
  for await (const e of mapImage(img, { start: 4 * K, onProgress: (d, n) => reports.push([d, n]) })) all.push(e);
  assertProgress(reports, img.size - 4 * K);
  assert.ok(all.length > 1);

  const before = new AbortController();
  before.abort();
  const c0 = counted(img);
  const drain = async (it: AsyncGenerator<unknown>): Promise<void> => {
    for await (const _ of it);
  };
  assertAborted(await settle(drain(mapImage(c0, { signal: before.signal }))));
  assert.equal(c0.statuses(), 0);

  for (const n of [1, 6, 20]) {
    const ac = new AbortController();
    const c = counted(img, { onStatus: (i) => i === n && ac.abort() });
    assertAborted(await settle(drain(mapImage(c, { signal: ac.signal }))));
    assert.equal(c.statuses(), n, 'no block status query after the abort');
  }

  const ac = new AbortController();
  const c = counted(img);
  assertAborted(await settle(drain(mapImage(c, { signal: ac.signal, onProgress: (d) => d >= img.size / 3 && ac.abort() }))));
  assert.ok(c.statuses() < 64);
});
