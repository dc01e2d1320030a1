/**
 * Image streams over in-memory images made by the library: the byte and
 * extent streams reproduce image.read exactly and never cross a block
 * status extent; the writable fills a fresh image sparsely, refuses to pass
 * the end and stops on abort; reading is pull-based with a bounded number
 * of chunks outstanding; the Node adapters carry the same behaviour and
 * errors through pipeline().
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { extents, type Extent, type Image } from '../../src/block/image.js';
import { openImage, type Host } from '../../src/block/open.js';
import { isImageError } from '../../src/errors.js';
import '../../src/formats/index.js';
import { createQcow2 } from '../../src/formats/qcow2/create.js';
import { createQed } from '../../src/formats/qed/create.js';
import { nodeCodecs } from '../../src/io/codecs.js';
import { MemoryStorage } from '../../src/io/memory.js';
import { imageNodeReadable, imageNodeWritable } from '../../src/io/node-streams.js';
import { imageExtentStream, imageReadableStream, imageWritableStream, type ImageChunk } from '../../src/ops/streams.js';
import { segImage } from '../helpers/tools.js';

const K = 1024;
const M = 1024 * K;

const random = (n: number, seed: number): Uint8Array => {
  const b = new Uint8Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = (x >>> 24) | 1;
  }
  return b;
};

/** A host of in-memory files; storages opened by name share the bytes. */
function memoryHost(files: Map<string, MemoryStorage>): Host {
  return {
    openStorage: async (path) => {
      const s = files.get(path);
      if (!s) throw new Error(`no file ${path}`);
      return s;
    },
    resolve: (_p, n) => n,
    identity: async (p) => p,
    codecs: nodeCodecs,
  };
}

const SIZE = 3 * M + 5 * K; // not a multiple of the cluster or chunk size

/** Writes in the overlay: data, a zeroed range over backing data, and data across a cluster edge. */
async function scribble(img: Image): Promise<void> {
  await img.write(100 * K, random(300 * K, 2));
  await img.writeZeroes(1 * M, 128 * K);
  await img.write(2 * M - 3000, random(70 * K, 3));
  await img.write(SIZE - 4 * K, random(4 * K, 4));
}

interface Made {
  name: string;
  image: Image;
  files: Map<string, MemoryStorage>;
}

/** A raw backing file with data in its first half, under a fresh overlay of `fmt`, scribbled on. */
async function chain(fmt: 'qcow2' | 'qed' | 'raw'): Promise<Made> {
  const files = new Map<string, MemoryStorage>();
  const base = new Uint8Array(SIZE);
  base.set(random(SIZE / 2, 1).fill(0, 200 * K, 260 * K), 0);
  files.set('base.raw', new MemoryStorage(base, { name: 'base.raw' }));
  const top = new MemoryStorage(new Uint8Array(0), { name: `top.${fmt}` });
  files.set(`top.${fmt}`, top);
  if (fmt === 'qcow2') {
    await createQcow2(
      top,
      { size: SIZE, version: 3, clusterSize: 64 * K, refcountBits: 16, lazyRefcounts: false, extendedL2: false, compressionType: 'zlib', preallocation: 'off', dataFileRaw: false, backingFile: 'base.raw', backingFmt: 'raw' },
      { codecs: nodeCodecs },
    );
  } else if (fmt === 'qed') {
    await createQed(top, { size: SIZE, clusterSize: 64 * K, backingFile: 'base.raw', backingFmt: 'raw' });
  } else {
    await top.truncate(SIZE);
  }
  const image = await openImage(`top.${fmt}`, { host: memoryHost(files), format: fmt, writable: true });
  await scribble(image);
  return { name: fmt === 'raw' ? 'raw' : `${fmt} over raw`, image, files };
}

