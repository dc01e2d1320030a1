/**
 * A read-only Storage over HTTP(S) range requests, on `fetch` alone, so the
 * same code serves Node and browsers (qemu's curl driver role).
 *
 * The file is read in fixed blocks kept in a bounded LRU cache. Misses of
 * reads made in the same tick are gathered, and runs of consecutive missing
 * blocks go out as one `Range: bytes=a-b` request; a block already on its
 * way is waited for, not asked for again. A read that continues the previous
 * one also fetches `readahead` bytes past it. Only single ranges with a start
 * are sent and no custom header is needed, so a browser sends no CORS
 * preflight for them.
 *
 * The first response's ETag and Last-Modified pin the file: a later response
 * that differs means the file changed under the reader, and reading fails
 * rather than mixing two versions.
 */
import { ImageError } from '../errors.js';
import type { Storage } from './storage.js';
import { displayUrl, HttpError } from './http-errors.js';

export interface HttpStorageOptions {
  /** Request headers, such as Authorization. Never logged or put in messages. */
  headers?: Readonly<Record<string, string>>;
  /** Milliseconds a request may take before it is abandoned (and retried). Default 30 000. */
  timeout?: number;
  /** Cache block size in bytes, a power of two from 4 KiB. Default 256 KiB. */
  blockSize?: number;
  /** Bytes of blocks the cache keeps. Default 64 MiB. */
  cacheBytes?: number;
  /** Bytes fetched past a read that continues the one before (qemu's curl `readahead`). Default 256 KiB. */
  readahead?: number;
  /** Attempts after the first for failures that may pass (connection errors, 5xx, 429, timeouts). Default 3. */
  retries?: number;
  /** The largest single request, in bytes. Default 8 MiB. */
  maxRequestBytes?: number;
  /** The fetch to use (default: the global one). */
  fetch?: typeof fetch;
  /** Passed to fetch (browsers: 'include' sends cookies cross-origin). */
  credentials?: 'omit' | 'same-origin' | 'include';
  /** Passed to fetch as `cache` (for example 'no-store'). */
  cache?: 'default' | 'no-store' | 'reload' | 'no-cache' | 'force-cache' | 'only-if-cached';
  /** The name the storage reports (default: the URL without credentials or query). */
  name?: string;
  /** Counters to add this storage's requests into (several storages may share one); its `stats` otherwise. */
  stats?: HttpStats;
}

/** Fresh counters, to pass as HttpStorageOptions.stats. */
export function httpStats(): HttpStats {
  return { requests: 0, bytes: 0, cacheHits: 0, cacheMisses: 0, retries: 0 };
}

/** What a remote read cost: kept by every HttpStorage, printed by `--debug-io` style options. */
export interface HttpStats {
  /** HTTP requests sent, retries included. */
  requests: number;
  /** Body bytes received. */
  bytes: number;
  /** Blocks found in the cache (or already on their way). */
  cacheHits: number;
  /** Blocks that had to be fetched. */
  cacheMisses: number;
  /** Requests retried after a transient failure. */
  retries: number;
}

interface Validators {
  etag: string | null;
  lastModified: string | null;
}

const KiB = 1024;
const MiB = 1024 * KiB;

export class HttpStorage implements Storage {
  readonly name: string;
  readonly writable = false;
  readonly noBlockInfo = true;
  readonly url: string;
  readonly stats: HttpStats;
  private readonly opts: Required<Pick<HttpStorageOptions, 'timeout' | 'blockSize' | 'cacheBytes' | 'readahead' | 'retries' | 'maxRequestBytes'>> & HttpStorageOptions;
  private readonly fetchFn: typeof fetch;
  private readonly cache = new Map<number, Uint8Array>();
  private readonly inFlight = new Map<number, Promise<Uint8Array>>();
  private pending = new Map<number, { resolve: (b: Uint8Array) => void; reject: (e: unknown) => void }>();
  private flushScheduled = false;
  private lastEnd = -1;
  /** The last block read-ahead has asked for. */
  private aheadTo = -1;
  private closed = false;
  private readonly closing = new AbortController();

