/**
 * Run an async function over a sequence of jobs with a bounded number in
 * flight, yielding the results in job order: read-ahead for writers that
 * must emit in order.
 */
export async function* orderedMap<J, R>(jobs: Iterable<J> | AsyncIterable<J>, parallel: number, fn: (job: J) => Promise<R>): AsyncGenerator<R> {
  const it = Symbol.asyncIterator in jobs ? (jobs as AsyncIterable<J>)[Symbol.asyncIterator]() : (jobs as Iterable<J>)[Symbol.iterator]();
  const queue: Promise<R>[] = [];
  let exhausted = false;
  try {
    for (;;) {
      while (!exhausted && queue.length < Math.max(1, parallel)) {
        const n = await it.next();
        if (n.done) {
          exhausted = true;
          break;
        }
        const p = fn(n.value);
        // Rejections are seen when the result's turn comes; until then they are not unhandled.
        p.catch(() => {});
        queue.push(p);
      }
      const head = queue.shift();
      if (!head) return;
      yield await head;
    }
  } finally {
    await it.return?.();
  }
}

/** `fn` with at most `limit` calls running at once; the rest wait their turn in call order. */
export function limitConcurrency<A extends unknown[], R>(fn: (...args: A) => Promise<R>, limit: number): (...args: A) => Promise<R> {
  let running = 0;
  const waiting: (() => void)[] = [];
  return async (...args: A): Promise<R> => {
    if (running >= limit) await new Promise<void>((r) => waiting.push(r));
    running++;
    try {
      return await fn(...args);
    } finally {
      running--;
      waiting.shift()?.();
    }
  };
}