/** A fresh, empty qcow2 of `size` in memory, opened for writing. */
async function freshQcow2(size: number, cluster = 64 * K): Promise<{ image: Image; storage: MemoryStorage; flushes: () => number }> {
  const storage = new MemoryStorage(new Uint8Array(0), { name: 'fresh.qcow2' });
  await createQcow2(
    storage,
    { size, version: 3, clusterSize: cluster, refcountBits: 16, lazyRefcounts: false, extendedL2: false, compressionType: 'zlib', preallocation: 'off', dataFileRaw: false },
    { codecs: nodeCodecs },
  );
  const opened = await openImage('fresh.qcow2', { host: memoryHost(new Map([['fresh.qcow2', storage]])), format: 'qcow2', writable: true });
  let flushes = 0;
  const image = new Proxy(opened, {
    get(t, k) {
      if (k === 'flush') return () => (flushes++, t.flush());
      const v = Reflect.get(t, k) as unknown;
      return typeof v === 'function' ? v.bind(t) : v;
    },
  });
  return { image, storage, flushes: () => flushes };
}

async function readAll(image: Image, offset = 0, length = image.size - offset): Promise<Uint8Array> {
  const b = new Uint8Array(length);
  await image.read(offset, b);
  return b;
}

async function collect<T>(s: ReadableStream<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const c of s as unknown as AsyncIterable<T>) out.push(c);
  return out;
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

async function allExtents(image: Image, offset = 0, length = image.size - offset): Promise<Extent[]> {
  const out: Extent[] = [];
  for await (const e of extents(image, offset, length)) out.push(e);
  return out;
}

/** Each [offset, offset+length) lies inside one extent; returns that extent. */
function within(es: readonly Extent[], offset: number, length: number): Extent {
  const e = es.find((x) => x.offset <= offset && offset < x.offset + x.length);
  assert.ok(e, `no extent holds ${offset}`);
  assert.ok(offset + length <= e.offset + e.length, `chunk ${offset}+${length} crosses the extent ${e.offset}+${e.length}`);
  return e;
}

const assertCode = (e: unknown, code: 'aborted' | 'bad-argument'): void => assert.ok(isImageError(e, code), `expected ImageError '${code}', got ${String(e)}`);

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  assert.fail('expected a rejection');
}

for (const fmt of ['qcow2', 'qed', 'raw'] as const) {
  test(`${fmt}: the byte stream equals image.read, chunk by chunk inside extents`, async () => {
    const { image } = await chain(fmt);
    const es = await allExtents(image);
    // (Raw over memory has no holes to report.)
    if (fmt !== 'raw') assert.ok(es.some((e) => e.zero) && es.some((e) => !e.zero), 'the image has zero and data runs');
    for (const [offset, length, chunkSize] of [
      [0, image.size, undefined],
      [0, image.size, 100 * K + 1],
      [123_457, 2 * M, 64 * K],
    ] as const) {
      const chunks = await collect(imageReadableStream(image, { offset, length, chunkSize }));
      assert.deepEqual(concat(chunks), await readAll(image, offset, length));
      let pos = offset;
      for (const c of chunks) {
        assert.ok(c.length > 0 && c.length <= (chunkSize ?? M));
        const e = within(es, pos, c.length);
        if (e.zero) assert.ok(c.every((b) => b === 0));
        pos += c.length;
      }
    }
  });

  test(`${fmt}: a BYOB reader fills its own buffers`, async () => {
    const { image } = await chain(fmt);
    const reader = imageReadableStream(image, { chunkSize: 256 * K }).getReader({ mode: 'byob' });
    const parts: Uint8Array[] = [];
    let buf = new ArrayBuffer(40 * K + 3);
    for (;;) {
      const r = await reader.read(new Uint8Array(buf));
      if (r.done) break;
      assert.ok(r.value.length <= 40 * K + 3);
      parts.push(r.value.slice());
      buf = r.value.buffer as ArrayBuffer;
    }
    assert.deepEqual(concat(parts), await readAll(image));
  });

  test(`${fmt}: the extent stream: zero runs without bytes, data runs bounded, nothing crosses an extent`, async () => {
    const { image } = await chain(fmt);
    const es = await allExtents(image);
    const reads: number[] = [];
    const watched = new Proxy(image, {
      get(t, k) {
        if (k === 'read') return (off: number, into: Uint8Array) => (reads.push(into.length), t.read(off, into));
        const v = Reflect.get(t, k) as unknown;
        return typeof v === 'function' ? v.bind(t) : v;
      },
    });
    const chunks: ImageChunk[] = await collect(imageExtentStream(watched, { chunkSize: 96 * K }));
    let pos = 0;
    const whole = new Uint8Array(image.size);
    for (const c of chunks) {
      assert.equal(c.offset, pos);
      const e = within(es, c.offset, c.length);
      assert.equal(c.zero, e.zero);
      if (c.zero) {
        assert.equal(c.data, undefined);
        // A zero run comes whole (up to where the extent ends).
        assert.equal(c.offset + c.length, e.offset + e.length);
      } else {
        assert.ok(c.data && c.data.length === c.length && c.length <= 96 * K);
        whole.set(c.data, c.offset);
      }
      pos += c.length;
    }
    assert.equal(pos, image.size);
    assert.deepEqual(whole, await readAll(image));
    // Only data was read.
    const dataBytes = es.filter((e) => !e.zero).reduce((n, e) => n + e.length, 0);
    assert.equal(reads.reduce((a, b) => a + b, 0), dataBytes);
  });
}

