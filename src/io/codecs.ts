/**
 * Node's codecs for the core: zlib from node:zlib (raw DEFLATE, qemu's
 * 4 KiB window) and zstd from zstd-napi's streaming context, which lets us
 * stop at exactly one cluster of output as qemu does.
 */
import { inflateRawSync, constants as zc } from 'node:zlib';
import { createRequire } from 'node:module';
import type { Codecs } from '../block/codecs.js';
import { deflateCluster, zstdCluster } from './compress.js';

const require = createRequire(import.meta.url);

interface ZstdBinding {
  DCtx: new () => { decompressStream(dst: Uint8Array, src: Uint8Array): [number, number, number]; reset(directive: number): void };
}
let zstd: ZstdBinding | null | undefined;
function zstdBinding(): ZstdBinding | null {
  if (zstd === undefined) {
    try {
      zstd = require('zstd-napi/binding') as ZstdBinding;
    } catch {
      zstd = null;
    }
  }
  return zstd;
}

export const nodeCodecs: Codecs = {
  deflateRaw: deflateCluster,
  zstdCompress: zstdCluster,
  async inflateRaw(src, out) {
    try {
      // Z_SYNC_FLUSH: a truncated stream yields what it has instead of throwing,
      // and the length check below decides; trailing input after the end of the
      // stream is ignored, as qemu ignores the padding of the last sector.
      const r = inflateRawSync(src, { windowBits: 12, finishFlush: zc.Z_SYNC_FLUSH, maxOutputLength: out.length });
      if (r.length !== out.length) return false;
      out.set(r);
      return true;
    } catch {
      return false;
    }
  },
  async zstdDecompress(src, out) {
    const b = zstdBinding();
    if (!b) throw new Error('zstd support is not available (the zstd-napi module failed to load)');
    try {
      const dctx = new b.DCtx();
      let produced = 0;
      let consumed = 0;
      let ret = 0;
      // As qemu: frames may be concatenated; stop once the cluster is full, fail
      // on no progress, and require that the last frame is complete.
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
  },
};
