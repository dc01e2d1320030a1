import { test } from 'node:test';
import assert from 'node:assert/strict';
import { convertImages, totalSize, type ConvertTarget } from '../../src/ops/convert.js';
import { bytesImage, segImage } from '../helpers/tools.js';

const K = 1024;

class MemTarget implements ConvertTarget {
  bytes: Uint8Array;
  writes: [number, number][] = [];
  zeroes: [number, number][] = [];
  flushed = 0;
  constructor(size: number, fill = 0) {
    this.bytes = new Uint8Array(size).fill(fill);
  }
  async write(offset: number, data: Uint8Array) {
    this.writes.push([offset, data.length]);
    this.bytes.set(data, offset);
  }
  async writeZeroes(offset: number, length: number) {
    this.zeroes.push([offset, length]);
    this.bytes.fill(0, offset, offset + length);
  }
  async flush() {
    this.flushed++;
  }
  async close() {}
}

const random = (n: number, seed = 1): Uint8Array => {
  const b = new Uint8Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
};

test('concatenated sources are copied byte for byte; zero blocks stay holes', async () => {
  const a = random(96 * K, 1);
  a.fill(0, 16 * K, 32 * K); // an all-zero run inside data
  const host = random(64 * K, 2);
  const b = segImage(
    [
      { kind: 'unallocated', length: 64 * K },
      { kind: 'data', length: 64 * K, host: 0 },
    ],
    host,
  );
  const sources = [bytesImage(a), b];
  const t = new MemTarget(totalSize(sources));
  const pct: number[] = [];
  await convertImages(sources, t, { chunkSize: 32 * K, parallel: 3, progress: (p) => pct.push(p) });
  const expected = new Uint8Array(t.bytes.length);
  expected.set(a, 0);
  expected.set(host, 96 * K + 64 * K);
  assert.deepEqual(t.bytes, expected);
  // nothing written over the zero run or the unallocated part
  for (const [off, len] of t.writes) {
    assert.ok(off + len <= 16 * K || off >= 32 * K, `write ${off}+${len} touches the zero run`);
    assert.ok(off + len <= 96 * K || off >= 160 * K, `write ${off}+${len} touches the unallocated part`);
  }
  assert.equal(t.zeroes.length, 0);
  assert.equal(t.flushed, 1);
  assert.equal(Math.round(pct.at(-1)!), 100);
});

test('-n: a target that is not zero gets zero ranges written', async () => {
  const img = segImage([{ kind: 'zero', length: 64 * K }, { kind: 'data', length: 64 * K, host: 0 }], new Uint8Array(64 * K));
  const t = new MemTarget(128 * K, 0xee);
  await convertImages([img], t, { targetIsZero: false });
  assert.ok(t.bytes.every((b) => b === 0));
});

test('-S 0 writes everything as data', async () => {
  const img = segImage([{ kind: 'unallocated', length: 64 * K }], new Uint8Array(0));
  const t = new MemTarget(64 * K, 0xee);
  await convertImages([img], t, { sparseSize: 0 });
  assert.ok(t.bytes.every((b) => b === 0));
  assert.equal(t.zeroes.length, 0);
  assert.equal(t.writes.reduce((n, [, l]) => n + l, 0), 64 * K);
});

test('a read error stops the copy with qemu-img wording', async () => {
  const img = bytesImage(new Uint8Array(64 * K));
  (img as { read: unknown }).read = async () => {
    throw new Error('Input/output error');
  };
  await assert.rejects(convertImages([img], new MemTarget(64 * K)), /^ConvertError: error while reading at byte 0: Input\/output error$/);
});
