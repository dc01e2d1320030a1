/**
 * Cluster compression on every core. zlib and zstd at its default level
 * run on libuv's thread pool; zstd at other levels goes through zstd-napi,
 * which is synchronous, in worker threads on machines with cores to spare
 * and on the main thread otherwise. Output is framed as qemu writes it: raw
 * DEFLATE with a 4 KiB window (level 6 by default), or one zstd frame
 * (level 3 by default).
 * A result that does not fit in `limit` bytes is null: the caller stores
 * that cluster uncompressed, as qemu does.
 */
import { deflateRaw } from 'node:zlib';
import { Worker } from 'node:worker_threads';
import { availableParallelism } from 'node:os';
import { createRequire } from 'node:module';
import { zstdFrameAt } from '../block/zstd-frames.js';
import { asBuffer, asyncBinding, syncBinding, ZSTD_DEFAULT_LEVEL } from './zstd.js';

const require = createRequire(import.meta.url);

/** qemu's zlib level; any other is a qimg extension (`compression_level`). */
export const ZLIB_DEFAULT_LEVEL = 6;

export function deflateCluster(src: Uint8Array, limit: number, level = ZLIB_DEFAULT_LEVEL): Promise<Uint8Array | null> {
  return new Promise((resolve, reject) => {
    deflateRaw(src, { level, windowBits: 12, memLevel: 9 }, (err, out) => {
      if (err) reject(err);
      else resolve(out.length <= limit ? new Uint8Array(out.buffer, out.byteOffset, out.length) : null);
    });
  });
}

// The worker is CommonJS evaluated from a string, so it runs the same from
// dist/ and from sources under a TypeScript loader.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const binding = require(workerData.binding);
const cctx = new binding.CCtx();
let level = 3;
parentPort.on('message', ({ id, src, limit, lvl }) => {
  if (lvl !== level) cctx.setParameter(binding.CParameter.compressionLevel, (level = lvl));
  const dst = new Uint8Array(limit);
  let n = -1;
  try { n = cctx.compress2(dst, src); } catch { n = -1; }
  // The result's buffer moves to the main thread rather than being copied.
  const out = n < 0 ? null : dst.slice(0, n);
  parentPort.postMessage({ id, out }, out ? [out.buffer] : []);
});
`;

interface Pending {
  resolve: (v: Uint8Array | null) => void;
  reject: (e: unknown) => void;
}

class ZstdPool {
  private readonly workers: Worker[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;
  private next = 0;

  constructor(size: number) {
    const binding = require.resolve('zstd-napi/binding');
    for (let i = 0; i < size; i++) {
      // Small heaps: a worker only ever holds a cluster or two, and V8 would
      // otherwise let each worker's heap grow by tens of MiB before collecting.
      const w = new Worker(WORKER_SOURCE, {
        eval: true,
        workerData: { binding },
        resourceLimits: { maxYoungGenerationSizeMb: 2, maxOldGenerationSizeMb: 16 },
      });
      w.on('message', ({ id, out }: { id: number; out: Uint8Array | null }) => {
        const p = this.pending.get(id);
        this.pending.delete(id);
        p?.resolve(out);
        if (this.pending.size === 0) this.unrefAll();
      });
      w.on('error', (e) => {
        for (const p of this.pending.values()) p.reject(e);
        this.pending.clear();
      });
      w.unref();
      this.workers.push(w);
    }
  }

  compress(src: Uint8Array, limit: number, lvl: number): Promise<Uint8Array | null> {
    const id = this.nextId++;
    const w = this.workers[this.next++ % this.workers.length]!;
    // A referenced worker keeps the process alive only while work is pending.
    if (this.pending.size === 0) for (const x of this.workers) x.ref();
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      w.postMessage({ id, src, limit, lvl });
    });
  }

  private unrefAll(): void {
    for (const w of this.workers) w.unref();
  }
}

let pool: ZstdPool | undefined;
let local: { cctx: { compress2(dst: Uint8Array, src: Uint8Array): number; setParameter(p: number, v: number): void }; level: number } | undefined;

/**
 * How many zstd-napi workers, for levels the thread-pool binding cannot
 * set. On two cores the main thread compresses itself: measured on a
 * 256 MiB convert, that was faster (0.69 s) than one worker (0.73 s) or two
 * (1.02 s), because a worker competes with the main thread for the same
 * cores and messages cost copies. QIMG_ZSTD_THREADS overrides (0: main thread).
 */
const ZSTD_THREADS = Number(process.env.QIMG_ZSTD_THREADS ?? (availableParallelism() > 2 ? availableParallelism() - 1 : 0));

/** One zstd frame that records its content size, or null if it does not fit in `limit`. */
export async function zstdCluster(src: Uint8Array, limit: number, level = ZSTD_DEFAULT_LEVEL): Promise<Uint8Array | null> {
  const fast = level === ZSTD_DEFAULT_LEVEL ? asyncBinding() : null;
  if (fast) {
    const frame = withContentSize(await fast.compress(asBuffer(src)), src.length);
    return frame && frame.length <= limit ? frame : null;
  }
  const b = syncBinding();
  if (!b) throw new Error('zstd compression is not available (zstd-napi could not be loaded)');
  if (ZSTD_THREADS <= 0) {
    local ??= { cctx: new b.CCtx(), level: ZSTD_DEFAULT_LEVEL };
    if (local.level !== level) local.cctx.setParameter(b.CParameter.compressionLevel, (local.level = level));
    const dst = new Uint8Array(limit);
    try {
      return dst.subarray(0, local.cctx.compress2(dst, src));
    } catch {
      return null;
    }
  }
  pool ??= new ZstdPool(ZSTD_THREADS);
  return pool.compress(src, limit, level);
}

/**
 * The thread-pool binding streams, so its frame header leaves the content
 * size out. It is put in (a 4-byte Frame_Content_Size field, RFC 8878
 * 3.1.1.1.4; nothing in a frame depends on the header's length), so that
 * readers can decode the frame whole with memory bounded by the cluster.
 * Null for a header this does not expect; the caller then stores the
 * cluster uncompressed.
 */
function withContentSize(frame: Buffer, size: number): Uint8Array | null {
  if (frame.length < 6 || frame.readUInt32LE(0) !== 0xfd2fb528) return null;
  const fhd = frame[4]!;
  if (fhd & 0xe0) return size === zstdFrameAt(frame, 0)?.contentSize ? frame : null; // already sized or single-segment
  const at = 5 + 1 + [0, 1, 2, 4][fhd & 3]!; // after the window descriptor and dictionary id
  const out = new Uint8Array(frame.length + 4);
  out.set(frame.subarray(0, at));
  out[4] = fhd | 0x80;
  new DataView(out.buffer).setUint32(at, size, true);
  out.set(frame.subarray(at), at + 4);
  return out;
}
