import type { Storage } from './storage.js';

/** Storage held in memory: for tests, and for callers that already hold the bytes. */
export class MemoryStorage implements Storage {
  readonly name: string;
  readonly writable: boolean;
  private buf: Uint8Array;
  private length: number;

  constructor(initial: Uint8Array = new Uint8Array(0), opts: { name?: string; writable?: boolean } = {}) {
    this.name = opts.name ?? 'memory';
    this.writable = opts.writable ?? true;
    this.buf = new Uint8Array(Math.max(initial.length, 4096));
    this.buf.set(initial);
    this.length = initial.length;
  }

  /** The current contents (a copy). */
  bytes(): Uint8Array {
    return this.buf.slice(0, this.length);
  }

  async size(): Promise<number> {
    return this.length;
  }

  async read(into: Uint8Array, offset: number): Promise<void> {
    const end = Math.min(this.length, offset + into.length);
    if (offset >= end) {
      into.fill(0);
      return;
    }
    into.set(this.buf.subarray(offset, end));
    into.fill(0, end - offset);
  }

  async write(data: Uint8Array, offset: number): Promise<void> {
    this.ensure(offset + data.length);
    this.buf.set(data, offset);
    this.length = Math.max(this.length, offset + data.length);
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    const end = Math.min(this.length, offset + length);
    if (end > offset) this.buf.fill(0, offset, end);
    if (offset + length > this.length) {
      this.ensure(offset + length);
      this.length = offset + length;
    }
  }

  async truncate(size: number): Promise<void> {
    this.ensure(size);
    if (size < this.length) this.buf.fill(0, size, this.length);
    this.length = size;
  }

  async flush(): Promise<void> {}
  async close(): Promise<void> {}

  private ensure(capacity: number): void {
    if (capacity <= this.buf.length) return;
    const next = new Uint8Array(Math.max(capacity, this.buf.length * 2));
    next.set(this.buf.subarray(0, this.length));
    this.buf = next;
  }
}