test('progress of a read stream grows to the range length', async () => {
  const { image } = await chain('qcow2');
  const seen: [number, number][] = [];
  await collect(imageReadableStream(image, { offset: 4096, onProgress: (d, t) => seen.push([d, t]) }));
  let last = 0;
  for (const [d, t] of seen) {
    assert.equal(t, image.size - 4096);
    assert.ok(d > last);
    last = d;
  }
  assert.equal(last, image.size - 4096);
});

test('a bad range or chunk size is refused up front', () => {
  const img = segImage([{ kind: 'zero', length: 64 * K }], new Uint8Array(0));
  assert.throws(() => imageReadableStream(img, { offset: 60 * K, length: 8 * K }), (e) => isImageError(e, 'bad-argument'));
  assert.throws(() => imageExtentStream(img, { chunkSize: 0 }), (e) => isImageError(e, 'bad-argument'));
  assert.throws(() => imageWritableStream(img, { offset: 65 * K }), (e) => isImageError(e, 'bad-argument'));
});

/** Guest bytes with zero stretches at and off 4 KiB alignment. */
function sparseContent(size: number): Uint8Array {
  const b = random(size, 9);
  b.fill(0, 0, 128 * K); // leading hole
  b.fill(0, 300 * K, 700 * K); // aligned hole
  b.fill(0, 1 * M + 100, 1 * M + 9000); // holds one whole zero 4 KiB block
  b.fill(0, size - 64 * K); // trailing hole
  return b;
}

/** Feeds `bytes` to `w` in chunks of varied, unaligned sizes. */
async function feed(w: WritableStreamDefaultWriter<Uint8Array>, bytes: Uint8Array): Promise<void> {
  const sizes = [1, 4095, 70_000, 333, 1 << 20, 65536, 12345];
  let pos = 0;
  for (let i = 0; pos < bytes.length; i++) {
    const n = Math.min(sizes[i % sizes.length]!, bytes.length - pos);
    await w.write(bytes.slice(pos, pos + n));
    pos += n;
  }
}

test('the writable fills a fresh qcow2: content exact, zero blocks stay unallocated, flushed on close', async () => {
  const size = 2 * M + 8 * K;
  const content = sparseContent(size);
  const { image, flushes } = await freshQcow2(size, 4 * K);
  const seen: number[] = [];
  const w = imageWritableStream(image, { onProgress: (d, t) => (assert.equal(t, size), seen.push(d)) }).getWriter();
  await feed(w, content);
  assert.equal(flushes(), 0);
  await w.close();
  assert.equal(flushes(), 1);
  assert.deepEqual(await readAll(image), content);
  assert.deepEqual(seen, [...seen].sort((a, b) => a - b));
  assert.equal(seen[seen.length - 1], size);
  // Every 4 KiB cluster that is all zero stayed unallocated; the others hold data.
  for (const e of await allExtents(image)) {
    for (let c = e.offset; c < e.offset + e.length; c += 4 * K) {
      const zero = content.subarray(c, c + 4 * K).every((x) => x === 0);
      assert.equal(e.present, !zero, `cluster at ${c}`);
    }
  }
});

