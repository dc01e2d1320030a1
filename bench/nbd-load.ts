/**
 * NBD load test: several clients issue random reads, writes, zeroes, trims
 * and flushes for a bounded time against `qimg serve` and then `qemu-nbd`
 * serving the same kind of image. Each client writes only its own region
 * (so a model of the guest bytes is exact) and all of them read a shared
 * region. Afterwards the image must check clean and match the model.
 *
 *   node --import tsx bench/nbd-load.ts [--clients 4] [--seconds 10] [--depth 8] [--only qimg|qemu-nbd]
 *
 * LOAD_SKIP=trim (or zero) leaves that kind of request out of the mix. Both servers run with
 * --discard=unmap, so trims zero whole qcow2 clusters and the model stays exact.
 *
 * Prints requests per second and p50/p99 latency for both servers.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { SocketReader } from '../src/nbd/reader.js';

const arg = (name: string, dflt: number): number => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
};
const CLIENTS = arg('clients', 4);
const SECONDS = arg('seconds', 10);
const DEPTH = arg('depth', 8);
const REGION = 32 * 1024 * 1024;
const SHARED = 32 * 1024 * 1024;
const SIZE = SHARED + CLIENTS * REGION;
const CLUSTER = 65536;

interface Pending {
  resolve(v: { error: number; data?: Buffer }): void;
  readLen: number;
}

/** A pipelining NBD client (simple replies: no structured replies negotiated). */
class Client {
  private readonly reader: SocketReader;
  private readonly pending = new Map<bigint, Pending>();
  private next = 1n;
  private constructor(private readonly sock: Socket) {
    this.reader = new SocketReader(sock);
  }

  static async open(path: string): Promise<Client> {
    const sock = connect(path);
    await new Promise<void>((r, j) => {
      sock.once('connect', () => r());
      sock.once('error', j);
    });
    sock.setNoDelay(true);
    const c = new Client(sock);
    await c.reader.read(18);
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(3);
    const go = Buffer.alloc(16 + 6);
    go.writeBigUInt64BE(0x49484156454f5054n, 0);
    go.writeUInt32BE(7, 8);
    go.writeUInt32BE(6, 12);
    sock.write(Buffer.concat([flags, go]));
    for (;;) {
      const h = await c.reader.read(20);
      const type = h.readUInt32BE(12);
      await c.reader.read(h.readUInt32BE(16));
      if (type === 1) break;
      if (type >= 0x80000000) throw new Error(`GO refused: ${type}`);
    }
    void c.loop();
    return c;
  }

  private async loop(): Promise<void> {
    try {
      for (;;) {
        const h = await this.reader.read(16);
        const handle = h.readBigUInt64BE(8);
        const p = this.pending.get(handle)!;
        this.pending.delete(handle);
        const error = h.readUInt32BE(4);
        const data = error === 0 && p.readLen > 0 ? await this.reader.read(p.readLen) : undefined;
        p.resolve({ error, data });
      }
    } catch {
      for (const p of this.pending.values()) p.resolve({ error: -1 });
    }
  }

  request(type: number, flags: number, offset: number, length: number, payload?: Buffer): Promise<{ error: number; data?: Buffer }> {
    const handle = this.next++;
    const h = Buffer.alloc(28);
    h.writeUInt32BE(0x25609513, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(handle, 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length, 24);
    return new Promise((resolve) => {
      this.pending.set(handle, { resolve, readLen: type === 0 ? length : 0 });
      this.sock.write(payload ? Buffer.concat([h, payload]) : h);
    });
  }

  async close(): Promise<void> {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(0x25609513, 0);
    h.writeUInt16BE(2, 6);
    this.sock.end(h);
    await new Promise((r) => this.sock.once('close', r));
  }
}

/** Deterministic pseudo-random numbers, so both servers get the same kind of load. */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 0x100000000;
  };
}

