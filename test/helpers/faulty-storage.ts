/**
 * A Storage that fails like a host file does when the disk fills up or
 * goes bad: the mutating operation with a chosen number (writes, zero
 * writes, truncates and flushes are counted from 0) rejects with the
 * ImageError FileStorage would raise for ENOSPC or EIO. `sticky` keeps
 * every later mutating operation failing too (a disk that stays full);
 * otherwise the fault happens once. Reads never fail.
 *
 * It also keeps what the disk held at the last flush that succeeded, for
 * a crash right after the fault.
 */
import { ioError } from '../../src/errors.js';
import { MemoryStorage } from '../../src/io/memory.js';
import type { Storage } from '../../src/io/storage.js';

export type FaultErrno = 'ENOSPC' | 'EIO';

export interface FaultPlan {
  /** Number of the mutating operation that fails; Infinity for none. */
  at: number;
  errno: FaultErrno;
  sticky?: boolean;
  /** A failing write lands this fraction of its bytes first (a short write before the error). */
  partial?: number;
}

export class FaultyStorage implements Storage {
  readonly name: string;
  readonly writable = true;
  /** Mutating operations issued so far, failed ones included. */
  ops = 0;
  /** Number of the first operation that failed, if any did. */
  faultedAt: number | undefined;
  private readonly live: MemoryStorage;
  private durable: Uint8Array;

  constructor(
    base: Uint8Array,
    private readonly plan: FaultPlan = { at: Infinity, errno: 'EIO' },
    name = 'faulty',
  ) {
    this.name = name;
    this.live = new MemoryStorage(base, { name });
    this.durable = base.slice();
  }

  /** Whether operation `n` fails, as the plan says. */
  private fails(n: number): boolean {
    return n === this.plan.at || (this.plan.sticky === true && n > this.plan.at);
  }

  /** Count one mutating operation; throws the planned error if it is the one. */
  private begin(): boolean {
    const n = this.ops++;
    if (!this.fails(n)) return false;
    this.faultedAt ??= n;
    return true;
  }

  private error(): Error {
    // Exactly what FileStorage makes of Node's error for the same errno.
    const text = this.plan.errno === 'ENOSPC' ? 'no space left on device' : 'i/o error';
    return ioError(Object.assign(new Error(`${this.plan.errno}: ${text}, write`), { code: this.plan.errno }));
  }

  size(): Promise<number> {
    return this.live.size();
  }
  read(into: Uint8Array, offset: number): Promise<void> {
    return this.live.read(into, offset);
  }
  async write(data: Uint8Array, offset: number): Promise<void> {
    if (this.begin()) {
      const landed = Math.floor(data.length * (this.plan.partial ?? 0));
      if (landed > 0) await this.live.write(data.subarray(0, landed), offset);
      throw this.error();
    }
    await this.live.write(data, offset);
  }
  async writeZeroes(offset: number, length: number): Promise<void> {
    if (this.begin()) throw this.error();
    await this.live.writeZeroes(offset, length);
  }
  async truncate(size: number): Promise<void> {
    if (this.begin()) throw this.error();
    await this.live.truncate(size);
  }
  async flush(): Promise<void> {
    if (this.begin()) throw this.error();
    this.durable = this.live.bytes();
  }
  async close(): Promise<void> {}

  /** What the storage holds now: every operation that succeeded (and the landed part of a short write). */
  bytes(): Uint8Array {
    return this.live.bytes();
  }

  /** What survives a crash right now: the contents at the last successful flush. */
  durableBytes(): Uint8Array {
    return this.durable.slice();
  }
}