test('the writable writes zeros where the image held data, and everything as data without detectZeroes', async () => {
  const size = 1 * M;
  const content = sparseContent(size);
  const { image } = await freshQcow2(size, 4 * K);
  await image.write(0, random(size, 5)); // old data everywhere
  let w = imageWritableStream(image).getWriter();
  await feed(w, content);
  await w.close();
  assert.deepEqual(await readAll(image), content);

  const fresh = await freshQcow2(size, 4 * K);
  w = imageWritableStream(fresh.image, { detectZeroes: false, offset: 0 }).getWriter();
  await feed(w, content);
  await w.close();
  assert.deepEqual(await readAll(fresh.image), content);
  for (const e of await allExtents(fresh.image)) assert.ok(e.present && e.data, `${e.offset} allocated as data`);
});

test('the writable starts at an offset, and flush: false leaves the flush to the caller', async () => {
  const { image, flushes } = await freshQcow2(1 * M);
  const data = random(200 * K, 6);
  const w = imageWritableStream(image, { offset: 300 * K + 17, flush: false }).getWriter();
  await w.write(data);
  await w.close();
  assert.equal(flushes(), 0);
  assert.deepEqual(await readAll(image, 300 * K + 17, data.length), data);
  assert.ok((await readAll(image, 0, 300 * K + 17)).every((b) => b === 0));
});

test('a write past the end is refused with bad-argument; what came before is written', async () => {
  const { image } = await freshQcow2(256 * K);
  const w = imageWritableStream(image, { offset: 200 * K }).getWriter();
  const first = random(50 * K, 7);
  await w.write(first);
  assertCode(await rejection(w.write(new Uint8Array(7 * K))), 'bad-argument');
  await rejection(w.close());
  assert.deepEqual(await readAll(image, 200 * K, first.length), first);
});

test('aborting the writable (signal or writer.abort) stops without flushing; later writes are refused', async () => {
  const content = random(4 * M, 8);
  const { image, flushes } = await freshQcow2(4 * M);
  const ac = new AbortController();
  const w = imageWritableStream(image, { signal: ac.signal }).getWriter();
  await w.write(content.subarray(0, 1 * M + 5));
  await w.write(content.subarray(1 * M + 5, 2 * M));
  ac.abort();
  assertCode(await rejection(w.write(content.subarray(2 * M, 3 * M))), 'aborted');
  assertCode(await rejection(w.closed), 'aborted');
  assert.equal(flushes(), 0);
  // Nothing past the abort point reached the image.
  assert.ok((await readAll(image, 2 * M, 2 * M)).every((b) => b === 0));

  const other = await freshQcow2(4 * M);
  const w2 = imageWritableStream(other.image).getWriter();
  await w2.write(content.subarray(0, 1.5 * M));
  await w2.abort(new Error('stop'));
  assert.equal(other.flushes(), 0);
  assert.ok((await readAll(other.image, 1 * M, 1 * M)).every((b) => b === 0), 'the buffered tail was dropped');
});

test('aborting a read stream rejects the pending read with aborted', async () => {
  const { image } = await chain('qcow2');
  const ac = new AbortController();
  const reader = imageReadableStream(image, { signal: ac.signal, chunkSize: 64 * K }).getReader();
  assert.equal((await reader.read()).done, false);
  ac.abort();
  assertCode(await rejection(reader.read()), 'aborted');

  const ac2 = new AbortController();
  const ext = imageExtentStream(image, { signal: ac2.signal }).getReader();
  ac2.abort();
  assertCode(await rejection(ext.read()), 'aborted');
});

/** A 256 MiB all-data image over a small host buffer, counting read() calls. */
function bigImage(): { image: Image; reads: () => number } {
  const base = segImage([{ kind: 'data', length: 256 * M, host: 0 }], random(64 * K, 3));
  let reads = 0;
  const image = new Proxy(base, {
    get(t, k) {
      if (k === 'read') return (off: number, into: Uint8Array) => (reads++, t.read(off, into));
      const v = Reflect.get(t, k) as unknown;
      return typeof v === 'function' ? v.bind(t) : v;
    },
  });
  return { image, reads: () => reads };
}

