/**
 * A Storage that records every write, truncate and flush, so a test can
 * rebuild what the disk could hold had power failed at any point: every
 * prefix of the operations, and for writes issued since the last completed
 * flush, any subset of them (the disk may have reordered or dropped them).
 */
import { MemoryStorage } from '../../src/io/memory.js';
import type { Storage } from '../../src/io/storage.js';

export type Op =
  | { kind: 'write'; offset: number; data: Uint8Array }
  | { kind: 'truncate'; size: number }
  | { kind: 'flush' };

export class RecordingStorage implements Storage {
  readonly name: string;
  readonly writable = true;
  readonly ops: Op[] = [];
  private readonly base: Uint8Array;
  private readonly live: MemoryStorage;

  constructor(base: Uint8Array = new Uint8Array(0), name = 'recording') {
    this.name = name;
    this.base = base.slice();
    this.live = new MemoryStorage(base, { name });
  }

  size(): Promise<number> {
    return this.live.size();
  }
  read(into: Uint8Array, offset: number): Promise<void> {
    return this.live.read(into, offset);
  }
  async write(data: Uint8Array, offset: number): Promise<void> {
    this.ops.push({ kind: 'write', offset, data: data.slice() });
    await this.live.write(data, offset);
  }
  async writeZeroes(offset: number, length: number): Promise<void> {
    await this.write(new Uint8Array(length), offset);
  }
  async truncate(size: number): Promise<void> {
    this.ops.push({ kind: 'truncate', size });
    await this.live.truncate(size);
  }
  async flush(): Promise<void> {
    this.ops.push({ kind: 'flush' });
  }
  async close(): Promise<void> {}

  /** The current contents. */
  bytes(): Uint8Array {
    return this.live.bytes();
  }

  /**
   * The disk after a crash once `prefix` operations were issued, where the
   * writes after the last flush in that prefix whose indexes are in `lost`
   * never reached the disk.
   */
  crashImage(prefix: number, lost: ReadonlySet<number> = new Set()): Uint8Array {
    const disk = new MemoryStorage(this.base);
    const lastFlush = this.lastFlushBefore(prefix);
    for (let i = 0; i < prefix; i++) {
      const op = this.ops[i]!;
      if (op.kind === 'write' && !(i > lastFlush && lost.has(i))) void disk.write(op.data, op.offset);
      else if (op.kind === 'truncate') void disk.truncate(op.size);
    }
    return disk.bytes();
  }

  /** Index of the last flush among the first `prefix` operations, or -1. */
  lastFlushBefore(prefix: number): number {
    for (let i = prefix - 1; i >= 0; i--) if (this.ops[i]!.kind === 'flush') return i;
    return -1;
  }

  /** Indexes of the writes issued after the last flush in the prefix. */
  unflushedWrites(prefix: number): number[] {
    const out: number[] = [];
    for (let i = this.lastFlushBefore(prefix) + 1; i < prefix; i++) if (this.ops[i]!.kind === 'write') out.push(i);
    return out;
  }
}
