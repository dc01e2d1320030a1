/**
 * One client's socket: exact reads through SocketReader and replies written
 * whole (each reply's pieces go out in one synchronous burst, so replies of
 * concurrent requests never interleave on the wire).
 */
import type { Duplex } from 'node:stream';
import { SocketReader } from './reader.js';

export class Connection {
  reader: SocketReader;
  /** Structured replies were negotiated. */
  structured = false;
  /** The client set NBD_FLAG_C_NO_ZEROES. */
  noZeroes = false;
  /** TLS is on (after STARTTLS). */
  tls = false;
  /** Context ids selected by SET_META_CONTEXT. */
  meta: number[] = [];
  closed = false;

  constructor(public socket: Duplex) {
    this.reader = new SocketReader(socket);
    socket.on('close', () => {
      this.closed = true;
    });
  }

  /** Swap in a new transport (TLS over the same socket). */
  replace(socket: Duplex): void {
    this.reader.detach();
    this.socket = socket;
    this.reader = new SocketReader(socket);
    socket.on('close', () => {
      this.closed = true;
    });
  }

  /**
   * Write the pieces of one reply; resolves when the socket can take more
   * (backpressure), or at once if it is gone.
   */
  send(pieces: readonly Uint8Array[]): Promise<void> {
    const s = this.socket;
    if (this.closed || s.destroyed || !s.writable) return Promise.resolve();
    let ok = true;
    s.cork();
    for (const p of pieces) if (p.length > 0) ok = s.write(p);
    s.uncork();
    if (ok) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        s.off('drain', done);
        s.off('close', done);
        resolve();
      };
      s.on('drain', done);
      s.on('close', done);
    });
  }

  /** Close after what is queued has been written. */
  end(): void {
    if (!this.socket.destroyed) this.socket.end();
  }

  /** Close at once. */
  destroy(): void {
    this.closed = true;
    this.socket.destroy();
  }
}
