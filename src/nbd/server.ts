/**
 * serveNbd: export one Image over NBD on a TCP port or a Unix socket, as
 * qemu-nbd does. Each client runs its handshake and request loop on its own;
 * one that misbehaves or vanishes is dropped without touching the others.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { unlink } from 'node:fs/promises';
import type { Image } from '../block/image.js';
import { ImageError } from '../errors.js';
import { Connection } from './connection.js';
import type { ExportedBitmap, NbdExport } from './export.js';
import { handshake, type TlsUpgrade } from './handshake.js';
import { transmit } from './transmission.js';

export type NbdListen = { port?: number; host?: string } | { path: string };

export interface ServeNbdOptions {
  /** Where to listen: TCP (port 0 picks a free one; host default 0.0.0.0) or a Unix socket path. */
  listen: NbdListen;
  /** The export's name (qemu-nbd -x); default "". */
  exportName?: string;
  /** Text NBD_OPT_LIST and NBD_INFO_DESCRIPTION report (qemu-nbd -D). */
  description?: string;
  /** Refuse writes (qemu-nbd -r). Default: read-only when the image was opened read-only. */
  readOnly?: boolean;
  /** Most clients at once (qemu-nbd -e); 0 = unlimited. Default 1. Not 1: CAN_MULTI_CONN is advertised. */
  shared?: number;
  /** Keep serving after the last client leaves (qemu-nbd -t). Default true; false closes the server then. */
  persistent?: boolean;
  /** Persistent dirty bitmaps to offer as `qemu:dirty-bitmap:NAME` (qemu-nbd -B). */
  bitmaps?: readonly string[];
  /** Offer `qemu:allocation-depth` (qemu-nbd -A). */
  allocationDepth?: boolean;
  /** qemu's --discard: 'unmap' makes TRIM discard and lets WRITE_ZEROES release space; 'ignore' (default, as qemu-nbd) makes TRIM a no-op. */
  discard?: 'ignore' | 'unmap';
  /** qemu's --detect-zeroes. Default 'off'. */
  detectZeroes?: 'off' | 'on' | 'unmap';
  /** Flush after every write-type request (qemu's writethrough and directsync cache modes). */
  flushEachWrite?: boolean;
  /** Seconds a client may take to finish the handshake (qemu-nbd --handshake-limit); 0 = none. Default 10. */
  handshakeLimit?: number;
  /** TLS credentials (see nbdTls): STARTTLS is then required before anything else. */
  tls?: TlsUpgrade;
  /** Told about each client that was dropped for a protocol error or failed TLS. */
  onClientError?: (error: Error) => void;
}

export interface NbdServerHandle {
  /** Where the server listens: the TCP address (with the port picked) or the socket path. */
  readonly address: { host: string; port: number } | { path: string };
  /** Clients connected now. */
  readonly clients: number;
  /** Resolves when the server has closed (close(), or the last client left a non-persistent server). */
  readonly closed: Promise<void>;
  /** Stop listening, end every client (their in-flight requests finish first), flush the image. */
  close(): Promise<void>;
}

/**
 * Export `image` over NBD. The image stays the caller's: close() flushes it
 * but does not close it.
 *
 * @example
 * const img = await openImageFile('disk.qcow2', { writable: true });
 * const srv = await serveNbd(img, { listen: { port: 0, host: '127.0.0.1' } });
 * // nbdinfo nbd://127.0.0.1:${srv.address.port}
 * await srv.close();
 * await img.close();
 */
