/**
 * Async interleaving is concurrency: two requests can both be between their
 * awaits. A Mutex serialises metadata updates; a RangeLock keeps requests
 * that touch the same bytes (or the same cluster being allocated) apart,
 * while requests on other ranges run in parallel.
 */
export class Mutex {
  private tail: Promise<void> = Promise.resolve();

  /** Run `fn` alone: callers queue in arrival order. */
  async run<T>(fn: () => Promise<T>): Promise<T> {
    const prev = this.tail;
    let release!: () => void;
    this.tail = new Promise<void>((r) => (release = r));
    await prev;
    try {
      return await fn();
    } finally {
      release();
    }
  }
}

interface Held {
  start: number;
  end: number;
  done: Promise<void>;
}

export class RangeLock {
  private held: Held[] = [];

  /** Run `fn` while holding [start, end); waits for every overlapping holder first. */
  async run<T>(start: number, end: number, fn: () => Promise<T>): Promise<T> {
    for (;;) {
      const clash = this.held.find((h) => h.start < end && start < h.end);
      if (!clash) break;
      await clash.done;
    }
    let release!: () => void;
    const entry: Held = { start, end, done: new Promise<void>((r) => (release = r)) };
    this.held.push(entry);
    try {
      return await fn();
    } finally {
      this.held.splice(this.held.indexOf(entry), 1);
      release();
    }
  }
}
