/**
 * Exact-length reads from a socket: the handshake and the request loop ask
 * for N bytes and wait for them. Bytes arrive through 'data' events and
 * queue here; the socket pauses while more than one request's worth waits,
 * so a client that floods writes is throttled by TCP, not by memory.
 */
import type { Duplex } from 'node:stream';

/** The peer went away (or sent garbage) before the bytes we waited for. */
export class ConnectionClosed extends Error {
  constructor(message = 'connection closed') {
    super(message);
    this.name = 'ConnectionClosed';
  }
}

const HIGH_WATER = 64 * 1024 * 1024;

export class SocketReader {
  private chunks: Buffer[] = [];
  private queued = 0;
  private ended = false;
  private want: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | null = null;
  private readonly onData = (b: Buffer): void => {
    this.chunks.push(b);
    this.queued += b.length;
    if (this.queued > HIGH_WATER) this.stream.pause();
    this.serve();
  };
  private readonly onEnd = (): void => {
    this.ended = true;
    this.serve();
  };

  constructor(private readonly stream: Duplex) {
    stream.on('data', this.onData);
    stream.on('end', this.onEnd);
    stream.on('close', this.onEnd);
    stream.on('error', this.onEnd);
  }

  /** Stop listening (STARTTLS hands the socket to TLS); returns what was queued unread. */
  detach(): Buffer {
    this.stream.off('data', this.onData);
    this.stream.off('end', this.onEnd);
    this.stream.off('close', this.onEnd);
    this.stream.off('error', this.onEnd);
    const rest = Buffer.concat(this.chunks);
    this.chunks = [];
    this.queued = 0;
    return rest;
  }

  /** Exactly `n` bytes, or ConnectionClosed. */
  read(n: number): Promise<Buffer> {
    if (this.want) return Promise.reject(new Error('concurrent read'));
    return new Promise((resolve, reject) => {
      this.want = { n, resolve, reject };
      this.serve();
    });
  }

  private serve(): void {
    const w = this.want;
    if (!w) return;
    if (this.queued >= w.n) {
      this.want = null;
      w.resolve(this.take(w.n));
      if (this.queued <= HIGH_WATER && this.stream.isPaused()) this.stream.resume();
      return;
    }
    if (this.ended) {
      this.want = null;
      w.reject(new ConnectionClosed());
      return;
    }
    if (this.stream.isPaused()) this.stream.resume();
  }

  private take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0]!;
    if (first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      this.queued -= n;
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let pos = 0;
    while (pos < n) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length, n - pos);
      c.copy(out, pos, 0, k);
      pos += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    this.queued -= n;
    return out;
  }
}
