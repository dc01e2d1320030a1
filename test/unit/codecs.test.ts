import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomFillSync } from 'node:crypto';
import { nodeCodecs } from '../../src/io/codecs.js';

const CLUSTER = 65536;

function sample(): Uint8Array {
  const b = new Uint8Array(CLUSTER);
  const text = new TextEncoder().encode('qcow2 compressed cluster test text. ');
  for (let i = 0; i < b.length; i++) b[i] = text[i % text.length]!;
  return b;
}

test('deflate round-trips through the qemu-style inflater (window 12, exact cluster)', async () => {
  const src = sample();
  const c = await nodeCodecs.deflateRaw!(src, CLUSTER - 1);
  assert.ok(c && c.length < CLUSTER / 4);
  const out = new Uint8Array(CLUSTER);
  // Trailing sector padding after the stream is ignored.
  const padded = new Uint8Array(c.length + 300);
  padded.set(c);
  assert.equal(await nodeCodecs.inflateRaw(padded, out), true);
  assert.deepEqual(out, src);
  // A stream that ends early fails: it cannot fill the cluster.
  assert.equal(await nodeCodecs.inflateRaw(c, new Uint8Array(CLUSTER + 512)), false);
  assert.equal(await nodeCodecs.inflateRaw(Uint8Array.of(0xff, 0xff, 0xff), out), false);
});

test('zstd round-trips, in parallel, and incompressible data gives null', async () => {
  const src = sample();
  const random = randomFillSync(new Uint8Array(CLUSTER));
  const results = await Promise.all([src, random, src, random].map((b) => nodeCodecs.zstdCompress!(b, CLUSTER - 1)));
  assert.ok(results[0] && results[0].length < 1000);
  assert.equal(results[1], null);
  const out = new Uint8Array(CLUSTER);
  assert.equal(await nodeCodecs.zstdDecompress(results[0]!, out), true);
  assert.deepEqual(out, src);
  // Truncated frame: no progress possible before the cluster is full.
  assert.equal(await nodeCodecs.zstdDecompress(results[0]!.subarray(0, results[0]!.length - 3), out), false);
  // Two concatenated frames that together fill the cluster are accepted.
  const half = await nodeCodecs.zstdCompress!(src.subarray(0, CLUSTER / 2), CLUSTER);
  const two = new Uint8Array(half!.length * 2);
  two.set(half!);
  two.set(half!, half!.length);
  assert.equal(await nodeCodecs.zstdDecompress(two, out), true);
});