async function drive(sockPath: string, model: Buffer): Promise<{ requests: number; latencies: number[]; errors: number }> {
  const latencies: number[] = [];
  let errors = 0;
  const end = Date.now() + SECONDS * 1000;
  const clients = await Promise.all(Array.from({ length: CLIENTS }, () => Client.open(sockPath)));
  await Promise.all(
    clients.map(async (c, ci) => {
      const rand = rng(ci + 1);
      const base = SHARED + ci * REGION;
      // In-flight requests of this client: a mutation never overlaps another one in flight (NBD does
      // not order them, so the model could not know the result), and a read is checked against the
      // model only when no mutation touched its range while it was in flight.
      const mutating: Array<[number, number]> = [];
      const reading = new Set<{ off: number; end: number; tainted: boolean }>();
      const overlaps = (a: number, b: number, c: number, d: number): boolean => a < d && c < b;
      const pickFree = (len: number, align: number): number => {
        for (;;) {
          const off = base + Math.floor(rand() * ((REGION - len) / align)) * align;
          if (!mutating.some(([o, e]) => overlaps(off, off + len, o, e))) return off;
        }
      };
      const mutate = async (off: number, len: number, send: () => Promise<{ error: number; data?: Buffer }>, apply: () => void): Promise<{ error: number; data?: Buffer }> => {
        const entry: [number, number] = [off, off + len];
        mutating.push(entry);
        for (const r of reading) if (overlaps(off, off + len, r.off, r.end)) r.tainted = true;
        apply();
        try {
          return await send();
        } finally {
          mutating.splice(mutating.indexOf(entry), 1);
        }
      };
      const worker = async (): Promise<void> => {
        while (Date.now() < end) {
          let r = rand();
          if (process.env.LOAD_SKIP?.includes('zero') && r >= 0.8 && r < 0.9) r = 0.5;
          if (process.env.LOAD_SKIP?.includes('trim') && r >= 0.9 && r < 0.95) r = 0.5;
          const len = (1 + Math.floor(rand() * 16)) * 4096;
          const t0 = process.hrtime.bigint();
          let res: { error: number; data?: Buffer };
          if (r < 0.45) {
            // Reads: half in the shared region (all clients), half in this client's own.
            const own = rand() < 0.5;
            const off = own ? base + Math.floor(rand() * ((REGION - len) / 4096)) * 4096 : Math.floor(rand() * ((SHARED - len) / 4096)) * 4096;
            const entry = { off, end: off + len, tainted: mutating.some(([o, e]) => overlaps(off, off + len, o, e)) };
            reading.add(entry);
            res = await c.request(0, 0, off, len);
            reading.delete(entry);
            const expect = model.subarray(off, off + len);
            if (res.error === 0 && !entry.tainted && !res.data!.equals(expect)) throw new Error(`client ${ci}: read at ${off} differs from the model`);
          } else if (r < 0.8) {
            const off = pickFree(len, 4096);
            const data = Buffer.alloc(len, Math.floor(rand() * 255) + 1);
            const fua = rand() < 0.1 ? 1 : 0;
            res = await mutate(off, len, () => c.request(1, fua, off, len, data), () => model.set(data, off));
          } else if (r < 0.9) {
            const off = pickFree(len, 4096);
            res = await mutate(off, len, () => c.request(6, 0, off, len), () => model.fill(0, off, off + len));
          } else if (r < 0.95) {
            // Whole clusters, so qcow2 turns them into zero clusters and the model stays exact.
            const n = CLUSTER * (1 + Math.floor(rand() * 3));
            const off = pickFree(n, CLUSTER);
            res = await mutate(off, n, () => c.request(4, 0, off, n), () => model.fill(0, off, off + n));
          } else {
            res = await c.request(3, 0, 0, 0);
          }
          latencies.push(Number(process.hrtime.bigint() - t0) / 1e6);
          if (res.error !== 0) errors++;
        }
      };
      await Promise.all(Array.from({ length: DEPTH }, worker));
    }),
  );
  await Promise.all(clients.map((c) => c.close()));
  return { requests: latencies.length, latencies, errors };
}

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))]!;
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const done = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await done;
}

async function run(name: string, start: (img: string, sock: string) => ChildProcess, dir: string): Promise<string> {
  const img = join(dir, `${name}.qcow2`);
  const sock = join(dir, `${name}.sock`);
  spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', img, String(SIZE)]);
  spawnSync('qemu-io', ['-c', `write -P 0x5a 0 ${SHARED}`, img], { stdio: 'ignore' });
  const model = Buffer.alloc(SIZE);
  model.fill(0x5a, 0, SHARED);
  const child = start(img, sock);
  while (!existsSync(sock)) await sleep(20);
  let r;
  try {
    r = await drive(sock, model);
  } finally {
    await stop(child);
  }
  process.stderr.write(`${name}: ${r.requests} requests\n`);
  const check = spawnSync('qemu-img', ['check', img], { encoding: 'utf8' });
  const raw = join(dir, `${name}.raw`);
  spawnSync('qemu-img', ['convert', '-O', 'raw', img, raw]);
  const same = readFileSync(raw).equals(model);
  const lat = r.latencies.sort((a, b) => a - b);
  return `| ${name} | ${CLIENTS} x ${DEPTH} | ${Math.round(r.requests / SECONDS)} | ${pct(lat, 50).toFixed(2)} | ${pct(lat, 99).toFixed(2)} | ${r.errors} | ${check.status === 0 ? 'clean' : `check ${check.status}`} | ${same ? 'matches' : 'DIFFERS'} |`;
}

const dir = mkdtempSync(join(tmpdir(), 'qimg-nbd-load-'));
try {
  const main = join(import.meta.dirname ?? new URL('.', import.meta.url).pathname, '..', 'dist', 'cli', 'main.js');
  const only = process.argv.includes('--only') ? process.argv[process.argv.indexOf('--only') + 1] : undefined;
  const rows: string[] = [];
  if (only !== 'qemu-nbd') rows.push(await run('qimg', (img, sock) => spawn(process.execPath, [main, 'serve', '-t', '-e', '0', '--discard=unmap', '-k', sock, img], { stdio: 'inherit' }), dir));
  if (only !== 'qimg') rows.push(await run('qemu-nbd', (img, sock) => spawn('qemu-nbd', ['-t', '-e', '0', '--discard=unmap', '-f', 'qcow2', '-k', sock, img], { stdio: 'inherit' }), dir));
  console.log(`${CLIENTS} clients, ${DEPTH} requests in flight each, ${SECONDS} s; 45% reads (4-64 KiB), 35% writes (10% FUA), 10% zeroes, 5% trims, 5% flushes`);
  console.log('| server | clients x depth | requests/s | p50 ms | p99 ms | errors | qemu-img check | image vs model |');
  console.log('|---|---|---|---|---|---|---|---|');
  for (const r of rows) console.log(r);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