export async function serveNbd(image: Image, opts: ServeNbdOptions): Promise<NbdServerHandle> {
  const exp = await buildExport(image, opts);
  const shared = opts.shared ?? 1;
  const persistent = opts.persistent ?? true;
  const limitMs = (opts.handshakeLimit ?? 10) * 1000;
  const setup = { exports: [exp], tls: opts.tls };
  const sessions = new Set<{ conn: Connection; done: Promise<void> }>();
  const waiting: Socket[] = [];
  let everNegotiated = false;
  let closing: Promise<void> | undefined;
  let resolveClosed!: () => void;
  const closed = new Promise<void>((r) => (resolveClosed = r));

  const start = (socket: Socket): void => {
    socket.setNoDelay(true);
    const conn = new Connection(socket);
    const entry = { conn, done: Promise.resolve() };
    entry.done = session(conn).finally(() => {
      sessions.delete(entry);
      conn.destroy();
      const next = waiting.shift();
      if (next && !closing) start(next);
      else if (!closing && !persistent && everNegotiated && sessions.size === 0) void close();
    });
    sessions.add(entry);
  };

  const session = async (conn: Connection): Promise<void> => {
    const timer = limitMs > 0 ? setTimeout(() => conn.destroy(), limitMs) : undefined;
    let chosen: NbdExport | null;
    try {
      chosen = await handshake(conn, setup);
    } catch (e) {
      if (e instanceof Error && e.name !== 'ConnectionClosed') opts.onClientError?.(e);
      return;
    } finally {
      clearTimeout(timer);
    }
    if (!chosen) {
      conn.end();
      return;
    }
    everNegotiated = true;
    await transmit(conn, chosen);
    conn.end();
  };

  const server: Server = createServer({ pauseOnConnect: false }, (socket) => {
    socket.on('error', () => {});
    if (closing) return void socket.destroy();
    if (shared !== 0 && sessions.size >= shared) {
      // qemu-nbd stops accepting at its limit: the client waits until a slot frees.
      socket.pause();
      waiting.push(socket);
      socket.on('close', () => {
        const i = waiting.indexOf(socket);
        if (i >= 0) waiting.splice(i, 1);
      });
      return;
    }
    start(socket);
  });

  const listen = opts.listen;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => reject(new ImageError('io', `Failed to ${e.syscall === 'bind' || e.code === 'EADDRINUSE' ? 'bind socket' : 'listen'}: ${e.message}`, { cause: e, errno: e.code })));
    if ('path' in listen) server.listen(listen.path, resolve);
    else server.listen(listen.port ?? 10809, listen.host ?? '0.0.0.0', resolve);
  });
  server.on('error', () => {});
  const a = server.address();
  const address = 'path' in listen ? { path: listen.path } : { host: typeof a === 'object' && a ? a.address : '', port: typeof a === 'object' && a ? a.port : 0 };

  const close = (): Promise<void> => {
    closing ??= (async () => {
      const stopped = new Promise<void>((r) => server.close(() => r()));
      for (const s of waiting.splice(0)) s.destroy();
      for (const s of sessions) s.conn.destroy();
      await Promise.allSettled([...sessions].map((s) => s.done));
      await stopped;
      if ('path' in listen) await unlink(listen.path).catch(() => {});
      try {
        if (!exp.readOnly) await image.flush();
      } finally {
        resolveClosed();
      }
    })();
    return closing;
  };

  return {
    address,
    get clients() {
      return sessions.size;
    },
    closed,
    close,
  };
}

async function buildExport(image: Image, opts: ServeNbdOptions): Promise<NbdExport> {
  const readOnly = opts.readOnly ?? !image.driver.writable;
  if (!readOnly && !image.driver.writable) throw new ImageError('read-only', `Image '${image.filename}' is read-only`);
  const bitmaps: ExportedBitmap[] = [];
  if (opts.bitmaps && opts.bitmaps.length > 0) {
    const set = await image.driver.persistentBitmaps?.(false);
    for (const name of opts.bitmaps) {
      const b = set?.list().find((x) => x.name === name);
      if (!b) throw new ImageError('not-found', `Bitmap '${name}' is not found`);
      if (!b.bits) throw new ImageError('invalid', `Bitmap '${name}' is inconsistent`);
      bitmaps.push({ name, bits: b.bits });
    }
  }
  return {
    name: opts.exportName ?? '',
    description: opts.description,
    image,
    size: image.size - (image.size % 512),
    readOnly,
    multiConn: (opts.shared ?? 1) !== 1,
    allocationDepth: opts.allocationDepth ?? false,
    bitmaps,
    alignment: image.driver.requestAlignment ?? 1,
    unmap: opts.discard === 'unmap',
    detectZeroes: opts.detectZeroes ?? 'off',
    flushEachWrite: opts.flushEachWrite ?? false,
  };
}
