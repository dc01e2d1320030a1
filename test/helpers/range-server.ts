/**
 * A small HTTP server for range-reading tests: serves one file's bytes with
 * single-range support, logs every request, and can misbehave on demand
 * (ignore ranges, encode the body, fail with 500s, answer slowly, change
 * the file, hide Content-Range).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface RangeServerFaults {
  /** Answer 200 with the whole file, ignoring Range. */
  ignoreRange?: boolean;
  /** Claim Content-Encoding: gzip. */
  encoded?: boolean;
  /** Fail this many requests with 500 before answering. */
  failFirst?: number;
  /** Delay every answer by this many ms. */
  delayMs?: number;
  /** Answer nothing (and never close) for requests whose start is this offset. */
  hangAt?: number;
  /** Omit Content-Range (as a browser does when the header is not exposed). */
  hideContentRange?: boolean;
  /** Status to answer with instead (e.g. 403, 404). */
  status?: number;
  /** Apply the faults above only from this request on (0-based; default 0): a failure mid-way. */
  from?: number;
  /** From request `from` on, serve these bytes instead (a file replaced mid-read). */
  changeTo?: Uint8Array;
  /** From request `from` on, drop the connection after half the body (a truncated answer). */
  truncate?: boolean;
}

export interface LoggedRequest {
  method: string;
  range: string | undefined;
  authorization: string | undefined;
}

export interface RangeServer {
  url: string;
  log: LoggedRequest[];
  faults: RangeServerFaults;
  /** Replace the served bytes (a new ETag and Last-Modified). */
  setBody(body: Uint8Array): void;
  close(): Promise<void>;
}

export async function startRangeServer(body: Uint8Array, path = '/disk.img'): Promise<RangeServer> {
  let data = body;
  let version = 1;
  const log: LoggedRequest[] = [];
  const faults: RangeServerFaults = {};
  const sockets = new Set<import('node:net').Socket>();
  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    log.push({ method: req.method ?? '', range: req.headers.range, authorization: req.headers.authorization });
    const active = log.length - 1 >= (faults.from ?? 0);
    const f: RangeServerFaults = active ? faults : {};
    if (active && faults.changeTo && data !== faults.changeTo) {
      data = faults.changeTo;
      version++;
    }
    const answer = (): void => {
      if (req.url?.split('?')[0] !== path) return void res.writeHead(404).end();
      if (f.status) return void res.writeHead(f.status).end();
      if (f.failFirst && f.failFirst > 0) {
        faults.failFirst!--;
        return void res.writeHead(500).end('boom');
      }
      const headers: Record<string, string> = {
        'accept-ranges': 'bytes',
        etag: `"v${version}"`,
        'last-modified': new Date(Date.UTC(2026, 0, version)).toUTCString(),
        'content-type': 'application/octet-stream',
      };
      if (f.encoded) headers['content-encoding'] = 'gzip';
      const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
      if (req.method === 'HEAD') return void res.writeHead(200, { ...headers, 'content-length': String(data.length) }).end();
      if (!m || f.ignoreRange) return void res.writeHead(200, { ...headers, 'content-length': String(data.length) }).end(data);
      const start = Number(m[1]);
      if (f.hangAt === start) return;
      if (start >= data.length) return void res.writeHead(416, { 'content-range': `bytes */${data.length}` }).end();
      const end = Math.min(m[2] ? Number(m[2]) : data.length - 1, data.length - 1);
      if (!f.hideContentRange) headers['content-range'] = `bytes ${start}-${end}/${data.length}`;
      res.writeHead(206, { ...headers, 'content-length': String(end - start + 1) });
      if (f.truncate) {
        res.write(data.subarray(start, start + Math.floor((end - start + 1) / 2)));
        return void setTimeout(() => res.socket?.destroy(), 20);
      }
      res.end(data.subarray(start, end + 1));
    };
    if (f.delayMs) setTimeout(answer, f.delayMs);
    else answer();
  };
  const server: Server = createServer(handler);
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}${path}`,
    log,
    faults,
    setBody(b) {
      data = b;
      version++;
    },
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}