test('backpressure: a slow consumer of a 256 MiB image never has more than two chunks read ahead', async () => {
  for (const kind of ['bytes', 'extents'] as const) {
    const { image, reads } = bigImage();
    const s = kind === 'bytes' ? imageReadableStream(image) : imageExtentStream(image);
    const reader = (s as ReadableStream<unknown>).getReader();
    let consumed = 0;
    let maxAhead = 0;
    for (;;) {
      const r = await reader.read();
      if (r.done) break;
      consumed++;
      if (consumed % 16 === 0) await sleep(5); // a consumer slower than the image
      else await new Promise((res) => setImmediate(res));
      maxAhead = Math.max(maxAhead, reads() - consumed);
    }
    assert.equal(consumed, 256);
    assert.ok(maxAhead <= 2, `${kind}: ${maxAhead} chunks read ahead of the consumer`);
  }
});

test('Node readable: same bytes as image.read; honours highWaterMark under a slow consumer', async () => {
  const { image } = await chain('qed');
  const parts: Buffer[] = [];
  await pipeline(
    imageNodeReadable(image, { chunkSize: 100 * K }),
    new Writable({
      write(c: Buffer, _e, cb) {
        parts.push(c);
        cb();
      },
    }),
  );
  assert.deepEqual(new Uint8Array(Buffer.concat(parts)), await readAll(image));

  const { image: big, reads } = bigImage();
  let consumedBytes = 0;
  let maxAhead = 0;
  await pipeline(
    imageNodeReadable(big, { highWaterMark: 1 * M }),
    new Writable({
      highWaterMark: 1 * M,
      write(c: Buffer, _e, cb) {
        consumedBytes += c.length;
        maxAhead = Math.max(maxAhead, reads() - consumedBytes / M);
        if (consumedBytes % (16 * M) === 0) setTimeout(cb, 5);
        else setImmediate(cb);
      },
    }),
  );
  assert.equal(consumedBytes, 256 * M);
  assert.ok(maxAhead <= 4, `${maxAhead} chunks read ahead of the consumer`);
});

test('Node writable: pipeline fills an image; errors and aborts reject pipeline with the ImageError', async () => {
  const size = 2 * M;
  const content = sparseContent(size);
  const chunks = (b: Uint8Array): Buffer[] => Array.from({ length: Math.ceil(b.length / 50_000) }, (_, i) => Buffer.from(b.subarray(i * 50_000, (i + 1) * 50_000)));
  const { image, flushes } = await freshQcow2(size, 4 * K);
  await pipeline(Readable.from(chunks(content)), imageNodeWritable(image));
  assert.equal(flushes(), 1);
  assert.deepEqual(await readAll(image), content);

  const small = await freshQcow2(1 * M);
  assertCode(await rejection(pipeline(Readable.from(chunks(content)), imageNodeWritable(small.image))), 'bad-argument');
  assert.equal(small.flushes(), 0);

  const ac = new AbortController();
  const target = await freshQcow2(size);
  let sent = 0;
  const slow = new Readable({
    read() {
      if (sent === 10) ac.abort();
      if (sent * 50_000 >= size) return this.push(null);
      this.push(Buffer.from(content.subarray(sent * 50_000, ++sent * 50_000)));
    },
  });
  assertCode(await rejection(pipeline(slow, imageNodeWritable(target.image, { signal: ac.signal }))), 'aborted');
  assert.equal(target.flushes(), 0);

  const ac2 = new AbortController();
  const src = imageNodeReadable((await chain('raw')).image, { signal: ac2.signal, chunkSize: 64 * K });
  let got = 0;
  const e = await rejection(
    pipeline(
      src,
      new Writable({
        write(_c, _e, cb) {
          if (++got === 3) ac2.abort();
          cb();
        },
      }),
    ),
  );
  assertCode(e, 'aborted');
});
