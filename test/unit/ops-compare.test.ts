import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compareImages, findNonzero } from '../../src/ops/compare.js';
import { bytesImage, segImage } from '../helpers/tools.js';

const K = 1024;

test('identical, and the first differing byte reported at 512-byte granularity', async () => {
  const a = new Uint8Array(64 * K);
  const b = new Uint8Array(64 * K);
  assert.deepEqual(await compareImages(bytesImage(a), bytesImage(b)), { kind: 'identical', sizeMismatch: false });
  b[70 * 10 + 5] = 1; // byte 705 lies in the sector at 512
  assert.deepEqual(await compareImages(bytesImage(a), bytesImage(b)), { kind: 'content', offset: 512, sizeMismatch: false });
  b[3] = 1; // first sector differs: reported at the chunk start
  assert.deepEqual(await compareImages(bytesImage(a), bytesImage(b)), { kind: 'content', offset: 0, sizeMismatch: false });
});

test('allocated against unallocated must read as zero', async () => {
  const host = new Uint8Array(128 * K);
  const sparse = segImage([{ kind: 'unallocated', length: 128 * K }], new Uint8Array(0));
  assert.equal((await compareImages(bytesImage(host), sparse)).kind, 'identical');
  host[100 * K + 1] = 9;
  assert.deepEqual(await compareImages(sparse, bytesImage(host)), { kind: 'content', offset: 100 * K, sizeMismatch: false });
});

test('size mismatch: tail must be zero; strict mode refuses', async () => {
  const small = bytesImage(new Uint8Array(64 * K));
  const bigBytes = new Uint8Array(128 * K);
  let warned = 0;
  const r = await compareImages(small, bytesImage(bigBytes), { onSizeMismatch: () => warned++ });
  assert.deepEqual(r, { kind: 'identical', sizeMismatch: true });
  assert.equal(warned, 1);
  bigBytes[100 * K] = 1;
  assert.deepEqual(await compareImages(small, bytesImage(bigBytes)), { kind: 'content', offset: 100 * K, sizeMismatch: true });
  assert.deepEqual(await compareImages(small, bytesImage(bigBytes), { strict: true }), { kind: 'strict-size' });
});

test('strict mode compares block status', async () => {
  const zeros = segImage([{ kind: 'zero', length: 64 * K }], new Uint8Array(0));
  const data = bytesImage(new Uint8Array(64 * K));
  assert.equal((await compareImages(zeros, data)).kind, 'identical');
  assert.deepEqual(await compareImages(zeros, data, { strict: true }), { kind: 'strict-status', offset: 0 });
});

test('two 4 TiB sparse images compare without reading', async () => {
  const T4 = 4 * 1024 ** 4;
  const a = segImage([{ kind: 'unallocated', length: T4 }], new Uint8Array(0));
  const b = segImage([{ kind: 'zero', length: T4 / 2 }, { kind: 'unallocated', length: T4 / 2 }], new Uint8Array(0));
  const t0 = Date.now();
  assert.equal((await compareImages(a, b)).kind, 'identical');
  assert.ok(Date.now() - t0 < 5000);
});

test('findNonzero works on sector boundaries', () => {
  const b = new Uint8Array(2000);
  assert.equal(findNonzero(b), -1);
  b[1999] = 1;
  assert.equal(findNonzero(b), 1536);
});
