/**
 * Cluster compression on every core. zlib runs on libuv's thread pool
 * through Node's asynchronous API; zstd-napi is synchronous, so zstd runs
 * in a pool of worker threads on machines with cores to spare, and on the
 * main thread otherwise. Output is framed as qemu writes it: raw
 * DEFLATE with a 4 KiB window at level 6, or one zstd frame at level 3.
 * A result that does not fit in `limit` bytes is null: the caller stores
 * that cluster uncompressed, as qemu does.
 */
import { deflateRaw } from 'node:zlib';
import { Worker } from 'node:worker_threads';
import { availableParallelism } from 'node:os';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

export function deflateCluster(src: Uint8Array, limit: number): Promise<Uint8Array | null> {
  return new Promise((resolve, reject) => {
    deflateRaw(src, { level: 6, windowBits: 12, memLevel: 9 }, (err, out) => {
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
parentPort.on('message', ({ id, src, limit }) => {
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

  compress(src: Uint8Array, limit: number): Promise<Uint8Array | null> {
    const id = this.nextId++;
    const w = this.workers[this.next++ % this.workers.length]!;
    // A referenced worker keeps the process alive only while work is pending.
    if (this.pending.size === 0) for (const x of this.workers) x.ref();
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      w.postMessage({ id, src, limit });
    });
  }

  private unrefAll(): void {
    for (const w of this.workers) w.unref();
  }
}

let pool: ZstdPool | undefined;
let local: { compress2(dst: Uint8Array, src: Uint8Array): number } | undefined;

/**
 * How many zstd workers. On two cores the main thread compresses itself:
 * measured on a 256 MiB convert, that was faster (0.69 s) than one worker
 * (0.73 s) or two (1.02 s), because a worker competes with the main thread
 * for the same cores and messages cost copies, and each worker adds tens of
 * MiB of resident memory. With more cores, workers take the spare ones.
 * QIMG_ZSTD_THREADS overrides (0: main thread).
 */
const ZSTD_THREADS = Number(process.env.QIMG_ZSTD_THREADS ?? (availableParallelism() > 2 ? availableParallelism() - 1 : 0));

export async function zstdCluster(src: Uint8Array, limit: number): Promise<Uint8Array | null> {
  if (ZSTD_THREADS <= 0) {
    local ??= new (require('zstd-napi/binding') as { CCtx: new () => { compress2(d: Uint8Array, s: Uint8Array): number } }).CCtx();
    const dst = new Uint8Array(limit);
    try {
      return dst.subarray(0, local.compress2(dst, src));
    } catch {
      return null;
    }
  }
  pool ??= new ZstdPool(ZSTD_THREADS);
  return pool.compress(src, limit);
}
