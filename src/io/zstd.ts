/**
 * zstd for Node from two bindings, each where it is strongest:
 * - @mongodb-js/zstd ships its compiled binary in per-platform registry
 *   packages and runs on libuv's thread pool, so clusters are compressed
 *   and decompressed on every core without worker threads. It has no level
 *   parameter (it always uses zstd's default, 3, which is qemu's level) and
 *   decodes whole frames only.
 * - zstd-napi is synchronous but exposes zstd's parameters: it compresses at
 *   any other level, and decodes when the asynchronous binding is missing.
 */
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

interface AsyncZstd {
  compress(data: Buffer, level?: number): Promise<Buffer>;
  decompress(data: Buffer): Promise<Buffer>;
}

interface SyncZstd {
  CCtx: new () => { compress2(dst: Uint8Array, src: Uint8Array): number; setParameter(p: number, v: number): void };
  DCtx: new () => { decompressStream(dst: Uint8Array, src: Uint8Array): [number, number, number] };
  CParameter: { compressionLevel: number };
  minCLevel(): number;
  maxCLevel(): number;
}

function load<T>(name: string): T | null {
  try {
    return require(name) as T;
  } catch {
    return null;
  }
}

let asyncZstd: AsyncZstd | null | undefined;
let syncZstd: SyncZstd | null | undefined;

/** The thread-pool binding, or null when its platform package is not installed. */
export function asyncBinding(): AsyncZstd | null {
  if (asyncZstd === undefined) asyncZstd = process.env.QIMG_ZSTD_ASYNC === '0' ? null : load<AsyncZstd>('@mongodb-js/zstd');
  return asyncZstd;
}

/** The synchronous binding, or null when it failed to build. */
export function syncBinding(): SyncZstd | null {
  if (syncZstd === undefined) syncZstd = load<SyncZstd>('zstd-napi/binding');
  return syncZstd;
}

/** The level qemu compresses at, and the one the asynchronous binding always uses. */
export const ZSTD_DEFAULT_LEVEL = 3;

export function asBuffer(u: Uint8Array): Buffer {
  return Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.length);
}
