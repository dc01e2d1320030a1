/**
 * Node's codecs for the core: zlib from node:zlib (raw DEFLATE, qemu's
 * 4 KiB window) and zstd (./zstd.ts), all on libuv's thread pool so that a
 * read of many compressed clusters decompresses on every core.
 */
import { inflateRaw, constants as zc } from 'node:zlib';
import type { Codecs } from '../block/codecs.js';
import { deflateCluster, zstdCluster } from './compress.js';
import { zstdFrameAt } from '../block/zstd-frames.js';
import { asBuffer, asyncBinding, syncBinding } from './zstd.js';

export const nodeCodecs: Codecs = {
  deflateRaw: deflateCluster,
  zstdCompress: zstdCluster,
  inflateRaw(src, out) {
    return new Promise((resolve) => {
      // Z_SYNC_FLUSH: a truncated stream yields what it has instead of failing,
      // and the length check decides; trailing input after the end of the
      // stream is ignored, as qemu ignores the padding of the last sector.
      inflateRaw(src, { windowBits: 12, finishFlush: zc.Z_SYNC_FLUSH, maxOutputLength: out.length }, (err, r) => {
        if (err || r.length !== out.length) return resolve(false);
        out.set(r);
        resolve(true);
      });
    });
  },
  zstdDecompress(src, out) {
    return asyncBinding() ? zstdDecompressAsync(src, out) : zstdDecompressSync(src, out);
  },
};

/**
 * qemu's rules on the thread pool: frames one after another until the
 * cluster is full; a frame that would overfill it, or a missing or broken
 * frame before it is full, fails the read. Padding after the last frame is
 * never looked at.
 */
async function zstdDecompressAsync(src: Uint8Array, out: Uint8Array): Promise<boolean> {
  const zstd = asyncBinding()!;
  let produced = 0;
  let at = 0;
  while (produced < out.length) {
    const frame = zstdFrameAt(src, at);
    if (!frame) return false;
    at = frame.end;
    if (!frame.data) continue;
    // Only a frame that records its size is handed to the whole-frame
    // decoder, which checks that size: memory stays bounded by the cluster
    // even for a hostile frame. Others go through the streaming decoder.
    if (frame.contentSize === undefined) return zstdDecompressSync(src, out);
    if (frame.contentSize > out.length - produced) return false;
    let data: Buffer;
    try {
      data = await zstd.decompress(asBuffer(src.subarray(frame.start, frame.end)));
    } catch {
      return false;
    }
    if (data.length > out.length - produced) return false;
    out.set(data, produced);
    produced += data.length;
  }
  return true;
}

/** The same rules through zstd-napi's streaming decoder, which stops at a full cluster by itself. */
async function zstdDecompressSync(src: Uint8Array, out: Uint8Array): Promise<boolean> {
  const b = syncBinding();
  if (!b) throw new Error('zstd support is not available (neither @mongodb-js/zstd nor zstd-napi could be loaded)');
  try {
    const dctx = new b.DCtx();
    let produced = 0;
    let consumed = 0;
    let ret = 0;
    while (produced < out.length) {
      const [r, p, c] = dctx.decompressStream(out.subarray(produced), src.subarray(consumed));
      if (p === 0 && c === 0) return false;
      ret = r;
      produced += p;
      consumed += c;
    }
    return ret === 0;
  } catch {
    return false;
  }
}
