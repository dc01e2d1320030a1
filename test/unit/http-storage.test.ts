/**
 * HttpStorage against a real HTTP server on loopback: exact bytes at any
 * offset, one request per run of missing blocks, shared in-flight blocks,
 * read-ahead, a bounded cache, and a typed error for each way a server can
 * let a range reader down.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomFillSync } from 'node:crypto';
import { HttpStorage } from '../../src/io/http-storage.js';
import { HttpError } from '../../src/io/http-errors.js';
import { startRangeServer } from '../helpers/range-server.js';

const KiB = 1024;
const MiB = 1024 * KiB;

function file(n: number): Uint8Array {
  return randomFillSync(new Uint8Array(n));
}

async function read(s: HttpStorage, offset: number, n: number): Promise<Uint8Array> {
  const b = new Uint8Array(n);
  await s.read(b, offset);
  return b;
}

test('reads give the file bytes anywhere, zeros past the end, and cost one request per run of missing blocks', async () => {
  const body = file(3 * MiB + 123);
  const srv = await startRangeServer(body);
  try {
    const s = await HttpStorage.open(srv.url, { blockSize: 64 * KiB, readahead: 0 });
    assert.equal(await s.size(), body.length);
    assert.equal(s.stats.requests, 1, 'opening is one request');
    for (const [off, n] of [[0, 512], [65535, 2], [100 * KiB, 300 * KiB], [body.length - 10, 10], [3 * MiB, 123]] as const) {
      assert.deepEqual(await read(s, off, n), body.subarray(off, off + n), `offset ${off}`);
    }
    const tail = await read(s, body.length - 5, 20);
    assert.deepEqual(tail.subarray(0, 5), body.subarray(body.length - 5));
    assert.deepEqual(tail.subarray(5), new Uint8Array(15));
    assert.ok(srv.log.every((r) => r.method === 'GET' && /^bytes=\d+-\d+$/.test(r.range ?? '')), 'single closed ranges only');

    // Concurrent reads of neighbouring blocks in one tick: one request for the run.
    const before = s.stats.requests;
    const parts = await Promise.all([0, 1, 2, 3].map((i) => read(s, 2 * MiB + i * 64 * KiB, 64 * KiB)));
    parts.forEach((p, i) => assert.deepEqual(p, body.subarray(2 * MiB + i * 64 * KiB, 2 * MiB + (i + 1) * 64 * KiB)));
    assert.equal(s.stats.requests - before, 1);
    // The same blocks again: from the cache.
    const hits = s.stats.cacheHits;
    await read(s, 2 * MiB, 256 * KiB);
    assert.equal(s.stats.requests - before, 1);
    assert.equal(s.stats.cacheHits - hits, 4);
    await s.close();
  } finally {
    await srv.close();
  }
});

test('sequential reads fetch ahead; the cache stays within its bound', async () => {
  const body = file(4 * MiB);
  const srv = await startRangeServer(body);
  try {
    const s = await HttpStorage.open(srv.url, { blockSize: 64 * KiB, readahead: 1 * MiB, cacheBytes: 2 * MiB });
    const requests = s.stats.requests;
    for (let off = 0; off < 2 * MiB; off += 64 * KiB) assert.deepEqual(await read(s, off, 64 * KiB), body.subarray(off, off + 64 * KiB));
    // 32 blocks read in order cost a handful of requests, not 32.
    assert.ok(s.stats.requests - requests <= 6, `${s.stats.requests - requests} requests`);
    // Random reads far apart still give the right bytes after eviction.
    for (const off of [3 * MiB, 12345, 2 * MiB + 7, 0]) assert.deepEqual(await read(s, off, 1000), body.subarray(off, off + 1000));
    assert.ok((s as unknown as { cache: Map<number, Uint8Array> }).cache.size <= 32);
    await s.close();
  } finally {
    await srv.close();
  }
});

test('a small file served whole is fine; a large one without range support is refused', async () => {
  const small = file(1000);
  const srv = await startRangeServer(small);
  try {
    srv.faults.ignoreRange = true;
    const s = await HttpStorage.open(srv.url);
    assert.deepEqual(await read(s, 0, 1000), small);
    srv.setBody(file(2 * MiB));
    await assert.rejects(HttpStorage.open(srv.url), (e) => e instanceof HttpError && e.failure === 'no-range');
  } finally {
    await srv.close();
  }
});

test('typed errors: encoded bodies, changed files, 404, 403, retries on 500, timeouts', async () => {
  const body = file(1 * MiB);
  const srv = await startRangeServer(body);
  try {
    srv.faults.encoded = true;
    await assert.rejects(HttpStorage.open(srv.url), (e) => e instanceof HttpError && e.failure === 'encoded');
    srv.faults.encoded = false;

    const s = await HttpStorage.open(srv.url, { blockSize: 64 * KiB, readahead: 0 });
    srv.setBody(file(1 * MiB));
    await assert.rejects(read(s, 512 * KiB, 10), (e) => e instanceof HttpError && e.failure === 'changed');

    srv.faults.failFirst = 2;
    const r = await HttpStorage.open(srv.url, { blockSize: 64 * KiB });
    assert.equal(r.stats.retries, 2);
    srv.faults.failFirst = 10;
    await assert.rejects(read(r, 512 * KiB, 10), (e) => e instanceof HttpError && e.failure === 'status' && e.status === 500);
    srv.faults.failFirst = 0;

    await assert.rejects(HttpStorage.open(srv.url.replace('disk.img', 'nothing.img')), (e) => e instanceof HttpError && e.code === 'not-found');
    srv.faults.status = 403;
    await assert.rejects(HttpStorage.open(srv.url), (e) => e instanceof HttpError && e.status === 403 && /HTTP 403/.test(e.message));
    srv.faults.status = undefined;

    const t = await HttpStorage.open(srv.url, { blockSize: 64 * KiB, timeout: 200, retries: 1, readahead: 0 });
    srv.faults.hangAt = 128 * KiB;
    const started = Date.now();
    await assert.rejects(read(t, 128 * KiB, 10), (e) => e instanceof HttpError && e.failure === 'timeout');
    assert.ok(Date.now() - started < 5000);
    srv.faults.hangAt = undefined;
  } finally {
    await srv.close();
  }
});

test('headers go with every request and never into messages; URLs in messages lose credentials and queries', async () => {
  const srv = await startRangeServer(file(100 * KiB));
  try {
    const s = await HttpStorage.open(srv.url, { headers: { Authorization: 'Bearer sekrit-token' }, blockSize: 64 * KiB, readahead: 0 });
    await read(s, 70 * KiB, 10);
    assert.ok(srv.log.length >= 2 && srv.log.every((r) => r.authorization === 'Bearer sekrit-token'));
    srv.faults.status = 500;
    const url = srv.url.replace('http://', 'http://user:pw@') + '?X-Amz-Signature=abc';
    const e = await HttpStorage.open(url, { headers: { Authorization: 'Bearer sekrit-token' }, retries: 0 }).catch((x: unknown) => x);
    assert.ok(e instanceof HttpError);
    assert.doesNotMatch(e.message, /sekrit|pw@|abc/);
    assert.match(e.message, /^HTTP 500/);
    // Later failures name the file, without its credentials or query.
    srv.faults.status = undefined;
    const later = await HttpStorage.open(url, { retries: 0, blockSize: 64 * KiB, readahead: 0 });
    srv.faults.status = 500;
    const e2 = await read(later, 80 * KiB, 10).catch((x: unknown) => x);
    assert.ok(e2 instanceof HttpError);
    assert.match(e2.message, /^http:\/\/127\.0\.0\.1:\d+\/disk\.img\?…: HTTP 500/);
    assert.doesNotMatch(e2.message, /sekrit|pw@|abc/);
    assert.match(srv.log.at(-1)!.authorization ?? '', /^Basic /, 'URL credentials become Basic authorization');
  } finally {
    await srv.close();
  }
});

test('no Content-Range (hidden from a browser script): the size comes from HEAD', async () => {
  const body = file(300 * KiB);
  const srv = await startRangeServer(body);
  try {
    srv.faults.hideContentRange = true;
    const s = await HttpStorage.open(srv.url, { blockSize: 64 * KiB });
    assert.equal(await s.size(), body.length);
    assert.deepEqual(await read(s, 200 * KiB, 100 * KiB), body.subarray(200 * KiB));
  } finally {
    await srv.close();
  }
});