  private constructor(
    url: string,
    private readonly length: number,
    private readonly validators: Validators,
    opts: HttpStorageOptions,
  ) {
    this.url = url;
    this.stats = opts.stats ?? httpStats();
    this.name = opts.name ?? displayUrl(url);
    const blockSize = opts.blockSize ?? 256 * KiB;
    if (!Number.isInteger(Math.log2(blockSize)) || blockSize < 4 * KiB) throw new ImageError('bad-argument', 'HTTP block size must be a power of two of at least 4 KiB');
    this.opts = {
      ...opts,
      timeout: opts.timeout ?? 30_000,
      blockSize,
      cacheBytes: Math.max(opts.cacheBytes ?? 64 * MiB, blockSize),
      readahead: Math.max(0, opts.readahead ?? 256 * KiB),
      retries: Math.max(0, opts.retries ?? 3),
      maxRequestBytes: Math.max(opts.maxRequestBytes ?? 8 * MiB, blockSize),
    };
    this.fetchFn = opts.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /**
   * Open a URL: one request for the first block, which tells the size (from
   * Content-Range, or a HEAD's Content-Length where the header is hidden),
   * the validators, and whether the server honours ranges.
   */
  static async open(url: string | URL, opts: HttpStorageOptions = {}): Promise<HttpStorage> {
    const href = String(url);
    opts = { ...opts, stats: opts.stats ?? httpStats() };
    let parsed: URL;
    try {
      parsed = new URL(href);
    } catch {
      throw new ImageError('bad-argument', `Invalid URL '${displayUrl(href)}'`);
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new ImageError('bad-argument', `Unsupported URL scheme '${parsed.protocol}'`);
    if (parsed.username || parsed.password) {
      // fetch refuses URLs with credentials: they become Basic authorization, as curl sends them.
      const user = `${decodeURIComponent(parsed.username)}:${decodeURIComponent(parsed.password)}`;
      const hasAuth = Object.keys(opts.headers ?? {}).some((k) => k.toLowerCase() === 'authorization');
      if (!hasAuth) opts = { ...opts, headers: { ...opts.headers, Authorization: `Basic ${base64(new TextEncoder().encode(user))}` } };
      opts = { ...opts, name: opts.name ?? displayUrl(href) };
      parsed.username = '';
      parsed.password = '';
    }
    const href2 = parsed.href;
    const probe = new HttpStorage(href2, 0, { etag: null, lastModified: null }, opts);
    const first = await probe.request(0, probe.opts.blockSize - 1, true);
    const storage = new HttpStorage(href2, first.size, first.validators, opts);
    if (first.body.length > 0) storage.remember(0, first.body);
    return storage;
  }

  async size(): Promise<number> {
    return this.length;
  }

  async read(into: Uint8Array, offset: number): Promise<void> {
    if (this.closed) throw new ImageError('io', `${this.name}: read after close`);
    const end = Math.min(offset + into.length, this.length);
    if (end < offset + into.length) into.fill(0, Math.max(0, end - offset));
    if (offset >= end) return;
    const bs = this.opts.blockSize;
    const first = Math.floor(offset / bs);
    const last = Math.floor((end - 1) / bs);
    // Sequential access: ask for the blocks after this read too, without
    // waiting for them, half a window at a time so that read-ahead goes out
    // in few requests. The window is at most half the cache, or the blocks
    // would be evicted before they are read.
    const window = Math.min(Math.floor(this.opts.readahead / bs), Math.floor(this.opts.cacheBytes / bs / 2));
    if (offset === this.lastEnd && window > 0 && last + window / 2 >= this.aheadTo) {
      const to = Math.min(last + window, Math.floor((this.length - 1) / bs));
      for (let b = Math.max(last + 1, this.aheadTo + 1); b <= to; b++) void this.block(b, false).catch(() => {});
      this.aheadTo = Math.max(this.aheadTo, to);
    }
    this.lastEnd = end;
    const blocks = [];
    for (let b = first; b <= last; b++) blocks.push(this.block(b, true));
    const got = await Promise.all(blocks);
    for (let i = 0; i < got.length; i++) {
      const blockStart = (first + i) * bs;
      const from = Math.max(offset, blockStart);
      const to = Math.min(end, blockStart + got[i]!.length);
      into.set(got[i]!.subarray(from - blockStart, to - blockStart), from - offset);
    }
  }

  async write(): Promise<void> {
    throw new ImageError('read-only', `${this.name}: an HTTP source is read-only`);
  }

  async truncate(): Promise<void> {
    throw new ImageError('read-only', `${this.name}: an HTTP source is read-only`);
  }

  async flush(): Promise<void> {}

  async close(): Promise<void> {
    this.closed = true;
    this.closing.abort();
    this.cache.clear();
  }

  /** Block `b`, from the cache, from a request on its way, or fetched with the next batch. */
  private block(b: number, counted: boolean): Promise<Uint8Array> {
    const hit = this.cache.get(b);
    if (hit) {
      this.cache.delete(b); // most recently used goes last
      this.cache.set(b, hit);
      if (counted) this.stats.cacheHits++;
      return Promise.resolve(hit);
    }
    const flying = this.inFlight.get(b);
    if (flying) {
      if (counted) this.stats.cacheHits++;
      return flying;
    }
    if (counted) this.stats.cacheMisses++;
    const p = new Promise<Uint8Array>((resolve, reject) => this.pending.set(b, { resolve, reject }));
    this.inFlight.set(b, p);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      queueMicrotask(() => this.flushPending());
    }
    return p;
  }

  /** Send the gathered misses: one request per run of consecutive blocks. */
  private flushPending(): void {
    this.flushScheduled = false;
    const waiting = this.pending;
    this.pending = new Map();
    const ids = [...waiting.keys()].sort((a, b) => a - b);
    const maxBlocks = Math.floor(this.opts.maxRequestBytes / this.opts.blockSize);
    for (let i = 0; i < ids.length; ) {
      let j = i + 1;
      while (j < ids.length && ids[j] === ids[j - 1]! + 1 && j - i < maxBlocks) j++;
      void this.fetchRun(ids.slice(i, j), waiting);
      i = j;
    }
  }

  private async fetchRun(ids: number[], waiting: Map<number, { resolve: (b: Uint8Array) => void; reject: (e: unknown) => void }>): Promise<void> {
    const bs = this.opts.blockSize;
    const start = ids[0]! * bs;
    const end = Math.min((ids.at(-1)! + 1) * bs, this.length) - 1;
    try {
      const { body } = await this.request(start, end, false);
      for (const b of ids) {
        const data = body.slice(b * bs - start, Math.min((b + 1) * bs, this.length) - start);
        this.remember(b, data);
        this.inFlight.delete(b);
        waiting.get(b)!.resolve(data);
      }
    } catch (e) {
      for (const b of ids) {
        this.inFlight.delete(b);
        waiting.get(b)!.reject(e);
      }
    }
  }

  private remember(b: number, data: Uint8Array): void {
    this.cache.set(b, data);
    const maxBlocks = Math.floor(this.opts.cacheBytes / this.opts.blockSize);
    while (this.cache.size > maxBlocks) this.cache.delete(this.cache.keys().next().value!);
  }

  /**
   * GET bytes=start-end, with retries for what may pass. On the opening
   * request (`opening`) the size comes from the answer; later answers must
   * match the pinned validators and cover exactly the range asked for.
   */
  private async request(start: number, end: number, opening: boolean): Promise<{ body: Uint8Array; size: number; validators: Validators }> {
    let attempt = 0;
    for (;;) {
      try {
        return await this.requestOnce(start, end, opening);
      } catch (e) {
        if (!(e instanceof HttpError) || !transient(e) || attempt >= this.opts.retries || this.closed) throw e;
        attempt++;
        this.stats.retries++;
        await sleep(100 * 2 ** (attempt - 1) * (1 + Math.random()));
      }
    }
  }

  private async requestOnce(start: number, end: number, opening: boolean): Promise<{ body: Uint8Array; size: number; validators: Validators }> {
    // Opening errors are prefixed by the caller's "Could not open 'URL'"; later ones name the file.
    const at = opening ? '' : `${this.name}: `;
    const signal = AbortSignal.any([AbortSignal.timeout(this.opts.timeout), this.closing.signal]);
    let res: Response;
    this.stats.requests++;
    try {
      // `cache` is a browser fetch option that Node's types lack.
      const init = {
        headers: { ...this.opts.headers, Range: `bytes=${start}-${end}` },
        signal,
        credentials: this.opts.credentials,
        cache: this.opts.cache,
        redirect: 'follow',
      } as RequestInit;
      res = await this.fetchFn(this.url, init);
    } catch (e) {
      if (signal.aborted && !this.closing.signal.aborted) throw new HttpError('timeout', `${at}no answer within ${this.opts.timeout} ms`, { cause: e });
      throw new HttpError('network', `${at}${networkReason(e)}`, { cause: e });
    }
    try {
      if (opening && res.status === 416) {
        // An empty file has no byte 0.
        return { body: new Uint8Array(0), size: totalFromContentRange(res.headers.get('content-range')) ?? 0, validators: validatorsOf(res) };
      }
      if (res.status === 404 || res.status === 410) {
        throw new HttpError('status', `${at}HTTP ${res.status} ${res.statusText || 'Not Found'}`, { status: res.status, code: 'not-found' });
      }
      if (res.status !== 206 && res.status !== 200) {
        throw new HttpError('status', `${at}HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ''}`, { status: res.status });
      }
      const encoding = res.headers.get('content-encoding');
      if (encoding && encoding.toLowerCase() !== 'identity') {
        throw new HttpError('encoded', `${at}the server sent the data ${encoding}-encoded; serve the image uncompressed (for example as application/octet-stream)`);
      }
      const validators = validatorsOf(res);
      if (!opening) this.checkUnchanged(validators);
      if (res.status === 200) {
        // The whole file: fine for a file that fits in the first request, a refusal otherwise.
        const length = Number(res.headers.get('content-length') ?? NaN);
        if (!opening || !(length <= this.opts.blockSize)) {
          throw new HttpError('no-range', `${at}the server does not support range requests (it answered with the whole file)`);
        }
        const body = await readBody(res, length);
        this.stats.bytes += body.length;
        return { body, size: body.length, validators };
      }
      const range = parseContentRange(res.headers.get('content-range'));
      let size = this.length;
      if (opening) {
        size = range?.total ?? (await this.sizeFromHead());
      }
      if (range && (range.start !== start || range.end > end)) {
        throw new HttpError('protocol', `${at}asked for bytes ${start}-${end}, the server sent ${range.start}-${range.end}`);
      }
      const expected = Math.min(end, size - 1) - start + 1;
      const body = await readBody(res, expected);
      this.stats.bytes += body.length;
      if (body.length !== expected) {
        throw new HttpError('protocol', `${at}short answer: ${body.length} of ${expected} bytes at offset ${start}`);
      }
      return { body, size, validators };
    } catch (e) {
      await res.body?.cancel().catch(() => {});
      throw e;
    }
  }

  /** Where Content-Range is hidden (a browser without Access-Control-Expose-Headers): a HEAD's Content-Length. */
  private async sizeFromHead(): Promise<number> {
    this.stats.requests++;
    const res = await this.fetchFn(this.url, { method: 'HEAD', headers: { ...this.opts.headers }, signal: AbortSignal.timeout(this.opts.timeout), credentials: this.opts.credentials });
    const n = Number(res.headers.get('content-length') ?? NaN);
    if (!res.ok || !Number.isSafeInteger(n)) throw new HttpError('protocol', `the server tells neither Content-Range nor Content-Length: the size is unknown`);
    return n;
  }

  private checkUnchanged(v: Validators): void {
    const pinned = this.validators;
    const etagChanged = pinned.etag !== null && v.etag !== null && pinned.etag !== v.etag;
    const dateChanged = pinned.lastModified !== null && v.lastModified !== null && pinned.lastModified !== v.lastModified;
    if (etagChanged || dateChanged) {
      throw new HttpError('changed', `${this.name}: the file changed on the server while it was being read`);
    }
  }
}

function validatorsOf(res: Response): Validators {
  return { etag: res.headers.get('etag'), lastModified: res.headers.get('last-modified') };
}

function transient(e: HttpError): boolean {
  if (e.failure === 'network' || e.failure === 'timeout') return true;
  return e.failure === 'status' && e.status !== undefined && (e.status >= 500 || e.status === 429 || e.status === 408);
}

function parseContentRange(h: string | null): { start: number; end: number; total: number | undefined } | null {
  const m = h ? /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(h.trim()) : null;
  if (!m) return null;
  return { start: Number(m[1]), end: Number(m[2]), total: m[3] === '*' ? undefined : Number(m[3]) };
}

function totalFromContentRange(h: string | null): number | undefined {
  const m = h ? /^bytes \*\/(\d+)$/.exec(h.trim()) : null;
  return m ? Number(m[1]) : undefined;
}

/** The body, refusing to hold more than `limit` bytes whatever the server sends. */
async function readBody(res: Response, limit: number): Promise<Uint8Array> {
  const out = new Uint8Array(limit);
  let n = 0;
  const reader = res.body?.getReader();
  if (!reader) return out.subarray(0, 0);
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (n + value.length > limit) {
      await reader.cancel().catch(() => {});
      throw new HttpError('protocol', `the server sent more than the ${limit} bytes asked for`);
    }
    out.set(value, n);
    n += value.length;
  }
  return out.subarray(0, n);
}

/** Why fetch failed, by error code only: fetch's own messages may quote the URL. */
function networkReason(e: unknown): string {
  for (let c: unknown = e, depth = 0; c instanceof Error && depth < 5; depth++) {
    const code = (c as { code?: unknown }).code;
    if (typeof code === 'string' && !code.startsWith('UND_ERR_')) return `could not connect (${code})`;
    c = c instanceof AggregateError && c.errors.length ? c.errors[0] : c.cause;
  }
  return 'could not connect';
}

function base64(bytes: Uint8Array): string {
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
