/**
 * zstd frame boundaries from headers alone, and the Node codec built on
 * them: whole-frame decoding on the thread pool with qemu's rules (padding
 * ignored, frames concatenated, an overfull or broken frame fails) and
 * memory bounded by the cluster even for a hostile frame.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { randomFillSync } from 'node:crypto';
import { zstdFrameAt } from '../../src/block/zstd-frames.js';
import { nodeCodecs } from '../../src/io/codecs.js';
import { zstdCluster } from '../../src/io/compress.js';

const require = createRequire(import.meta.url);
const napi = require('zstd-napi/binding') as {
  CCtx: new () => { compress2(d: Uint8Array, s: Uint8Array): number; setParameter(p: number, v: number): void };
  CParameter: { compressionLevel: number; contentSizeFlag: number; checksumFlag: number };
};

const CLUSTER = 65536;

/** Text-like data (words picked by an LCG), so that levels make a difference. */
function sample(seed: number, n = CLUSTER): Uint8Array {
  const words = ['qcow2', 'cluster', 'zstd', 'frame', 'padding', 'refcount', 'table', 'guest', 'sector', 'image', 'backing', 'the', 'of'];
  const enc = new TextEncoder();
  const b = new Uint8Array(n);
  let x = seed * 2654435761 + 1;
  let at = 0;
  while (at < n) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    const w = enc.encode(words[(x >>> 16) % words.length]! + (x % 7 === 0 ? '. ' : ' ') + (x % 97 === 0 ? String(x) : ''));
    b.set(w.subarray(0, n - at), at);
    at += w.length;
  }
  return b;
}

function napiFrame(src: Uint8Array, opts: { contentSize?: boolean; checksum?: boolean; level?: number } = {}): Uint8Array {
  const c = new napi.CCtx();
  c.setParameter(napi.CParameter.contentSizeFlag, opts.contentSize === false ? 0 : 1);
  c.setParameter(napi.CParameter.checksumFlag, opts.checksum ? 1 : 0);
  if (opts.level !== undefined) c.setParameter(napi.CParameter.compressionLevel, opts.level);
  const dst = new Uint8Array(src.length + 1024);
  return dst.slice(0, c.compress2(dst, src));
}

test('a frame ends where its block headers say, whatever follows it', () => {
  for (const checksum of [false, true]) {
    for (const contentSize of [false, true]) {
      const src = sample(checksum ? 1 : 2, 200_000); // several 128 KiB blocks
      const frame = napiFrame(src, { checksum, contentSize });
      const padded = new Uint8Array(frame.length + 511);
      padded.set(frame);
      randomFillSync(padded.subarray(frame.length));
      const f = zstdFrameAt(padded, 0);
      assert.ok(f, `frame found (checksum ${checksum}, size ${contentSize})`);
      assert.equal(f.end, frame.length);
      assert.equal(f.contentSize, contentSize ? src.length : undefined);
      // Any cut inside the frame leaves no complete frame.
      for (const cut of [5, 6, 9, frame.length - 1]) assert.equal(zstdFrameAt(frame.subarray(0, cut), 0), null, `cut at ${cut}`);
    }
  }
  assert.equal(zstdFrameAt(Uint8Array.of(1, 2, 3, 4, 5, 6), 0), null, 'no magic');
  // A skippable frame: magic 0x184d2a5X, a 4-byte length, then that many bytes.
  const skip = Uint8Array.of(0x53, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 9, 9, 9);
  assert.deepEqual(zstdFrameAt(skip, 0), { start: 0, end: 11, data: false });
});

test('the codec decodes qemu-style frames with padding, concatenated frames, and our own frames; levels are honoured', async () => {
  const src = sample(3);
  const out = new Uint8Array(CLUSTER);
  for (const level of [1, 3, 19]) {
    const frame = napiFrame(src, { level });
    const padded = new Uint8Array(frame.length + 300).fill(0xa5);
    padded.set(frame);
    out.fill(0);
    assert.equal(await nodeCodecs.zstdDecompress(padded, out), true, `level ${level}`);
    assert.deepEqual(out, src);
  }
  // Two frames that fill the cluster together.
  const a = napiFrame(src.subarray(0, 1000));
  const b = napiFrame(src.subarray(1000));
  const both = new Uint8Array(a.length + b.length + 50);
  both.set(a);
  both.set(b, a.length);
  out.fill(0);
  assert.equal(await nodeCodecs.zstdDecompress(both, out), true);
  assert.deepEqual(out, src);
  // A frame that would overfill the cluster, and one that does not fill it.
  assert.equal(await nodeCodecs.zstdDecompress(napiFrame(sample(4, CLUSTER + 512)), out), false);
  assert.equal(await nodeCodecs.zstdDecompress(a, out), false);
  // Our own frames record their size, at every level, and decode in the streaming decoder too.
  const sizes = new Map<number, number>();
  for (const level of [-5, 1, 3, 9, 19]) {
    const ours = await zstdCluster(src, CLUSTER - 1, level);
    assert.ok(ours, `level ${level} compresses`);
    assert.equal(zstdFrameAt(ours, 0)?.contentSize, CLUSTER, `level ${level} records the size`);
    sizes.set(level, ours.length);
    out.fill(0);
    assert.equal(await nodeCodecs.zstdDecompress(ours, out), true);
    assert.deepEqual(out, src);
  }
  assert.ok(sizes.get(19)! < sizes.get(1)!, `level 19 (${sizes.get(19)}) is smaller than level 1 (${sizes.get(1)})`);
  assert.ok(sizes.get(-5)! > sizes.get(3)!, `level -5 (${sizes.get(-5)}) is larger than level 3 (${sizes.get(3)})`);
});

test('a hostile frame that would expand far past the cluster fails with bounded memory', async () => {
  // No content size, then RLE blocks of 128 KiB each from 4 bytes: 64 MiB from 2 KiB.
  const blocks = 512;
  const buf = new Uint8Array(6 + blocks * 4);
  buf.set([0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x58]); // magic, no size, window descriptor
  for (let i = 0; i < blocks; i++) {
    const last = i === blocks - 1 ? 1 : 0;
    const header = last | (1 << 1) | ((128 * 1024) << 3);
    buf.set([header & 0xff, (header >> 8) & 0xff, (header >> 16) & 0xff, 0x41], 6 + i * 4);
  }
  assert.equal(zstdFrameAt(buf, 0)?.end, buf.length);
  const before = process.memoryUsage().rss;
  assert.equal(await nodeCodecs.zstdDecompress(buf, new Uint8Array(CLUSTER)), false);
  assert.ok(process.memoryUsage().rss - before < 48 * 2 ** 20, 'no 64 MiB expansion');
});
